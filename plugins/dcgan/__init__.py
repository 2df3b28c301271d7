"""The ``dcgan`` and ``wgan`` models: DCGAN-shaped generators with a BatchNorm discriminator or a critic.

``dcgan`` is the DCGAN of Radford et al. 2015; ``wgan`` keeps its generator and
replaces BatchNorm in the discriminator (the critic) by no normalisation,
LayerNorm or instance norm, as the WGAN-GP paper (Gulrajani et al. 2017)
requires: its gradient penalty is per sample, which BatchNorm breaks.
Both offer PacGAN packing (Lin et al. 2018): the discriminator judges
``pack`` samples at once, concatenated along the channels.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from aigc_kit.core.plugin_api import (
    ComponentSpec,
    Condition,
    Context,
    ModelBundle,
    Options,
    hookimpl,
    square_image_size,
)
from aigc_kit.plugins.common import CONDITIONAL_HELP, ConditionalOption, model_conditions, refuse_packing_with_labels


class DcganOptions(Options):
    """Options of the ``dcgan`` model; resolution and channels default to the data's."""

    resolution: int | None = Field(None, description="Image side, a power of two from 16 to 128 (default: the data's).")
    channels: int | None = Field(None, description="Image channels, 1 or 3 (default: the data's).")
    latent_dim: int = Field(100, gt=0, le=4096, description="Size of the latent vector z.")
    width: int = Field(64, gt=0, le=1024, description="Base width: feature maps of the last generator / first "
                                                        "discriminator layer (the widest has 8 or 16 times it).")
    pack: int = Field(1, ge=1, le=64, description="PacGAN packing: samples the discriminator judges together (batch must divide).")
    conditional: ConditionalOption = Field("auto", description=CONDITIONAL_HELP + " The generator takes the class "
                                           "through class-conditional BatchNorm, the discriminator as one-hot "
                                           "input maps and through projection.")

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and (value < 16 or value > 128 or value & (value - 1)):
            raise ValueError("expected a power of two from 16 to 128")
        return value

    @field_validator("channels")
    @classmethod
    def _one_or_three(cls, value: int | None) -> int | None:
        if value is not None and value not in (1, 3):
            raise ValueError("expected 1 or 3")
        return value


class WganOptions(DcganOptions):
    """Options of the ``wgan`` model: the ``dcgan`` options and the critic's normalisation."""

    critic_norm: Literal["none", "layer", "instance"] = Field(
        "layer", description="Normalisation in the critic's hidden layers (no BatchNorm: the gradient penalty is per sample)."
    )


def build_dcgan(options: DcganOptions, context: Context) -> ModelBundle:
    return _build(options, context.data_shape, context.conditions, "dcgan", norm="batch")


def build_wgan(options: WganOptions, context: Context) -> ModelBundle:
    return _build(options, context.data_shape, context.conditions, "wgan", norm=options.critic_norm)


def _build(options: DcganOptions, data_shape: tuple[int, ...] | None, data_conditions: dict[str, Condition] | None,
           model: str, norm: str) -> ModelBundle:
    from .networks import Discriminator, Generator

    channels, resolution = square_image_size(options, data_shape, model)
    conditions = model_conditions(options.conditional, data_conditions, model)
    refuse_packing_with_labels(options.pack, conditions)
    classes = conditions["label"].count if conditions else 0
    generator = Generator(options.latent_dim, options.width, channels, resolution, classes)
    discriminator = Discriminator(options.width, channels, resolution, norm=norm, pack=options.pack, classes=classes)
    return ModelBundle(
        networks={"generator": generator, "discriminator": discriminator},
        sampling_network="generator",
        noise_shape=(options.latent_dim,),
        batch_multiple=options.pack,
        conditions=conditions,
    )


@hookimpl
def aigc_register_models():
    return [
        ComponentSpec(
            "dcgan",
            build_dcgan,
            "DCGAN generator (transposed convolutions, BatchNorm, ReLU, Tanh) and discriminator "
            "(strided convolutions, LeakyReLU 0.2, BatchNorm but on the first layer); weights N(0, 0.02).",
            DcganOptions,
        ),
        ComponentSpec(
            "wgan",
            build_wgan,
            "DCGAN generator and a critic without BatchNorm (none, LayerNorm or instance norm) and without sigmoid, "
            "for the Wasserstein losses (Arjovsky et al. 2017; Gulrajani et al. 2017).",
            WganOptions,
        ),
    ]
