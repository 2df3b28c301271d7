"""``aigc-kit eval``: metrics of a trained run's samples, computed outside training.

:func:`evaluate_run` draws samples from a run directory or checkpoint with its
sampler (the EMA network when there is one); the ONNX exporter's side
(:mod:`aigc_kit.exporters.evaluate`) draws them from an exported model with
onnxruntime and calls :func:`evaluate` the same way, so the two are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError
from .plugin_api import accepts
from .registry import Registry


def build_metrics(registry: Registry, requested: list[tuple[str, dict[str, Any]]], data: Any) -> dict[str, Any]:
    """Each requested metric ``(name, options)``, built for ``data`` (a DatasetBundle)."""
    if not requested:
        raise UserError("no metric to compute", field="--metric", expected=", ".join(registry.names("metric")))
    metrics = {}
    for name, options in requested:
        metrics[name] = registry.build("metric", name,
                                       registry.options("metric", name, options, field_prefix=f"--option {name}"),
                                       field=f"--metric {name}", data=data)
    return metrics


def evaluate(metrics: dict[str, Any], draw: Callable[[int], Any], count: int, batch_size: int = 500,
             progress: Callable[[int], Any] | None = None) -> dict[str, float]:
    """Feed ``count`` samples from ``draw(n)`` to every metric, in batches; the values as ``metric/key``.

    ``draw(n)`` returns samples, or ``(samples, conditions)`` for a conditional
    model: a metric whose ``update`` takes ``conditions`` gets them (class
    agreement needs the label each sample was drawn for).
    ``progress(n)`` is told of each batch of ``n`` samples done.
    """
    takes = {name: accepts(metric.update, "conditions") for name, metric in metrics.items()}
    remaining = count
    while remaining > 0:
        drawn = draw(min(batch_size, remaining))
        samples, conditions = drawn if isinstance(drawn, tuple) else (drawn, {})
        for name, metric in metrics.items():
            if takes[name]:
                metric.update(samples, conditions=conditions)
            else:
                metric.update(samples)
        remaining -= samples.shape[0]
        if progress is not None:
            progress(samples.shape[0])
    return {f"{name}/{key}": float(value) for name, metric in metrics.items() for key, value in metric.compute().items()}


def evaluate_run(source: str | Path, registry: Registry, requested: list[tuple[str, dict[str, Any]]], count: int,
                 *, seed: int = 0, batch_size: int = 500, guidance: float | None = None,
                 progress: Callable[[int], Any] | None = None, sampler: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Metrics of ``count`` samples of a run directory or checkpoint (with ``guidance``, a conditional diffusion
    sampler's guidance scale instead of the run's; with ``sampler``, another sampler or other options, as
    :func:`aigc_kit.core.trained.switched_sampler` reads them); a JSON-able report."""
    import torch

    from . import conditions
    from .device import eval_mode
    from .trained import load_trained

    trained = load_trained(source, registry, sampler=sampler)
    components = trained.components
    metrics = build_metrics(registry, requested, components.data)
    generator = torch.Generator().manual_seed(seed)
    noise_shape = tuple(components.model.noise_shape)
    options: dict[str, Any] = {}
    if guidance is not None:
        from .guidance import check_guidance

        check_guidance(guidance, bool(components.model.conditions) and accepts(components.sampler.sample,
                                                                                  "guidance_scale"))
        options["guidance_scale"] = guidance

    def draw(n: int) -> Any:
        with torch.no_grad(), eval_mode(trained.network):
            noise = components.sampler.noise(n, noise_shape, generator=generator)
            drawn = conditions.draw(components.model.conditions, n, generator)
            samples = conditions.sample(components.sampler, trained.network, noise, drawn, generator=generator,
                                        **options)
            return samples.float(), drawn

    values = evaluate(metrics, draw, count, batch_size, progress)
    return {"source": str(source), "checkpoint": str(trained.checkpoint), "samples": count, "seed": seed,
            "sampler": trained.loaded.resolved()["sampler"],
            **({"guidance_scale": guidance} if guidance is not None else {}), "values": values}

