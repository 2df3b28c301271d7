"""Helpers for model factories: a square-image model's size, from its options or else from the data."""

from __future__ import annotations

from typing import Any

from .errors import UserError


def square_image_size(options: Any, data_shape: tuple[int, ...] | None, model: str,
                      resolutions: tuple[int, ...] = (16, 32, 64, 128),
                      channel_counts: tuple[int, ...] = (1, 3)) -> tuple[int, int]:
    """``(channels, resolution)`` of a square-image model, from its options or else from the data's shape.

    ``options`` has ``channels`` and ``resolution`` fields (``None`` meaning "follow
    the data"). A model option that contradicts the data, non-square data, or
    a size outside ``resolutions``/``channel_counts`` is a user error naming the field.
    """
    channels, resolution = options.channels, options.resolution
    if data_shape is not None:
        if len(data_shape) != 3 or data_shape[1] != data_shape[2]:
            raise UserError(f"model {model!r} needs square images, but the data's samples have shape {tuple(data_shape)}",
                            field="data.name")
        for field_name, mine, theirs in (("channels", channels, data_shape[0]),
                                         ("resolution", resolution, data_shape[1])):
            if mine is not None and mine != theirs:
                raise UserError(f"the model's {field_name} differ from the data's", field=f"model.{field_name}",
                                expected=theirs, given=mine, hint=f"drop model.{field_name} to follow the data")
        channels, resolution = channels or data_shape[0], resolution or data_shape[1]
    if channels is None or resolution is None:
        raise UserError(f"model {model!r} needs a resolution and channels (or data to take them from)",
                        field="model.resolution")
    if channels not in channel_counts or resolution not in resolutions:
        raise UserError(
            f"model {model!r} supports {_either(channel_counts)} channels at {_either(resolutions)} pixels",
            field="model.resolution", given=f"{channels} channels at {resolution} pixels",
            hint="change the data's resolution or channels",
        )
    return channels, resolution


def _either(values: tuple[int, ...]) -> str:
    """``(16, 32, 64)`` -> ``"16, 32 or 64"``."""
    words = [str(value) for value in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
