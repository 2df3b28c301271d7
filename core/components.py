"""A run's components: built from its config by the registry, and checked against each other and the config."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from . import callbacks
from .config import LoadedConfig, RunConfig
from .errors import UserError, did_you_mean
from .plugin_api import DatasetBundle, ModelBundle, accepts, is_stepwise
from .registry import Registry


@dataclass
class Components:
    """The components of a run, built from its config by the registry."""

    data: DatasetBundle
    model: ModelBundle
    loss: Any
    sampler: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    callbacks: list[tuple[str, Any]] = field(default_factory=list)
    """``(name, callback)``: the built-in ones the ``train`` section asks for, then the config's ``callbacks``."""



def build_components(loaded: LoadedConfig, registry: Registry, *, model_on_meta: bool = False) -> Any:
    """Build the dataset, model, loss and sampler a config names.

    ``model_on_meta`` builds the networks on torch's meta device: shapes and
    structure without memory or initialisation cost, enough to check a config.
    """
    import torch

    config = loaded.config
    data = registry.build("dataset", config.data.name, loaded.options["data"], field="data")
    with torch.device("meta") if model_on_meta else contextlib.nullcontext():
        model = registry.build("model", config.model.name, loaded.options["model"], field="model", data=data)
    for section in ("loss", "sampler"):  # each section names a component of its own kind
        part = getattr(config, section)
        loaded.options[section] = with_shared_options(registry, section, part.name, part.plugin_options(),
                                                      model.shared_options, model=config.model.name, field=section)
    loss = registry.build("loss", config.loss.name, loaded.options["loss"], field="loss")
    sampler = registry.build("sampler", config.sampler.name, loaded.options["sampler"], field="sampler")
    metrics = {
        section.name: registry.build("metric", section.name, options, field=f"train.eval.metrics[{index}]", data=data)
        for index, (section, options) in enumerate(zip(config.train.eval.metrics, loaded.metric_options, strict=True))
    }
    return Components(data=data, model=model, loss=loss, sampler=sampler, metrics=metrics,
                      callbacks=build_callbacks(loaded, registry, bool(metrics)))


def build_callbacks(loaded: LoadedConfig, registry: Registry, metrics: bool) -> list[tuple[str, Any]]:
    """The run's callbacks: the built-in ones its ``train`` section asks for, then its ``callbacks`` list in order.

    A built-in callback the list names too is built once, where the list puts it.
    """
    config = loaded.config
    listed = [section.name for section in config.callbacks]
    built = [(name, registry.build("callback", name, registry.options("callback", name), field="train"))
             for name in callbacks.standard(config.train, metrics) if name not in listed]
    for index, (section, options) in enumerate(zip(config.callbacks, loaded.callback_options, strict=True)):
        built.append((section.name, registry.build("callback", section.name, options, field=f"callbacks[{index}]")))
    return built


def with_shared_options(registry: Registry, kind: str, name: str, given: dict[str, Any], shared: dict[str, Any],
                        *, model: str, field: str) -> Any:
    """A loss's or sampler's options with the options its model fixes filled in (``ModelBundle.shared_options``).

    A run and the conformance kit both build them this way: a component that
    does not take an option the model fixes cannot be used with that model, and
    a given value that differs from the model's is refused, naming ``field``.
    """
    options = registry.options(kind, name, given, field_prefix=field)
    if not shared:
        return options
    missing = [key for key in shared if key not in type(options).model_fields]
    if missing:
        raise UserError(
            f"{kind} {name!r} cannot be used with model {model!r}: the model fixes {', '.join(missing)}, which this "
            f"{kind} does not take",
            field=f"{field}.name",
            hint=f"pick a {kind} made for this model (see `aigc-kit plugins`)",
        )
    for key, value in shared.items():
        if key in given and getattr(options, key) != value:
            raise UserError(
                "the model fixes this option for its loss and sampler, to a different value",
                field=f"{field}.{key}",
                expected=value,
                given=given[key],
                hint="remove it here: the model's section sets it for both the loss and the sampler",
            )
    return registry.options(kind, name, {**given, **shared}, field_prefix=field)


def check_components(components: Components, config: RunConfig) -> None:
    """Check that the loss, the model and the config's optimizer overrides fit together."""
    loss_name, model_name = config.loss.name, config.model.name
    networks = components.model.networks
    phases = list(components.loss.phases)
    if not phases:
        raise UserError(f"loss {loss_name!r} declares no phases", field="loss.name")
    for phase in phases:
        for network in phase.trains:
            if network not in networks:
                raise UserError(
                    f"loss {loss_name!r} trains a network named {network!r}, "
                    f"but model {model_name!r} has {sorted(networks)}",
                    field="loss.name",
                    hint="pick a loss made for this kind of model",
                )
    names = {phase.name for phase in phases}
    for phase_name in config.train.optimizers:
        if phase_name not in names:
            raise UserError(
                f"loss {loss_name!r} has no phase {phase_name!r}",
                field=f"train.optimizers.{phase_name}",
                hint=did_you_mean(phase_name, names),
            )
    if components.model.sampling_network not in networks:
        raise UserError(
            f"model {model_name!r} names a sampling network {components.model.sampling_network!r} it lacks",
            field="model.name",
        )
    declared = components.data.info.conditions
    for name, condition in components.model.conditions.items():
        if name not in declared:
            raise UserError(f"model {model_name!r} is conditioned on {name!r}, which dataset {config.data.name!r} "
                            "does not provide", field="model.conditional",
                            hint="use a dataset with labels (e.g. shapes with labels: true), or conditional: false")
        if condition.count != declared[name].count:
            raise UserError(f"model {model_name!r} takes {condition.count} classes, the data has "
                            f"{declared[name].count}", field="model.name")
    noise_shape, data_shape = tuple(components.model.noise_shape), tuple(components.data.info.shape)
    if is_stepwise(components.sampler) and noise_shape != data_shape:
        raise UserError(f"sampler {config.sampler.name!r} denoises a sample step by step from noise of the data's "
                        f"shape {data_shape}, but model {model_name!r} draws noise of shape {noise_shape} (a "
                        "generator's latent)", field="sampler.name",
                        hint="use a sampler for this kind of model: normal for a GAN; ddim, dpm-solver++, unipc, "
                             "euler or heun for a diffusion model")
    if components.model.conditions and not accepts(components.sampler.sample, "conditions"):
        raise UserError(f"model {model_name!r} is conditional, but sampler {config.sampler.name!r} takes no "
                        "conditions (its sample has no `conditions` argument)", field="sampler.name",
                        hint="use a sampler that passes conditions on, or model.conditional: false")
    if components.model.conditions and not accepts(components.loss.compute, "conditions"):
        raise UserError(f"model {model_name!r} is conditional, but loss {loss_name!r} takes no conditions "
                        "(its compute has no `conditions` argument): it would train the model without them",
                        field="loss.name", hint="use a loss that passes conditions on, or model.conditional: false")
    batch, multiple = config.train.batch_size, components.model.batch_multiple
    if multiple > 1 and batch % multiple:
        raise UserError(f"model {model_name!r} judges samples in groups of {multiple}, which a batch of {batch} "
                        "does not divide into", field="train.batch_size", given=batch,
                        hint=f"use a multiple of {multiple}, e.g. {batch - batch % multiple or multiple}")
    size = len(components.data.dataset)
    if size < batch:
        raise UserError(f"the dataset has {size} samples, fewer than one batch", field="train.batch_size",
                        given=batch, hint="use a smaller batch or more data")
