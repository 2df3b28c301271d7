"""2-D Gaussian mixtures and the mode-coverage metric: the testbed for mode collapse.

``ring`` is 8 modes on a circle of radius 2 with standard deviation 0.02
(Metz et al. 2017, VEEGAN); ``grid`` is 25 modes at (-4..4 step 2)^2 with
standard deviation 0.05 (VEEGAN, PacGAN). ``mode-coverage`` counts a mode as
captured when at least ``min_count`` samples lie within ``threshold`` standard
deviations of its centre, and a sample as high quality when it lies that
close to some centre (PacGAN's protocol: 2,500 samples, 20 per mode).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc_kit.core.plugin_api import ComponentSpec, Context, Options, hookimpl


class MixtureOptions(Options):
    """Options of the ``gaussian-mixture`` dataset."""

    layout: Literal["ring", "grid"] = Field("grid", description="ring: 8 modes on a circle; grid: 25 modes on a 5x5 grid.")
    std: float | None = Field(None, gt=0, description="Standard deviation of each mode (default: 0.02 ring, 0.05 grid).")
    radius: float = Field(2.0, gt=0, description="Radius of the ring.")
    spacing: float = Field(2.0, gt=0, description="Distance between neighbouring grid centres.")
    scale: float = Field(1.0, gt=0, description="Multiplies every point, centres and std alike (0.3536 = 1/2.828 as in WGAN-GP's toy script).")
    size: int = Field(100_000, ge=1, le=10**8, description="Points in an epoch, at most 10**8.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="The points are the same for the same seed.")
    labels: bool = Field(False, description="Give each point its mode as a class label (mode-0, mode-1, ...).")


class ModeCoverageOptions(Options):
    """Options of the ``mode-coverage`` metric."""

    threshold: float = Field(3.0, gt=0, description="A sample within this many standard deviations of a centre is high quality.")
    min_count: int = Field(20, ge=1, description="High-quality samples a mode needs to count as captured.")


def build_mixture(options: MixtureOptions):
    from .mixture import mixture_dataset

    return mixture_dataset(options)


def build_mode_coverage(options: ModeCoverageOptions, context: Context):
    from .mixture import ModeCoverage

    return ModeCoverage(options, context.data)


@hookimpl
def aigc_register_datasets():
    return [
        ComponentSpec(
            "gaussian-mixture",
            build_mixture,
            "2-D Gaussian mixtures: ring (8 modes, std 0.02) or grid (25 modes, std 0.05), deterministic for a seed.",
            MixtureOptions,
        )
    ]


@hookimpl
def aigc_register_metrics():
    return [
        ComponentSpec(
            "mode-coverage",
            build_mode_coverage,
            "Modes captured and percentage of high-quality samples (within 3 std of a centre), for gaussian-mixture data.",
            ModeCoverageOptions,
        )
    ]
