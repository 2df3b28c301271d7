"""Image datasets: ``shapes`` (procedural, offline), ``image-folder`` (your own pictures), ``mnist`` and ``cifar10`` (local files)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc_kit.core.plugin_api import ComponentSpec, Options, hookimpl


class ShapesOptions(Options):
    """Options of the ``shapes`` dataset."""

    resolution: int = Field(32, ge=8, le=1024, description="Image side in pixels.")
    channels: int = Field(3, description="1 (grey) or 3 (RGB).", ge=1, le=3)
    size: int = Field(20000, ge=1, le=10**8, description="Number of distinct images (an epoch), at most 10**8.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Image i is the same for the same seed, on every machine.")
    kinds: tuple[str, ...] = Field(("circle", "square", "triangle"), description="Which shapes to draw.")
    labels: bool = Field(False, description="Give each image its shape's kind as a class label (the classes are "
                                            "kinds, in their order), for conditional models.")
    backgrounds: Literal["varied", "black"] = Field(
        "varied", description="A random colour per image, or black (an easier task that GANs learn in fewer steps)."
    )


class ImageFolderOptions(Options):
    """Options of the ``image-folder`` dataset."""

    root: str = Field(description="Folder searched recursively for images (relative to the working directory).")
    resolution: int = Field(64, ge=8, le=1024, description="Images are resized (shorter side) and center-cropped to this.")
    channels: int = Field(3, ge=1, le=3, description="1 (grey) or 3 (RGB).")
    extensions: tuple[str, ...] = Field((".png", ".jpg", ".jpeg"), description="File name endings to include.")
    classes: Literal["none", "subfolders"] = Field(
        "none", description="subfolders: each image's class is its top-level subfolder under root (sorted by name, "
        "as torchvision's ImageFolder does), given as a label for conditional models.")


class IdxOptions(Options):
    """Options of the ``mnist`` dataset (MNIST or Fashion-MNIST, as IDX files)."""

    root: str = Field(description="The folder holding train-images-idx3-ubyte and train-labels-idx1-ubyte (or the "
                                  "t10k- files), each optionally .gz.")
    split: Literal["train", "test"] = Field("train", description="train (train-*) or test (t10k-*).")
    names: Literal["digits", "fashion"] = Field("digits", description="Class names: digits 0-9, or Fashion-MNIST's.")
    resolution: int = Field(32, ge=8, le=1024, description="Images are resized from 28x28 to this side.")
    labels: bool = Field(True, description="Give each image its class as a label.")


class Cifar10Options(Options):
    """Options of the ``cifar10`` dataset (the binary version: data_batch_N.bin, never the pickled one)."""

    root: str = Field(description="The folder holding data_batch_1.bin ... data_batch_5.bin and test_batch.bin "
                                  "(and optionally batches.meta.txt, the class names).")
    split: Literal["train", "test"] = Field("train", description="train (data_batch_1-5.bin) or test (test_batch.bin).")
    resolution: int = Field(32, ge=8, le=1024, description="Images are resized from 32x32 to this side.")
    labels: bool = Field(True, description="Give each image its class as a label.")


def build_shapes(options: ShapesOptions):
    from .shapes import shapes_dataset

    return shapes_dataset(options)


def build_image_folder(options: ImageFolderOptions):
    from .image_folder import image_folder_dataset

    return image_folder_dataset(options)


def build_mnist(options: IdxOptions):
    from .archives import mnist_dataset

    return mnist_dataset(options)


def build_cifar10(options: Cifar10Options):
    from .archives import cifar10_dataset

    return cifar10_dataset(options)


@hookimpl
def aigc_register_datasets():
    return [
        ComponentSpec(
            "shapes",
            build_shapes,
            "Circles, squares and triangles of varied colour, size, position and background; generated, no download.",
            ShapesOptions,
        ),
        ComponentSpec(
            "image-folder",
            build_image_folder,
            "PNG/JPEG files found recursively, resized and center-cropped; unreadable files are skipped with a warning.",
            ImageFolderOptions,
        ),
        ComponentSpec("mnist", build_mnist, "MNIST or Fashion-MNIST from local IDX files (.gz or not), with labels.",
                      IdxOptions),
        ComponentSpec("cifar10", build_cifar10, "CIFAR-10 from the local binary version's files, with labels.",
                      Cifar10Options),
    ]
