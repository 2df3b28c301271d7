"""``aigc-kit generate``'s output: images from an export into one grid picture and/or one file each.

The places are checked before the first image is made (an image suffix, no
file in the way, writable), and images are written a batch at a time, so that
any number of them fits in memory (a grid holds at most :data:`MAX_GRID`).
This module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigc_kit.core.errors import UserError
from aigc_kit.core.rundir import check_writable

from .pixels import grid, image

MAX_GRID = 10_000
"""The most images one grid picture holds."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Written:
    count: int
    height: int
    width: int
    grid: Path | None
    folder: Path | None


def check_places(count: int, out: Path | None, out_dir: Path | None) -> None:
    """Refuse, before any work, output places that cannot take ``count`` images."""
    if out is None and out_dir is None:
        raise UserError("say where the images go", field="--out", hint="--out GRID.png and/or --out-dir DIR")
    if out is not None:
        if out.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError("the grid picture needs an image file name", field="--out", given=str(out),
                            expected=", ".join(IMAGE_SUFFIXES))
        if out.is_dir():
            raise UserError("--out names a folder; the grid is one picture", field="--out", given=str(out),
                            hint="for one file per image, use --out-dir")
        if count > MAX_GRID:
            raise UserError(f"a grid picture holds at most {MAX_GRID:,} images", field="-n", given=count,
                            hint="write them one file each with --out-dir DIR")
        check_writable(out.parent, "the grid picture's folder", "--out")
    if out_dir is not None:
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError("--out-dir names a file", field="--out-dir", given=str(out_dir))
        check_writable(out_dir, "the images' folder", "--out-dir")


def write_images(generator: Any, count: int, seed: int, *, out: Path | None, out_dir: Path | None,
                 batch_size: int = 16, steps: int | None = None, labels: Any = None, guidance: float | None = None,
                 every_class: bool = False) -> Written:
    """Generate ``count`` images with ``generator`` (an :class:`~.runtime.OnnxGenerator`) into ``out``/``out_dir``.

    ``labels`` and ``guidance`` are as :meth:`~.runtime.OnnxGenerator.generate` takes them. With
    ``every_class``, ``count`` images of each class instead, one grid row per class, from the same noise: a
    column shows one draw as every class.
    """
    runs = [(index, count) for index in range(len(generator.classes))] if every_class else [(labels, count)]
    check_places(count * len(runs), out, out_dir)
    kept: list[np.ndarray] = []
    written = 0
    shape = (0, 0)
    for batch in (batch for label, n in runs for batch in generator.batches(
            n, seed, batch_size=batch_size, steps=steps, labels=label, guidance=guidance)):
        shape = batch.shape[1:3]
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            for pixels in batch:
                image(pixels).save(out_dir / f"{written:05d}.png")
                written += 1
        else:
            written += len(batch)
        if out is not None:
            kept.append(batch)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        grid(np.concatenate(kept), count if every_class else None).save(out)
    return Written(written, shape[0], shape[1], out, out_dir)
