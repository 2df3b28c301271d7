"""GAN losses: each has a ``discriminator`` phase (repeated) and a ``generator`` phase.

They work with any model whose networks are named ``generator`` and
``discriminator`` and whose discriminator returns one logit per sample.
"""

from __future__ import annotations

from pydantic import Field

from aigc_kit.core.plugin_api import ComponentSpec, Options, hookimpl


class GanBceOptions(Options):
    """Options of the ``gan-bce`` loss."""

    discriminator_steps: int = Field(1, ge=1, description="Discriminator updates per generator update.")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of both phases (DCGAN paper).")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 of both phases (DCGAN paper).")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2 of both phases.")


def build_gan_bce(options: GanBceOptions):
    from .losses import NonSaturatingLoss

    return NonSaturatingLoss(options)


@hookimpl
def aigc_register_losses():
    return [
        ComponentSpec(
            "gan-bce",
            build_gan_bce,
            "Non-saturating GAN loss on logits (Goodfellow et al. 2014; DCGAN defaults: Adam lr 2e-4, betas (0.5, 0.999)).",
            GanBceOptions,
        )
    ]
