"""The ``mlp`` model: a dense generator and discriminator, for vectors and flattened small images."""

from __future__ import annotations

from pydantic import Field

from aigc_kit.core.plugin_api import ComponentSpec, Context, ModelBundle, Options, hookimpl
from aigc_kit.plugins.common import CONDITIONAL_HELP, ConditionalOption, model_conditions, refuse_packing_with_labels


class MlpOptions(Options):
    """Options of the ``mlp`` model; the sample shape comes from the data (or ``sample_shape``)."""

    sample_shape: tuple[int, ...] | None = Field(None, description="Shape of one sample (default: the data's).")
    latent_dim: int = Field(8, gt=0, le=4096, description="Size of the latent vector z.")
    width: int = Field(256, gt=0, le=16384, description="Units per hidden layer, in both networks.")
    depth: int = Field(3, ge=1, le=16, description="Hidden layers per network.")
    pack: int = Field(1, ge=1, le=64, description="PacGAN packing: samples the discriminator judges together (batch must divide).")
    conditional: ConditionalOption = Field("auto", description=CONDITIONAL_HELP + " (A mixture's modes, with "
                                           "labels: true.)")


def build_mlp(options: MlpOptions, context: Context) -> ModelBundle:
    from aigc_kit.core.errors import UserError

    from .networks import Discriminator, Generator

    data_shape = context.data_shape
    shape = tuple(options.sample_shape or data_shape or ())
    if data_shape is not None and options.sample_shape is not None and tuple(options.sample_shape) != tuple(data_shape):
        raise UserError("the model's sample shape differs from the data's", field="model.sample_shape",
                        expected=list(data_shape), given=list(options.sample_shape),
                        hint="drop model.sample_shape to follow the data")
    if not shape:
        raise UserError("model 'mlp' needs a sample shape (or data to take it from)", field="model.sample_shape")
    # Images live in [-1, 1] (tanh output); vectors such as 2-D mixture points are unbounded.
    bounded = len(shape) == 3
    taken = model_conditions(options.conditional, context.conditions, "mlp")
    refuse_packing_with_labels(options.pack, taken)
    classes = taken["label"].count if taken else 0
    generator = Generator(options.latent_dim, shape, options.width, options.depth, bounded, classes)
    discriminator = Discriminator(shape, options.width, options.depth, options.pack, classes)
    return ModelBundle({"generator": generator, "discriminator": discriminator}, sampling_network="generator",
                       noise_shape=(options.latent_dim,), batch_multiple=options.pack, conditions=taken)


@hookimpl
def aigc_register_models():
    return [
        ComponentSpec(
            "mlp",
            build_mlp,
            "Dense generator (ReLU) and discriminator (LeakyReLU 0.2), width x depth hidden layers, "
            "for vectors (linear output) or flattened images (tanh output).",
            MlpOptions,
        )
    ]
