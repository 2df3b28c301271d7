"""MNIST (and Fashion-MNIST) from IDX files, and CIFAR-10 from its binary version: local files, with their labels.

Nothing is downloaded, and nothing is unpickled (CIFAR-10's Python version is a
pickle: only the binary version is read). Every file is checked against its
format before it is used (magic numbers, sizes, label ranges), and a file that
does not fit is a user error naming it.

IDX (LeCun et al.): a big-endian header, magic 2051 for images (count, rows,
columns, then one byte per pixel) or 2049 for labels (count, then one byte per
label). CIFAR-10 binary: records of one label byte and 3,072 pixel bytes (1,024
red, then green, then blue, each 32x32 row-major), 10,000 records per file.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from aigc_kit.core.errors import UserError
from aigc_kit.core.plugin_api import SAMPLE_KEY, Condition, DatasetBundle, DatasetInfo

DIGITS = tuple(str(digit) for digit in range(10))
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
CIFAR_RECORD = 1 + 3 * 32 * 32
MAX_BYTES = 1 << 31
"""The largest archive file read (2 GiB; MNIST's images are 47 MB, a CIFAR-10 batch 30 MB)."""


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 images ``(n, height, width, channels)`` in memory, resized on access, with optional labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, resolution: int) -> None:
        self.images, self.labels, self.resolution = images, labels, resolution

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, Any]:
        pixels = self.images[index]
        if pixels.shape[0] != self.resolution:
            mode = "L" if pixels.shape[2] == 1 else "RGB"
            image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
            image = image.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC)
            pixels = np.asarray(image)
            pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        sample = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0)
        if self.labels is None:
            return sample
        return {SAMPLE_KEY: sample, "label": int(self.labels[index])}


def _read(path: Path) -> bytes:
    """The file's bytes, gunzipped when it ends in .gz; a damaged or oversized file is a user error."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"the file is over {MAX_BYTES:,} bytes", file=str(path))
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read(MAX_BYTES + 1)
        else:
            data = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read the file: {exc}", file=str(path)) from None
    if len(data) > MAX_BYTES:
        raise UserError(f"the file unpacks to over {MAX_BYTES:,} bytes", file=str(path))
    return data


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"no {name} (or {name}.gz) in the folder", field="data.root", given=str(root),
                    hint="unpack the dataset's files into data.root (nothing is downloaded)")


def read_idx_images(path: Path) -> np.ndarray:
    """IDX images as uint8 ``(n, rows, columns, 1)``."""
    data = _read(path)
    if len(data) < 16:
        raise UserError(f"too short for an IDX image file ({len(data)} bytes)", file=str(path))
    magic, count, rows, columns = struct.unpack(">IIII", data[:16])
    if magic != IMAGES_MAGIC:
        raise UserError(f"not an IDX image file (magic number {magic}, expected {IMAGES_MAGIC})", file=str(path))
    if not (1 <= rows <= 4096 and 1 <= columns <= 4096):
        raise UserError(f"an IDX image file with images of {rows}x{columns}", file=str(path))
    expected = 16 + count * rows * columns
    if len(data) != expected:
        raise UserError(f"the header promises {count:,} images of {rows}x{columns} ({expected:,} bytes), the file "
                        f"holds {len(data):,} bytes (truncated?)", file=str(path))
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, columns, 1)


def read_idx_labels(path: Path, classes: int) -> np.ndarray:
    """IDX labels as uint8 ``(n,)``, each checked to be below ``classes``."""
    data = _read(path)
    if len(data) < 8:
        raise UserError(f"too short for an IDX label file ({len(data)} bytes)", file=str(path))
    magic, count = struct.unpack(">II", data[:8])
    if magic != LABELS_MAGIC:
        raise UserError(f"not an IDX label file (magic number {magic}, expected {LABELS_MAGIC})", file=str(path))
    if len(data) != 8 + count:
        raise UserError(f"the header promises {count:,} labels, the file holds {len(data) - 8:,} (truncated?)",
                        file=str(path))
    labels = np.frombuffer(data, dtype=np.uint8, offset=8)
    if count and int(labels.max()) >= classes:
        raise UserError(f"a label of {int(labels.max())}, where the classes are 0 to {classes - 1}", file=str(path))
    return labels


def mnist_dataset(options: Any) -> DatasetBundle:
    root = Path(options.root)
    if not root.is_dir():
        raise UserError("no such folder", field="data.root", given=str(root))
    prefix = "train" if options.split == "train" else "t10k"
    names = DIGITS if options.names == "digits" else FASHION
    images_path = _find(root, f"{prefix}-images-idx3-ubyte")
    images = read_idx_images(images_path)
    labels = None
    if options.labels:
        labels_path = _find(root, f"{prefix}-labels-idx1-ubyte")
        labels = read_idx_labels(labels_path, len(names))
        if len(labels) != len(images):
            raise UserError(f"{len(labels):,} labels for {len(images):,} images in {images_path.name}",
                            file=str(labels_path))
    if not len(images):
        raise UserError("the file holds no images", file=str(images_path))
    conditions = {"label": Condition(classes=names)} if options.labels else {}
    return DatasetBundle(ArrayDataset(images, labels, options.resolution),
                         DatasetInfo(shape=(1, options.resolution, options.resolution), conditions=conditions))


def read_cifar10(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 binary file as uint8 images ``(n, 32, 32, 3)`` and labels ``(n,)``."""
    data = _read(path)
    if not data or len(data) % CIFAR_RECORD:
        raise UserError(f"{len(data):,} bytes is not a whole number of CIFAR-10 records of {CIFAR_RECORD:,} bytes "
                        "(is this the binary version?)", file=str(path))
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0]
    if int(labels.max()) >= len(CIFAR10):
        raise UserError(f"a label of {int(labels.max())}, where the classes are 0 to 9", file=str(path))
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def cifar10_dataset(options: Any) -> DatasetBundle:
    root = Path(options.root)
    if not root.is_dir():
        raise UserError("no such folder", field="data.root", given=str(root))
    if options.split == "train":
        paths = [_find(root, f"data_batch_{index}.bin") for index in range(1, 6)
                 if (root / f"data_batch_{index}.bin").exists() or (root / f"data_batch_{index}.bin.gz").exists()]
        if not paths:
            _find(root, "data_batch_1.bin")  # the error names what is missing
    else:
        paths = [_find(root, "test_batch.bin")]
    parts = [read_cifar10(path) for path in paths]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts]) if options.labels else None
    names = _class_names(root / "batches.meta.txt") or CIFAR10
    conditions = {"label": Condition(classes=names)} if options.labels else {}
    return DatasetBundle(ArrayDataset(images, labels, options.resolution),
                         DatasetInfo(shape=(3, options.resolution, options.resolution), conditions=conditions))


def _class_names(path: Path) -> tuple[str, ...] | None:
    """The ten class names of batches.meta.txt (one per line), or None when the file is absent."""
    if not path.is_file():
        return None
    try:
        names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the class names: {exc}", file=str(path)) from None
    if len(names) != len(CIFAR10) or any(len(name) > 64 for name in names):
        raise UserError(f"expected {len(CIFAR10)} class names, one per line, found {len(names)}", file=str(path))
    return names
