"""Images from a folder: resized on the shorter side, center-cropped, scaled to [-1, 1]."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from aigc_kit.core.errors import UserError
from aigc_kit.core.plugin_api import SAMPLE_KEY, Condition, DatasetBundle, DatasetInfo
from aigc_kit.plugins.drawing import to_tensor

UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
"""What Pillow raises for a file it cannot (or, for one of more than Pillow's pixel limit, will not) decode."""


def eight_bit(image: Image.Image) -> Image.Image:
    """``image`` with 8 bits per channel, scaled by its own bit depth.

    Pillow's ``convert("L")`` clips 16- and 32-bit greyscale to 0-255 instead
    of scaling, which turns a 16-bit PNG almost entirely white.
    """
    if image.mode.startswith("I;16"):
        return Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().astype(np.uint8), "L")
    if image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) <= 65535 and values.min(initial=0) >= 0 else max(values.max(), 1.0)
        return Image.fromarray((values.clip(0, top) / top * 255.0).round().astype(np.uint8), "L")
    return image


class ImageFolderDataset(torch.utils.data.Dataset):
    """The readable images under a folder; a file that fails to decode later is replaced by the next one.

    With ``labels`` (one class index per file), each item is ``{"sample": image, "label": index}``.
    """

    def __init__(self, files: list[Path], resolution: int, channels: int, labels: list[int] | None = None) -> None:
        self.files, self.resolution, self.channels, self.labels = files, resolution, channels, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, Any]:
        for offset in range(len(self.files)):
            position = (index + offset) % len(self.files)
            path = self.files[position]
            try:
                with Image.open(path) as image:
                    image = eight_bit(image).convert("L" if self.channels == 1 else "RGB")
                    fitted = ImageOps.fit(image, (self.resolution, self.resolution), Image.Resampling.BICUBIC)
                if self.labels is not None:
                    return {SAMPLE_KEY: to_tensor(fitted), "label": self.labels[position]}
                return to_tensor(fitted)
            except UNREADABLE:
                warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
        raise RuntimeError("no image in the folder could be decoded")


def find_images(root: Path, extensions: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """(readable, unreadable) image files under ``root``, sorted; only headers are read."""
    wanted = {ext.lower() if ext.startswith(".") else "." + ext.lower() for ext in extensions}
    readable, unreadable = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a large image is still an image
                with Image.open(path) as image:
                    image.verify()
            readable.append(path)
        except UNREADABLE:  # a damaged file, or one over Pillow's decompression-bomb limit: counted, skipped
            unreadable.append(path)
    return readable, unreadable


def image_folder_dataset(options) -> DatasetBundle:
    root = Path(options.root)
    if options.channels not in (1, 3):
        raise UserError("expected 1 or 3 channels", field="data.channels", given=options.channels)
    if not root.is_dir():
        raise UserError("no such folder", field="data.root", given=str(root),
                        hint="the path is relative to the working directory")
    files, unreadable = find_images(root, options.extensions)
    if unreadable:
        warnings.warn(f"{len(unreadable)} unreadable image file(s) under {root} skipped, e.g. {unreadable[0]}",
                      stacklevel=2)
    labels, conditions = None, {}
    if options.classes == "subfolders":
        files, labels, classes = by_subfolder(root, files)
        conditions = {"label": Condition(classes=classes)}
    if not files:
        raise UserError(f"no readable images ({', '.join(options.extensions)}) under the folder"
                        + (" in class subfolders" if options.classes == "subfolders" else ""),
                        field="data.root", given=str(root),
                        hint="point data.root at a folder of PNG or JPEG files (searched recursively)")
    dataset = ImageFolderDataset(files, options.resolution, options.channels, labels)
    return DatasetBundle(dataset, DatasetInfo(shape=(options.channels, options.resolution, options.resolution),
                                              conditions=conditions))


def by_subfolder(root: Path, files: list[Path]) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Each file's class: its top-level subfolder under ``root``, classes sorted by name as torchvision sorts them.

    Files directly in ``root`` belong to no class: they are left out, with a warning.
    """
    outside = [path for path in files if path.parent == root]
    if outside:
        warnings.warn(f"{len(outside)} image(s) directly in {root} belong to no class subfolder and are left out, "
                      f"e.g. {outside[0].name}", stacklevel=3)
    inside = [path for path in files if path.parent != root]
    classes = tuple(sorted({path.relative_to(root).parts[0] for path in inside}))
    index = {name: position for position, name in enumerate(classes)}
    return inside, [index[path.relative_to(root).parts[0]] for path in inside], classes
