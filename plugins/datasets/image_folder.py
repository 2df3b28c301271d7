"""Images from a folder: resized on the shorter side, center-cropped, scaled to [-1, 1]."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from aigc_kit.core.errors import UserError
from aigc_kit.core.plugin_api import DatasetBundle, DatasetInfo

from .shapes import to_tensor


class ImageFolderDataset(torch.utils.data.Dataset):
    """The readable images under a folder; a file that fails to decode later is replaced by the next one."""

    def __init__(self, files: list[Path], resolution: int, channels: int) -> None:
        self.files, self.resolution, self.channels = files, resolution, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if self.channels == 1 else "RGB")
                    fitted = ImageOps.fit(image, (self.resolution, self.resolution), Image.Resampling.BICUBIC)
                return to_tensor(fitted)
            except (OSError, UnidentifiedImageError, ValueError):
                warnings.warn(f"skipping unreadable image {path}", stacklevel=2)
        raise RuntimeError("no image in the folder could be decoded")


def find_images(root: Path, extensions: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """(readable, unreadable) image files under ``root``, sorted; only headers are read."""
    wanted = {ext.lower() if ext.startswith(".") else "." + ext.lower() for ext in extensions}
    readable, unreadable = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in wanted):
        try:
            with Image.open(path) as image:
                image.verify()
            readable.append(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
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
    if not files:
        raise UserError(f"no readable images ({', '.join(options.extensions)}) under the folder",
                        field="data.root", given=str(root),
                        hint="point data.root at a folder of PNG or JPEG files (searched recursively)")
    dataset = ImageFolderDataset(files, options.resolution, options.channels)
    return DatasetBundle(dataset, DatasetInfo(shape=(options.channels, options.resolution, options.resolution)))
