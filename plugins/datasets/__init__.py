"""Image datasets: ``shapes`` (procedural, offline) and ``image-folder`` (your own pictures)."""

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
    backgrounds: Literal["varied", "black"] = Field(
        "varied", description="A random colour per image, or black (an easier task that GANs learn in fewer steps)."
    )


class ImageFolderOptions(Options):
    """Options of the ``image-folder`` dataset."""

    root: str = Field(description="Folder searched recursively for images (relative to the working directory).")
    resolution: int = Field(64, ge=8, le=1024, description="Images are resized (shorter side) and center-cropped to this.")
    channels: int = Field(3, ge=1, le=3, description="1 (grey) or 3 (RGB).")
    extensions: tuple[str, ...] = Field((".png", ".jpg", ".jpeg"), description="File name endings to include.")


def build_shapes(options: ShapesOptions):
    from .shapes import shapes_dataset

    return shapes_dataset(options)


def build_image_folder(options: ImageFolderOptions):
    from .image_folder import image_folder_dataset

    return image_folder_dataset(options)


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
    ]
