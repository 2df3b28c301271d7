"""The ``normal`` sampler: z ~ N(0, I), optionally truncated, and sample = network(z)."""

from __future__ import annotations

from pydantic import Field

from aigc_kit.core.plugin_api import ComponentSpec, Options, hookimpl


class NormalOptions(Options):
    """Options of the ``normal`` latent sampler."""

    truncation: float | None = Field(
        None, gt=0, description="Redraw latent entries whose magnitude exceeds this (the truncation trick); none by default."
    )


def build_normal(options: NormalOptions):
    from .normal import NormalSampler

    return NormalSampler(options.truncation)


@hookimpl
def aigc_register_samplers():
    return [
        ComponentSpec(
            "normal",
            build_normal,
            "Standard normal latents (optionally truncated by redrawing large entries) fed to a generator.",
            NormalOptions,
        )
    ]
