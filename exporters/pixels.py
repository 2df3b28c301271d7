"""Images as the torch-free runtime handles them: NCHW floats <-> NHWC uint8 pixels, and pictures of them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def to_pixels(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """NCHW floats in ``value_range`` -> NHWC uint8, as the exported graphs' uint8 output computes it."""
    low, high = value_range
    scaled = np.round((images.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low)))
    return np.clip(scaled, 0, 255).transpose(0, 2, 3, 1).astype(np.uint8)


def from_pixels(pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """NHWC uint8 pixels back to NCHW float32 in ``value_range``: the inverse of :func:`to_pixels` up to rounding."""
    low, high = value_range
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32) * np.float32((high - low) / 255.0) + \
        np.float32(low)


def grid(images: np.ndarray, columns: int | None = None, padding: int = 2) -> Any:
    """A ``PIL.Image`` of uint8 NHWC ``images`` in a grid (square-ish unless ``columns`` is given)."""
    from PIL import Image

    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels),
                      dtype=np.uint8)
    for index, image in enumerate(images):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        canvas[top:top + height, left:left + width] = image
    return Image.fromarray(canvas[..., 0] if channels == 1 else canvas)


def image(pixels: np.ndarray) -> Any:
    """One uint8 HWC image as a ``PIL.Image``."""
    from PIL import Image

    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
