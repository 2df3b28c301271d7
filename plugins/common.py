"""Pieces the built-in model plugins share: class conditioning and PacGAN packing.

A plugin package imports only ``aigc_kit.core`` and its own modules, or this one (and
:mod:`aigc_kit.plugins.drawing`, the shapes both the dataset and the metrics draw).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from aigc_kit.core.errors import UserError
from aigc_kit.core.plugin_api import Condition

if TYPE_CHECKING:  # option models import this module, and the CLI's help must not wait for torch
    import torch

ConditionalOption = bool | Literal["auto"]
CONDITIONAL_HELP = ("Condition the networks on the data's class labels: auto (when the data has labels), true or "
                    "false.")


def model_conditions(conditional: ConditionalOption, data_conditions: dict[str, Condition] | None,
                     model: str) -> dict[str, Condition]:
    """The conditions a model takes: the data's class label, when ``conditional`` says so and the data has one."""
    label = (data_conditions or {}).get("label")
    if conditional is True and (label is None or label.count < 2):
        raise UserError(f"model {model!r} is asked to be conditional, but the data has no class labels",
                        field="model.conditional", given=True,
                        hint="use data with labels (e.g. shapes with labels: true), or conditional: auto")
    if conditional is False or label is None or label.count < 2:
        return {}
    return {"label": label}


def conditioned_on(label: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The labels of a conditional network's batch; a conditional network given none is a bug to report."""
    if label is None:
        raise ValueError("this network is class-conditional: pass label=, one class index per sample")
    if label.shape[0] != like.shape[0]:
        raise ValueError(f"{label.shape[0]} labels for a batch of {like.shape[0]}")
    return label.long()


def pack_samples(samples: torch.Tensor, pack: int) -> torch.Tensor:
    """Concatenate each run of ``pack`` consecutive samples along the channels (PacGAN)."""
    if pack == 1:
        return samples
    if samples.shape[0] % pack:
        raise ValueError(f"a batch of {samples.shape[0]} cannot be packed in groups of {pack}")
    return samples.reshape(samples.shape[0] // pack, pack * samples.shape[1], *samples.shape[2:])


def refuse_packing_with_labels(pack: int, conditions: dict[str, Any]) -> None:
    if pack > 1 and conditions:
        raise UserError("PacGAN packing judges several samples at once, which a class-conditional discriminator "
                        "cannot (each sample has its own label)", field="model.pack", given=pack,
                        hint="use pack: 1, or conditional: false")
