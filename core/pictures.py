"""Sample pictures: a grid of images, or a scatter plot of 2-D points."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .files import replacing


def save_grid(images: torch.Tensor, path: Path, value_range: tuple[float, float] = (-1.0, 1.0), padding: int = 2,
              columns: int | None = None) -> None:
    """Write a batch of images ``(n, channels, height, width)`` as one PNG grid: ``columns`` wide (one row per
    class, for a conditional model), or as square as possible."""
    images = images.detach().float().cpu()
    low, high = value_range
    images = ((images - low) / (high - low)).clamp(0, 1)
    count, channels, height, width = images.shape
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    canvas = torch.ones(3, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for index in range(count):
        row, column = divmod(index, columns)
        top = padding + row * (height + padding)
        left = padding + column * (width + padding)
        canvas[:, top : top + height, left : left + width] = images[index, :3]
    pixels = (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    _save_png(Image.fromarray(pixels), path)


def save_scatter(points: torch.Tensor, path: Path, value_range: tuple[float, float], size: int = 512,
                 landmarks: tuple[tuple[float, ...], ...] = ()) -> None:
    """Write 2-D points ``(n, 2)`` as a PNG scatter plot over ``value_range`` on both axes, over ``landmarks`` (red rings)."""
    points = points.detach().float().cpu().numpy()
    low, high = value_range
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    middle = (0 - low) / (high - low) * (size - 1)
    draw.line([(middle, 0), (middle, size)], fill=(220, 220, 220))
    draw.line([(0, middle), (size, middle)], fill=(220, 220, 220))
    for x, y in landmarks:  # drawn first, so that the samples lie over them
        x, y = (x - low) / (high - low) * (size - 1), size - 1 - (y - low) / (high - low) * (size - 1)
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], outline=(214, 39, 40), width=2)
    scaled = (points - low) / (high - low) * (size - 1)
    for x, y in scaled:
        draw.ellipse([x - 1.5, size - 1 - y - 1.5, x + 1.5, size - 1 - y + 1.5], fill=(31, 119, 180))
    _save_png(canvas, path)


def _save_png(image: Image.Image, path: Path) -> None:
    with replacing(path) as temporary:
        image.save(temporary, format="PNG")
