"""GAN losses: each has a ``discriminator`` phase (the critic's, repeated) and a ``generator`` phase.

They work with any model whose networks are named ``generator`` and
``discriminator`` (the critic, for the Wasserstein losses) and whose
discriminator returns one logit or score per sample (or per packed group).
Penalties (gradient penalty, R1) are computed in fp32 with autocast off, so
they stay correct under bf16 and fp16 training.
"""

from __future__ import annotations

from pydantic import Field

from aigc_kit.core.plugin_api import ComponentSpec, Options, hookimpl


class _GanOptions(Options):
    discriminator_steps: int = Field(1, ge=1, description="Discriminator (critic) updates per generator update.")
    discriminator_lr: float = Field(2e-4, gt=0, description="Learning rate of the discriminator phase.")
    generator_lr: float = Field(2e-4, gt=0, description="Learning rate of the generator phase.")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 of both phases.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2 of both phases.")


class GanBceOptions(_GanOptions):
    """Options of ``gan-bce`` (defaults: the DCGAN paper's Adam, lr 2e-4, betas (0.5, 0.999))."""

    r1_gamma: float = Field(0.0, ge=0, description="R1 penalty gamma/2 E||grad D(x_real)||^2 (Mescheder et al. 2018); 0 is off.")


class HingeOptions(_GanOptions):
    """Options of ``hinge`` (defaults: Adam, lr 2e-4, betas (0.5, 0.999), as for DCGAN-shaped networks)."""

    r1_gamma: float = Field(0.0, ge=0, description="R1 penalty gamma/2 E||grad D(x_real)||^2 (Mescheder et al. 2018); 0 is off.")


class LsganOptions(_GanOptions):
    """Options of ``lsgan`` (defaults: Mao et al. 2017's Adam, lr 2e-4, beta1 0.5)."""


class WassersteinOptions(Options):
    """Options of ``wasserstein`` (defaults: the WGAN paper's, Arjovsky et al. 2017)."""

    discriminator_steps: int = Field(5, ge=1, description="Critic updates per generator update (n_critic).")
    clip: float = Field(0.01, gt=0, description="Every critic weight is clamped to [-clip, clip] after each critic step.")
    discriminator_lr: float = Field(5e-5, gt=0, description="RMSprop learning rate of the critic.")
    generator_lr: float = Field(5e-5, gt=0, description="RMSprop learning rate of the generator.")


class WganGpOptions(Options):
    """Options of ``wgan-gp`` (defaults: the WGAN-GP paper's, Gulrajani et al. 2017)."""

    discriminator_steps: int = Field(5, ge=1, description="Critic updates per generator update (n_critic).")
    gp_lambda: float = Field(10.0, ge=0, description="Weight of the penalty (||grad D(x_hat)||_2 - 1)^2.")
    discriminator_lr: float = Field(1e-4, gt=0, description="Adam learning rate of the critic.")
    generator_lr: float = Field(1e-4, gt=0, description="Adam learning rate of the generator.")
    beta1: float = Field(0.0, ge=0, lt=1, description="Adam beta1 of both phases.")
    beta2: float = Field(0.9, ge=0, lt=1, description="Adam beta2 of both phases.")


def _builder(class_name: str):
    def build(options):
        from . import losses

        return getattr(losses, class_name)(options)

    return build


@hookimpl
def aigc_register_losses():
    return [
        ComponentSpec(
            "gan-bce",
            _builder("NonSaturatingLoss"),
            "Non-saturating GAN loss on logits (Goodfellow et al. 2014); Adam lr 2e-4, betas (0.5, 0.999) "
            "(Radford et al. 2015); optional R1 penalty.",
            GanBceOptions,
        ),
        ComponentSpec(
            "wasserstein",
            _builder("WassersteinLoss"),
            "WGAN with weight clipping (Arjovsky et al. 2017): n_critic 5, clip 0.01, RMSprop lr 5e-5.",
            WassersteinOptions,
        ),
        ComponentSpec(
            "wgan-gp",
            _builder("WassersteinGpLoss"),
            "WGAN with gradient penalty on random interpolates (Gulrajani et al. 2017): lambda 10, n_critic 5, "
            "Adam lr 1e-4, betas (0, 0.9). Use a critic without BatchNorm (model wgan or mlp).",
            WganGpOptions,
        ),
        ComponentSpec(
            "hinge",
            _builder("HingeLoss"),
            "Hinge loss (Lim & Ye 2017; Miyato et al. 2018): critic relu(1 - D(x)) + relu(1 + D(G(z))), "
            "generator -D(G(z)); Adam lr 2e-4, betas (0.5, 0.999); optional R1 penalty.",
            HingeOptions,
        ),
        ComponentSpec(
            "lsgan",
            _builder("LeastSquaresLoss"),
            "Least-squares GAN (Mao et al. 2017), targets 0 (fake) and 1 (real); Adam lr 2e-4, betas (0.5, 0.999).",
            LsganOptions,
        ),
    ]
