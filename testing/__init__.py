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

Conditional components are checked with ``classes=`` (a count, or the names):
the model is built as for data with that many classes, and each check also
asks that a label changes what it should (the samples, the other networks'
answers, the loss's gradients, the exported file's output). For these checks,
weights initialised to zero (a denoiser's last layer, say) get small random
values first: a network that answers zero to everything cannot show a label.

This module imports torch only when a check runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aigc_kit.core.plugin_api import SAMPLE_KEY, DatasetBundle, ExportRequest, accepts
from aigc_kit.core.registry import Registry

from .callbacks import check_callback
from .helpers import (
    Classes,
    built_model,
    check_gradients_follow_labels,
    check_tensor,
    conditions_for,
    create_as_a_run_does,
    differ,
    labels_for,
    sample_checked,
    sample_with,
)

__all__ = ["check_callback", "check_dataset", "check_exporter", "check_loss", "check_metric", "check_model", "check_sampler",
           "isolated_registry"]



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
                sampler_options: dict[str, Any] | None = None, batch: int = 2, classes: Classes = None) -> None:
    """Model ``name`` builds for each data shape, and its sampling network, through ``sampler``, gives samples of it.

    The data shapes are ``(channels, resolution, resolution)`` for each resolution and channel
    count given, or ``data_shapes``. Every other network (a discriminator, a critic) must take a
    batch of data and answer per sample. With ``classes``, the model must take the label
    (``ModelBundle.conditions``), and the samples from one noise and every network's answers
    must change with it.
    """
    import torch

    shapes = list(data_shapes) if data_shapes is not None else [
        (count, resolution, resolution) for resolution in resolutions for count in channels
        if resolution is not None and count is not None]
    if not shapes:
        raise ValueError("give resolutions and channels, or data_shapes, to check the model at")
    for shape in shapes:
        where = f"model {name!r} at data shape {shape}"
        bundle = built_model(registry, name, options, shape, classes)
        network = bundle.networks[bundle.sampling_network].eval()
        chosen = create_as_a_run_does(registry, "sampler", sampler, sampler_options, bundle.shared_options, name)
        labels = labels_for(bundle, batch)
        with torch.no_grad():
            noise = chosen.noise(batch, tuple(bundle.noise_shape), generator=torch.Generator().manual_seed(0))
            samples = sample_with(chosen, network, noise, labels[0])
            check_tensor(samples, (batch, *shape), f"{where}: samples")
            if classes is not None:
                assert differ(samples, sample_with(chosen, network, noise, labels[1])), (
                    f"{where}: the same noise with other labels gave the same samples; pass the label to the network")
        data = torch.rand(batch, *shape) * 2 - 1
        for network_name, other in bundle.networks.items():
            if network_name == bundle.sampling_network:
                continue
            with torch.no_grad():
                answer = other.eval()(data, **labels[0])
            assert answer.shape[:1] == (batch,) and bool(torch.isfinite(answer).all()), (
                f"{where}: network {network_name!r} should answer a batch of "
                f"{batch} samples with {batch} finite values, gave shape {tuple(answer.shape)}")
            if classes is not None:
                with torch.no_grad():
                    assert differ(answer, other(data, **labels[1])), (
                        f"{where}: network {network_name!r} gave the same answers for other labels")


def check_loss(registry: Registry, name: str, *, model: str = "dcgan", model_options: dict[str, Any] | None = None,
               data_shape: tuple[int, ...] = (3, 16, 16), options: dict[str, Any] | None = None,
               batch: int = 4, sampler: str = "normal", classes: Classes = None) -> None:
    """Each phase of loss ``name`` gives a finite scalar whose gradients reach the phase's networks and no others.

    The networks come from ``model`` (built for ``data_shape``); the batch is uniform noise in [-1, 1];
    ``compute`` gets the run's ``sampler`` and the batch's conditions if it names them, as in a run.
    With ``classes``, each phase's gradients must change with the batch's labels.
    """
    import torch

    torch.manual_seed(0)
    bundle = built_model(registry, model, model_options, data_shape, classes)
    loss = create_as_a_run_does(registry, "loss", name, options, bundle.shared_options, model)
    context: dict[str, Any] = {}
    if accepts(loss.compute, "sampler"):
        context["sampler"] = create_as_a_run_does(registry, "sampler", sampler, None, bundle.shared_options, model)
    labels = labels_for(bundle, batch)
    if classes is not None:
        assert accepts(loss.compute, "conditions"), (
            f"loss {name!r}: compute takes no conditions, so a conditional model never sees its labels")
    assert loss.phases, f"loss {name!r} has no phases"
    data = torch.rand(batch, *data_shape) * 2 - 1
    for phase in loss.phases:
        unknown = set(phase.trains) - set(bundle.networks)
        assert not unknown, (f"loss {name!r}: phase {phase.name!r} trains {sorted(unknown)}, which model {model!r} "
                             f"does not have (it has {sorted(bundle.networks)})")
        for network_name, network in bundle.networks.items():  # as the training loop does
            network.train().requires_grad_(network_name in phase.trains)
            network.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]):
            value, logs = loss.compute(phase, data, bundle, 0, **context, **conditions_for(loss, labels[0]))
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
        if classes is not None:
            check_gradients_follow_labels(loss, phase, data, bundle, context, labels, where)
        if phase.after_step is not None:
            phase.after_step(bundle)


def check_sampler(registry: Registry, name: str, *, model: str = "dcgan", model_options: dict[str, Any] | None = None,
                  data_shape: tuple[int, ...] = (3, 16, 16), options: dict[str, Any] | None = None,
                  batch: int = 3, classes: Classes = None) -> None:
    """Sampler ``name`` draws noise of the model's shape and turns it into samples of ``data_shape``, reproducibly.

    With ``classes``, the sampler must take ``conditions`` and honour them: other labels, other samples.
    """
    import torch

    torch.manual_seed(0)
    bundle = built_model(registry, model, model_options, data_shape, classes)
    network = bundle.networks[bundle.sampling_network].eval()
    sampler = create_as_a_run_does(registry, "sampler", name, options, bundle.shared_options, model)
    noise_shape = tuple(bundle.noise_shape)
    labels = labels_for(bundle, batch)
    if classes is not None:
        assert accepts(sampler.sample, "conditions"), (
            f"sampler {name!r}: sample takes no conditions, so it cannot draw a chosen class")

    def draw(seed: int, chosen: int = 0) -> tuple[Any, Any]:
        with torch.no_grad():
            noise = sampler.noise(batch, noise_shape, generator=torch.Generator().manual_seed(seed))
            return noise, sample_with(sampler, network, noise, labels[chosen],
                                  generator=torch.Generator().manual_seed(seed + 1))

    noise, samples = draw(0)
    check_tensor(noise, (batch, *noise_shape), f"sampler {name!r}: noise")
    check_tensor(samples, (batch, *data_shape), f"sampler {name!r}: samples")
    again_noise, again = draw(0)
    assert torch.equal(noise, again_noise) and torch.equal(samples, again), (
        f"sampler {name!r}: the same seed gave different noise or samples; draw randomness only from `generator`")
    other_noise, _ = draw(10)
    assert not torch.equal(noise, other_noise), f"sampler {name!r}: different seeds gave the same noise"
    if classes is not None:
        assert differ(samples, draw(0, chosen=1)[1]), (
            f"sampler {name!r}: other labels gave the same samples; pass conditions to the network as keywords")


def check_dataset(registry: Registry, name: str, *, options: dict[str, Any] | None = None, items: int = 8) -> None:
    """Dataset ``name`` is non-empty; its first items have the declared shape and range; it is the same when rebuilt.

    A dataset that declares conditions must give ``{"sample": tensor, NAME: value}`` items with each of them (a
    label an integer in range), and one that declares none the sample tensor itself.
    """
    import torch

    bundle = registry.create("dataset", name, **(options or {}))
    assert isinstance(bundle, DatasetBundle), f"dataset {name!r}: the factory should return a DatasetBundle"
    info, dataset = bundle.info, bundle.dataset
    assert len(dataset) > 0, f"dataset {name!r} is empty"
    low, high = info.value_range
    rebuilt = registry.create("dataset", name, **(options or {})).dataset
    for index in range(min(items, len(dataset))):
        where = f"dataset {name!r}, item {index}"
        item = sample_checked(dataset[index], info.conditions, where)
        check_tensor(item, tuple(info.shape), where)
        assert float(item.min()) >= low - 1e-6 and float(item.max()) <= high + 1e-6, (
            f"{where}: values from {float(item.min()):.3g} to {float(item.max()):.3g}, outside the declared "
            f"value_range {info.value_range}")
        assert torch.equal(item, sample_checked(rebuilt[index], info.conditions, where)), (
            f"{where} differs when the dataset is built again with the same options; seed it from the options")


def check_exporter(registry: Registry, name: str, folder: str | Path, *, filename: str | None = None,
                   model: str = "dcgan", model_options: dict[str, Any] | None = None,
                   data_shape: tuple[int, ...] = (3, 16, 16), sampler: str = "normal",
                   options: dict[str, Any] | None = None, batch: int = 3, atol: float = 1e-4,
                   classes: Classes = None) -> dict[str, Any]:
    """Exporter ``name`` writes ``model``'s sampling network, and the file's samples match PyTorch's within ``atol``.

    The exporter must offer ``load(path)`` (see :class:`~aigc_kit.core.plugin_api.Exporter`).
    With ``classes``, the file must take the label (``run(noise, label=...)``) and match PyTorch for
    each of two label sets. Returns the exporter's report.
    """
    import numpy as np
    import torch

    torch.manual_seed(0)
    bundle = built_model(registry, model, model_options, data_shape, classes)
    network = bundle.networks[bundle.sampling_network].eval()
    chosen = create_as_a_run_does(registry, "sampler", sampler, None, bundle.shared_options, model)
    exporter = registry.create("exporter", name, **(options or {}))
    path = Path(folder) / (filename or f"model.{name}")
    request = ExportRequest(network=network, sampler=chosen, noise_shape=tuple(bundle.noise_shape),
                            sample_shape=tuple(data_shape), value_range=(-1.0, 1.0), path=str(path),
                            metadata={"aigc_kit.producer": "aigc-kit conformance check"},
                            conditions=dict(bundle.conditions), model_options=dict(options or {}))
    report = exporter.export(request)
    assert path.is_file(), f"exporter {name!r} wrote nothing at {path}"
    assert isinstance(report, dict), f"exporter {name!r} should return a report dict, got {type(report).__name__}"
    json.dumps(report, default=str)
    assert hasattr(exporter, "load"), f"exporter {name!r} has no load(path): the kit cannot run what it wrote"
    run = exporter.load(str(path))
    with torch.no_grad():
        noise = chosen.noise(batch, tuple(bundle.noise_shape), generator=torch.Generator().manual_seed(0))
    outputs = []
    for labels in labels_for(bundle, batch)[:1 if classes is None else 2]:
        with torch.no_grad():
            expected = sample_with(chosen, network, noise, labels).numpy()
        where = f"exporter {name!r}" + (" with labels " + str(labels["label"].tolist()) if labels else "")
        actual = np.asarray(run(noise.numpy(), **{key: value.numpy() for key, value in labels.items()}))
        assert actual.shape == expected.shape, (
            f"{where}: the file gives samples of shape {actual.shape}, PyTorch {expected.shape}")
        error = float(np.abs(actual - expected).max())
        assert error <= atol, f"{where}: the file's samples differ from PyTorch's by up to {error:.3g} (> {atol})"
        outputs.append(actual)
    if classes is not None:
        assert differ(outputs[0], outputs[1]), f"exporter {name!r}: the file ignores the label input"
    return report


def check_metric(registry: Registry, name: str, *, options: dict[str, Any] | None = None, data: str = "shapes",
                 data_options: dict[str, Any] | None = None, samples: int = 32, batch: int = 16) -> dict[str, float]:
    """Metric ``name`` builds for dataset ``data``, takes its first ``samples`` items in batches (with their labels,
    if its ``update`` names ``conditions`` and the items carry them) and computes finite numbers; ``compute``
    resets it, so the same samples again give the same numbers. Returns the values.
    """
    import torch

    bundle = registry.create("dataset", data, **(data_options or {"resolution": 16, "size": max(samples, 64)}))
    metric = registry.build("metric", name, registry.options("metric", name, options or {}), data=bundle)
    items = [bundle.dataset[index] for index in range(min(samples, len(bundle.dataset)))]
    images = torch.stack([torch.as_tensor(item[SAMPLE_KEY] if bundle.info.conditions else item) for item in items])
    labelled = {key: torch.tensor([int(item[key]) for item in items]) for key in bundle.info.conditions}
    with_conditions = accepts(metric.update, "conditions")

    def compute() -> dict[str, float]:
        for start in range(0, len(images), batch):
            chunk = {key: value[start:start + batch] for key, value in labelled.items()}
            if with_conditions:
                metric.update(images[start:start + batch], conditions=chunk)
            else:
                metric.update(images[start:start + batch])
        return metric.compute()

    values = compute()
    assert isinstance(values, dict) and values, f"metric {name!r}: compute should return a non-empty dict"
    for key, value in values.items():
        assert isinstance(key, str) and isinstance(value, int | float) and math.isfinite(value), (
            f"metric {name!r}: {key!r} should be a finite number, got {value!r}")
    again = compute()
    assert again == values, (f"metric {name!r}: the same samples after compute gave {again}, not {values}; compute "
                             "must reset what update collected")
    return values
