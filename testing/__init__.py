"""The conformance kit: checks a plugin author calls in one line each, on a registry of their own.

    from aigc_kit import testing
    import my_plugin

    def test_my_model_builds_and_samples():
        registry = testing.isolated_registry(my_plugin)
        testing.check_model(registry, "tiny", resolutions=(16, 32), channels=(1, 3))

Installed with aigc-kit, the same is a pytest plugin (the ``pytest11`` entry
point): the fixture ``aigc_kit`` gives ``aigc_kit.registry(my_plugin)`` and
every ``check_*`` below with no import, and ``aigc_registry`` is an isolated
registry with aigc-kit's own plugins in it.

:func:`isolated_registry` discovers no installed plugin: it holds aigc-kit's
built-in plugins (so a loss can be checked against the built-in ``dcgan``
model) and the plugins under test, whatever else is installed. Each check
raises ``AssertionError`` saying what the component did and what was expected.

This module imports torch only when a check runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aigc_kit.core.plugin_api import DatasetBundle, ExportRequest, ModelBundle
from aigc_kit.core.registry import Registry

__all__ = ["check_dataset", "check_exporter", "check_loss", "check_model", "check_sampler", "isolated_registry"]


def isolated_registry(*plugins: Any, builtins: bool = True) -> Registry:
    """A registry with ``plugins`` (modules or objects with hook functions) and, by default, aigc-kit's own.

    No other installed plugin is discovered, so a test sees the same components on every machine.
    """
    registry = Registry(entry_points=builtins, builtin_only=True, strict=True, disabled=())
    for plugin in plugins:
        registry.add_plugin(plugin, getattr(plugin, "__name__", type(plugin).__name__))
    return registry


def check_model(registry: Registry, name: str, *, resolutions: Iterable[int | None] = (None,),
                channels: Iterable[int | None] = (None,), data_shapes: Iterable[tuple[int, ...]] | None = None,
                options: dict[str, Any] | None = None, sampler: str = "normal",
                sampler_options: dict[str, Any] | None = None, batch: int = 2) -> None:
    """Model ``name`` builds for each data shape, and its sampling network, through ``sampler``, gives samples of it.

    The data shapes are ``(channels, resolution, resolution)`` for each resolution and channel
    count given, or ``data_shapes``. Every other network (a discriminator, a critic) must take a
    batch of data and answer per sample.
    """
    import torch

    shapes = list(data_shapes) if data_shapes is not None else [
        (count, resolution, resolution) for resolution in resolutions for count in channels
        if resolution is not None and count is not None]
    if not shapes:
        raise ValueError("give resolutions and channels, or data_shapes, to check the model at")
    for shape in shapes:
        bundle = _model(registry, name, options, shape)
        network = bundle.networks[bundle.sampling_network].eval()
        chosen = _create(registry, "sampler", sampler, sampler_options, bundle.shared_options)
        with torch.no_grad():
            noise = chosen.noise(batch, tuple(bundle.noise_shape), generator=torch.Generator().manual_seed(0))
            samples = chosen.sample(network, noise, generator=torch.Generator().manual_seed(1))
        _check_tensor(samples, (batch, *shape), f"model {name!r} at data shape {shape}: samples")
        for network_name, other in bundle.networks.items():
            if network_name == bundle.sampling_network:
                continue
            with torch.no_grad():
                answer = other.eval()(torch.rand(batch, *shape) * 2 - 1)
            assert answer.shape[:1] == (batch,) and bool(torch.isfinite(answer).all()), (
                f"model {name!r} at data shape {shape}: network {network_name!r} should answer a batch of "
                f"{batch} samples with {batch} finite values, gave shape {tuple(answer.shape)}")


def check_loss(registry: Registry, name: str, *, model: str = "dcgan", model_options: dict[str, Any] | None = None,
               data_shape: tuple[int, ...] = (3, 16, 16), options: dict[str, Any] | None = None,
               batch: int = 4) -> None:
    """Each phase of loss ``name`` gives a finite scalar whose gradients reach the phase's networks and no others.

    The networks come from ``model`` (built for ``data_shape``); the batch is uniform noise in [-1, 1].
    """
    import torch

    torch.manual_seed(0)
    bundle = _model(registry, model, model_options, data_shape)
    loss = _create(registry, "loss", name, options, bundle.shared_options)
    assert loss.phases, f"loss {name!r} has no phases"
    data = torch.rand(batch, *data_shape) * 2 - 1
    for phase in loss.phases:
        unknown = set(phase.trains) - set(bundle.networks)
        assert not unknown, (f"loss {name!r}: phase {phase.name!r} trains {sorted(unknown)}, which model {model!r} "
                             f"does not have (it has {sorted(bundle.networks)})")
        for network_name, network in bundle.networks.items():  # as the training loop does
            network.train().requires_grad_(network_name in phase.trains)
            network.zero_grad(set_to_none=True)
        value, logs = loss.compute(phase, data, bundle, 0)
        where = f"loss {name!r}, phase {phase.name!r}"
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{where}: expected a scalar tensor, got {value!r}"
        assert bool(torch.isfinite(value)), f"{where}: the loss is {value.item()}"
        assert value.requires_grad, f"{where}: the loss does not depend on any trained parameter"
        assert all(isinstance(key, str) for key in logs) and json.dumps({k: float(v) for k, v in logs.items()}), (
            f"{where}: logs must map names to numbers, got {logs!r}")
        value.backward()
        for network_name, network in bundle.networks.items():
            gradients = [p.grad for p in network.parameters() if p.grad is not None]
            if network_name in phase.trains:
                assert gradients and any(bool(g.abs().sum() > 0) for g in gradients), (
                    f"{where}: no gradient reaches network {network_name!r}, which the phase trains")
                assert all(bool(torch.isfinite(g).all()) for g in gradients), (
                    f"{where}: network {network_name!r} has non-finite gradients")
            else:
                assert not gradients, f"{where}: gradients reach network {network_name!r}, which the phase does not train"
        if phase.after_step is not None:
            phase.after_step(bundle)


def check_sampler(registry: Registry, name: str, *, model: str = "dcgan", model_options: dict[str, Any] | None = None,
                  data_shape: tuple[int, ...] = (3, 16, 16), options: dict[str, Any] | None = None,
                  batch: int = 3) -> None:
    """Sampler ``name`` draws noise of the model's shape and turns it into samples of ``data_shape``, reproducibly."""
    import torch

    torch.manual_seed(0)
    bundle = _model(registry, model, model_options, data_shape)
    network = bundle.networks[bundle.sampling_network].eval()
    sampler = _create(registry, "sampler", name, options, bundle.shared_options)
    noise_shape = tuple(bundle.noise_shape)

    def draw(seed: int) -> tuple[Any, Any]:
        with torch.no_grad():
            noise = sampler.noise(batch, noise_shape, generator=torch.Generator().manual_seed(seed))
            return noise, sampler.sample(network, noise, generator=torch.Generator().manual_seed(seed + 1))

    noise, samples = draw(0)
    _check_tensor(noise, (batch, *noise_shape), f"sampler {name!r}: noise")
    _check_tensor(samples, (batch, *data_shape), f"sampler {name!r}: samples")
    again_noise, again = draw(0)
    assert torch.equal(noise, again_noise) and torch.equal(samples, again), (
        f"sampler {name!r}: the same seed gave different noise or samples; draw randomness only from `generator`")
    other_noise, _ = draw(10)
    assert not torch.equal(noise, other_noise), f"sampler {name!r}: different seeds gave the same noise"


def check_dataset(registry: Registry, name: str, *, options: dict[str, Any] | None = None, items: int = 8) -> None:
    """Dataset ``name`` is non-empty; its first items have the declared shape and range; it is the same when rebuilt."""
    import torch

    bundle = registry.create("dataset", name, **(options or {}))
    assert isinstance(bundle, DatasetBundle), f"dataset {name!r}: the factory should return a DatasetBundle"
    info, dataset = bundle.info, bundle.dataset
    assert len(dataset) > 0, f"dataset {name!r} is empty"
    low, high = info.value_range
    rebuilt = registry.create("dataset", name, **(options or {})).dataset
    for index in range(min(items, len(dataset))):
        item = dataset[index]
        where = f"dataset {name!r}, item {index}"
        _check_tensor(item, tuple(info.shape), where)
        assert float(item.min()) >= low - 1e-6 and float(item.max()) <= high + 1e-6, (
            f"{where}: values from {float(item.min()):.3g} to {float(item.max()):.3g}, outside the declared "
            f"value_range {info.value_range}")
        assert torch.equal(item, rebuilt[index]), (
            f"{where} differs when the dataset is built again with the same options; seed it from the options")


def check_exporter(registry: Registry, name: str, folder: str | Path, *, filename: str | None = None,
                   model: str = "dcgan", model_options: dict[str, Any] | None = None,
                   data_shape: tuple[int, ...] = (3, 16, 16), sampler: str = "normal",
                   options: dict[str, Any] | None = None, batch: int = 3, atol: float = 1e-4) -> dict[str, Any]:
    """Exporter ``name`` writes ``model``'s sampling network, and the file's samples match PyTorch's within ``atol``.

    The exporter must offer ``load(path)`` (see :class:`~aigc_kit.core.plugin_api.Exporter`).
    Returns the exporter's report.
    """
    import numpy as np
    import torch

    torch.manual_seed(0)
    bundle = _model(registry, model, model_options, data_shape)
    network = bundle.networks[bundle.sampling_network].eval()
    chosen = _create(registry, "sampler", sampler, None, bundle.shared_options)
    exporter = registry.create("exporter", name, **(options or {}))
    path = Path(folder) / (filename or f"model.{name}")
    request = ExportRequest(network=network, sampler=chosen, noise_shape=tuple(bundle.noise_shape),
                            sample_shape=tuple(data_shape), value_range=(-1.0, 1.0), path=str(path),
                            metadata={"aigc_kit.producer": "aigc-kit conformance check"})
    report = exporter.export(request)
    assert path.is_file(), f"exporter {name!r} wrote nothing at {path}"
    assert isinstance(report, dict), f"exporter {name!r} should return a report dict, got {type(report).__name__}"
    json.dumps(report, default=str)
    assert hasattr(exporter, "load"), f"exporter {name!r} has no load(path): the kit cannot run what it wrote"
    run = exporter.load(str(path))
    with torch.no_grad():
        noise = chosen.noise(batch, tuple(bundle.noise_shape), generator=torch.Generator().manual_seed(0))
        expected = chosen.sample(network, noise).numpy()
    actual = np.asarray(run(noise.numpy()))
    assert actual.shape == expected.shape, (
        f"exporter {name!r}: the file gives samples of shape {actual.shape}, PyTorch {expected.shape}")
    error = float(np.abs(actual - expected).max())
    assert error <= atol, f"exporter {name!r}: the file's samples differ from PyTorch's by up to {error:.3g} (> {atol})"
    return report


def _model(registry: Registry, name: str, options: dict[str, Any] | None, data_shape: tuple[int, ...]) -> ModelBundle:
    bundle = registry.create("model", name, data_shape=tuple(data_shape), **(options or {}))
    assert isinstance(bundle, ModelBundle), f"model {name!r}: the factory should return a ModelBundle"
    assert bundle.sampling_network in bundle.networks, (
        f"model {name!r}: sampling_network {bundle.sampling_network!r} is not one of {sorted(bundle.networks)}")
    return bundle


def _create(registry: Registry, kind: str, name: str, options: dict[str, Any] | None,
            shared: dict[str, Any]) -> Any:
    """Build a loss or sampler with the options the model fixes for it, as a run does."""
    fields = registry.spec(kind, name).options.model_fields
    return registry.create(kind, name, **{**(options or {}), **{k: v for k, v in shared.items() if k in fields}})


def _check_tensor(value: Any, shape: tuple[int, ...], where: str) -> None:
    import torch

    assert isinstance(value, torch.Tensor), f"{where}: expected a torch.Tensor, got {type(value).__name__}"
    assert tuple(value.shape) == shape, f"{where}: expected shape {shape}, got {tuple(value.shape)}"
    assert value.dtype == torch.float32, f"{where}: expected float32, got {value.dtype}"
    assert bool(torch.isfinite(value).all()), f"{where}: not all values are finite"
