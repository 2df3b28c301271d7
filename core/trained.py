"""A trained run read back: its components with the checkpoint's weights, for evaluation and export.

:func:`export` is what ``aigc-kit export`` calls; :func:`load_trained` what ``aigc-kit eval`` does first.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rundir
from .components import build_components, check_components
from .config import LoadedConfig, parse_config
from .errors import UserError
from .registry import Registry


def export_network(registry: Registry, loaded: LoadedConfig, network: Any, components: Any, path: Path) -> Any:
    from .plugin_api import ExportRequest

    export_section = loaded.config.export
    exporter = registry.build("exporter", export_section.format, loaded.options["export"], field="export")
    request = ExportRequest(
        network=network,
        sampler=components.sampler,
        noise_shape=tuple(components.model.noise_shape),
        sample_shape=tuple(components.data.info.shape),
        value_range=tuple(components.data.info.value_range),
        path=str(path),
        metadata=provenance(registry, loaded),
        conditions=dict(components.model.conditions),
        model_options=loaded.options["model"].model_dump(mode="json"),
    )
    return exporter.export(request)


def provenance(registry: Registry, loaded: LoadedConfig) -> dict[str, str]:
    """Where an exported model comes from: producer, each component's plugin and version, the config's hash."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        producer_version = version("aigc-kit")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled checkout
        producer_version = "unknown"
    components = {}
    for section, kind in (("data", "dataset"), ("model", "model"), ("loss", "loss"), ("sampler", "sampler")):
        name = getattr(loaded.config, section).name
        spec = registry.spec(kind, name)
        record = registry.records.get(spec.plugin)
        components[section] = {"name": spec.name, "plugin": spec.plugin,
                               "distribution": record.distribution if record else None,
                               "version": record.version if record else None}
    resolved = loaded.resolved()
    training = {key: value for key, value in resolved.items() if key not in ("export", "output")}
    return {
        "aigc_kit.producer": "aigc-kit",
        "aigc_kit.producer_version": producer_version,
        "aigc_kit.model": loaded.config.model.name,
        "aigc_kit.sampler": loaded.config.sampler.name,
        "aigc_kit.components": json.dumps(components),
        "aigc_kit.sampler_options": json.dumps(resolved["sampler"]),
        "aigc_kit.data": json.dumps(resolved["data"]),
        "aigc_kit.config_sha256": hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest(),
    }


@dataclass
class TrainedRun:
    """A run directory's or checkpoint's components, with the sampling network's trained weights loaded."""

    loaded: LoadedConfig
    components: Any
    network: Any
    checkpoint: Path


def load_trained(source: str | Path, registry: Registry, *, changes: dict[str, Any] | None = None,
                 sampler: dict[str, Any] | None = None) -> TrainedRun:
    """Rebuild a run's components from its checkpoint's config and load the sampling network's weights.

    ``source`` is a run directory (its latest checkpoint) or a checkpoint
    folder. The EMA weights are used when the checkpoint has them.
    ``changes`` replace top-level config sections (``export``, for example);
    ``sampler`` samples with another sampler or other options (see :func:`switched_sampler`).
    """
    from .checkpoint import load_checkpoint

    checkpoint = load_checkpoint(source)
    if not checkpoint.config:
        raise UserError("the checkpoint has no config.yaml", file=str(checkpoint.path))
    data = {**checkpoint.config, **(changes or {})}
    if sampler:
        data["sampler"] = switched_sampler(checkpoint.config.get("sampler") or {}, sampler, registry)
    data["output"] = {**data.get("output", {}), "overwrite": True}
    try:
        loaded = parse_config(data, registry, source=checkpoint.path / "config.yaml", trusted=False)
    except UserError as error:
        if sampler and (error.field or "").startswith("sampler"):
            error.file = None  # the sampler's options came from the caller, not from the checkpoint's config
        raise
    components = build_components(loaded, registry)
    if sampler:  # another sampler than the run's: it must fit the model as a run's would
        check_components(components, loaded.config)
    name = components.model.sampling_network
    network = components.model.networks[name]
    weights = checkpoint.ema.get(name) or checkpoint.networks.get(name)
    if weights is None:
        raise UserError(f"the checkpoint holds no weights for the network {name!r}", file=str(checkpoint.path))
    try:
        network.load_state_dict(weights)
    except RuntimeError as exc:
        raise UserError(
            f"the weights do not fit the model the config builds: {str(exc).splitlines()[0]}",
            file=str(checkpoint.path),
        ) from None
    network.eval()
    return TrainedRun(loaded=loaded, components=components, network=network, checkpoint=checkpoint.path)


def switched_sampler(current: dict[str, Any], requested: dict[str, Any], registry: Registry) -> dict[str, Any]:
    """The sampler section for ``requested`` (``name`` and options) in place of a run's ``current`` one.

    The same sampler: its options, with the requested ones over them. Another
    sampler: the requested options, and those of the run's that the new one
    also has (its guidance scale, clipping, spacing), except ``steps``, whose
    meaning differs from one sampler to another. The schedule comes from the
    model, as in the run.
    """
    name = requested.get("name") or current.get("name")
    options = {key: value for key, value in requested.items() if key != "name"}
    if name == current.get("name"):
        return {**current, **options}
    fields = registry.spec("sampler", name).options.model_fields  # an unknown name: a UserError naming it
    kept = {key: value for key, value in current.items() if key in fields and key not in ("name", "steps")}
    return {"name": name, **kept, **options}


def export(source: str | Path, registry: Registry, *, format: str = "onnx", out: str | Path,
           options: dict[str, Any] | None = None, sampler: dict[str, Any] | None = None) -> Any:
    """Export the sampling network of a run directory or checkpoint (its EMA weights when it has them),
    with the run's sampler or the one ``sampler`` asks for (:func:`switched_sampler`)."""
    import torch

    rundir.check_output_file(Path(out), "--out")

    from .device import eval_mode

    try:
        trained = load_trained(source, registry, sampler=sampler,
                               changes={"export": {"format": format, "file": Path(out).name, **(options or {})}})
    except UserError as error:
        if (error.field or "").startswith("export"):
            error.file = None  # the export options came from the caller, not from the checkpoint's config
        raise
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), eval_mode(trained.network):
        return export_network(registry, trained.loaded, trained.network, trained.components, Path(out))
