"""Shapes drawn procedurally, for the `shapes` dataset and the shapes classifier the metrics use.

Shared by plugin packages (``datasets`` and ``metrics``), which import it rather than each other.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

KINDS = ("circle", "square", "triangle")
SUPERSAMPLE = 4  # drawn larger, then downsampled, for smooth edges


def draw_shape(index: int, seed: int, resolution: int, kinds: tuple[str, ...] = KINDS,
               backgrounds: str = "varied") -> tuple[Image.Image, str]:
    """Image ``index`` for ``seed``: one shape on a plain background, and the shape's kind.

    ``backgrounds`` is ``"varied"`` (a random colour per image) or ``"black"``.
    """
    image, kind, _ = draw_labelled_shape(index, seed, resolution, kinds, backgrounds)
    return image, kind


def draw_labelled_shape(index: int, seed: int, resolution: int, kinds: tuple[str, ...] = KINDS,
                        backgrounds: str = "varied") -> tuple[Image.Image, str, tuple[int, int, int]]:
    """As :func:`draw_shape`, with the shape's colour (RGB, 0-255) as well."""
    rng = np.random.default_rng([seed, index])
    kind = kinds[int(rng.integers(len(kinds)))]
    background = rng.integers(0, 256, 3)
    if backgrounds == "black":
        background = np.zeros(3, dtype=background.dtype)
    color = rng.integers(0, 256, 3)
    while np.abs(color.astype(int) - background.astype(int)).sum() < 200:  # keep the shape visible
        color = rng.integers(0, 256, 3)
    side = resolution * SUPERSAMPLE
    image = Image.new("RGB", (side, side), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.18, 0.38) * side
    cx, cy = rng.uniform(radius, side - radius, 2)
    angle = rng.uniform(0, 2 * math.pi)
    fill = tuple(int(c) for c in color)
    if kind == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        corners = 4 if kind == "square" else 3
        scale = radius * (0.95 if kind == "square" else 1.0)
        points = [(cx + scale * math.cos(angle + 2 * math.pi * k / corners),
                   cy + scale * math.sin(angle + 2 * math.pi * k / corners)) for k in range(corners)]
        draw.polygon(points, fill=fill)
    return image.resize((resolution, resolution), Image.Resampling.BOX), kind, fill


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """A PIL image, or its 8-bit pixels, as a float tensor (channels, height, width) in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1) / 127.5 - 1.0)
