"""What the conformance kit's checks share: building a model as a run would, labels, and assertions on tensors."""

from __future__ import annotations

from typing import Any

from aigc_kit.core.plugin_api import SAMPLE_KEY, Condition, ModelBundle, accepts
from aigc_kit.core.registry import Registry

Classes = int | tuple[str, ...] | list[str] | None
"""A check's ``classes``: how many (or which) classes the model is built for; None for an unconditional model."""


def built_model(registry: Registry, name: str, options: dict[str, Any] | None, data_shape: tuple[int, ...],
           classes: Classes = None) -> ModelBundle:
    conditions = {} if classes is None else {"label": Condition(classes=class_names(classes))}
    bundle = registry.create("model", name, data_shape=tuple(data_shape), conditions=conditions, **(options or {}))
    assert isinstance(bundle, ModelBundle), f"model {name!r}: the factory should return a ModelBundle"
    assert bundle.sampling_network in bundle.networks, (
        f"model {name!r}: sampling_network {bundle.sampling_network!r} is not one of {sorted(bundle.networks)}")
    if classes is not None:
        assert "label" in bundle.conditions, (
            f"model {name!r}: built for data with {len(conditions['label'].classes)} classes, its ModelBundle "
            f"takes no label (conditions={bundle.conditions!r}); read the factory's context.conditions")
        wake(bundle)
    return bundle


def wake(bundle: ModelBundle) -> None:
    """Give weights initialised to zero small random values, so that what a label changes can show.

    A denoiser's last layer usually starts at zero (every prediction zero, whatever the label);
    a trained network's would not be.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for network in bundle.networks.values():
            for parameter in network.parameters():
                if parameter.dim() > 0 and not bool(parameter.any()):
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def differ(first: Any, second: Any) -> bool:
    """Whether two tensors (or arrays) differ by more than float32 rounding: by 1e-4 of the larger's norm.

    Closeness element by element would call a label effect of 1e-7 a difference, or not, depending
    on the CPU's vector instructions; a network whose labels change that little ignores them.
    """
    import numpy as np

    first, second = (np.asarray(value.detach().double().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
                     for value in (first, second))
    return float(np.linalg.norm(first - second)) > 1e-4 * max(float(np.linalg.norm(first)),
                                                               float(np.linalg.norm(second)), 1e-30)


def class_names(classes: int | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = tuple(f"class-{index}" for index in range(classes)) if isinstance(classes, int) else tuple(classes)
    if len(names) < 2:
        raise ValueError("give at least two classes to check a conditional component")
    return names


def labels_for(bundle: ModelBundle, batch: int) -> list[dict[str, Any]]:
    """Two label sets for ``batch`` samples that differ in every sample (two empty ones for no label)."""
    import torch

    label = bundle.conditions.get("label")
    if label is None:
        return [{}, {}]
    first = torch.arange(batch) % label.count
    return [{"label": first}, {"label": (first + 1) % label.count}]


def sample_with(sampler: Any, network: Any, noise: Any, labels: dict[str, Any], **options: Any) -> Any:
    return sampler.sample(network, noise, conditions=labels, **options) if labels else \
        sampler.sample(network, noise, **options)


def conditions_for(loss: Any, labels: dict[str, Any]) -> dict[str, Any]:
    return {"conditions": labels} if labels or accepts(loss.compute, "conditions") else {}


def check_gradients_follow_labels(loss: Any, phase: Any, data: Any, bundle: ModelBundle, context: dict[str, Any],
                                   labels: list[dict[str, Any]], where: str) -> None:
    """The phase's gradients, from the same batch and random draws, differ between two label sets."""
    import torch

    gradients = []
    for chosen in labels:
        for network in bundle.networks.values():
            network.zero_grad(set_to_none=True)
        with torch.random.fork_rng(devices=[]):
            value, _ = loss.compute(phase, data, bundle, 0, **context, conditions=chosen)
        value.backward()
        gradients.append(torch.cat([p.grad.flatten() for name in phase.trains
                                    for p in bundle.networks[name].parameters() if p.grad is not None]))
    assert differ(*gradients), f"{where}: the gradients are the same for other labels; use the conditions"


def sample_checked(item: Any, conditions: dict[str, Condition], where: str) -> Any:
    """The sample of a dataset item, after checking that it carries exactly the declared conditions."""
    from collections.abc import Mapping

    if not conditions:
        assert not isinstance(item, Mapping | tuple | list), (
            f"{where}: a {type(item).__name__}, where a dataset that declares no conditions gives the sample tensor; "
            "declare what the items carry in DatasetInfo.conditions")
        return item
    assert isinstance(item, Mapping) and set(item) == {SAMPLE_KEY, *conditions}, (
        f"{where}: expected a mapping with keys {sorted({SAMPLE_KEY, *conditions})}, got "
        f"{sorted(item) if isinstance(item, Mapping) else type(item).__name__}")
    for name, condition in conditions.items():
        value = item[name]
        assert isinstance(value, int) or getattr(value, "dim", lambda: 1)() == 0, (
            f"{where}: {name} should be one integer, got {value!r}")
        assert 0 <= int(value) < condition.count, (
            f"{where}: {name} {int(value)} is outside the {condition.count} declared classes")
    return item[SAMPLE_KEY]


def create_as_a_run_does(registry: Registry, kind: str, name: str, options: dict[str, Any] | None,
            shared: dict[str, Any], model: str) -> Any:
    """Build a loss or sampler with the options the model fixes for it, as a run does (and refuses as a run does)."""
    from aigc_kit.core.components import with_shared_options
    from aigc_kit.core.errors import UserError

    try:
        validated = with_shared_options(registry, kind, name, options or {}, shared, model=model, field=kind)
    except UserError as error:
        raise AssertionError(f"a run would refuse this: {error}") from None
    return registry.build(kind, name, validated, field=kind)


def check_tensor(value: Any, shape: tuple[int, ...], where: str) -> None:
    import torch

    assert isinstance(value, torch.Tensor), f"{where}: expected a torch.Tensor, got {type(value).__name__}"
    assert tuple(value.shape) == shape, f"{where}: expected shape {shape}, got {tuple(value.shape)}"
    assert value.dtype == torch.float32, f"{where}: expected float32, got {value.dtype}"
    assert bool(torch.isfinite(value).all()), f"{where}: not all values are finite"
