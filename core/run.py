"""A run from start to finish: config -> components -> training -> run directory -> export.

:func:`run` is what ``aigc-kit run`` calls; :func:`export` is what ``aigc-kit export`` calls.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import rundir
from .config import LoadedConfig, load_config, parse_config
from .errors import UserError
from .files import disk_full_is_a_user_error, write_text
from .registry import Registry

if TYPE_CHECKING:  # the device module imports torch, which this module leaves to the functions that need it
    from .device import PrecisionChoice


@dataclass
class RunOutcome:
    """What :func:`run` produced."""

    run_dir: Path
    train: Any
    export: Any | None


def run_directory(loaded: LoadedConfig, output: str | Path | None) -> Path:
    """The run directory: ``--output`` if given, else ``output.dir/output.name`` (name defaults to the file's)."""
    if output is not None:
        return Path(output)
    config = loaded.config
    name = config.output.name or (loaded.source.stem if loaded.source else "run")
    return Path(config.output.dir) / name


def build_components(loaded: LoadedConfig, registry: Registry, *, model_on_meta: bool = False) -> Any:
    """Build the dataset, model, loss and sampler a config names.

    ``model_on_meta`` builds the networks on torch's meta device: shapes and
    structure without memory or initialisation cost, enough to check a config.
    """
    import torch

    from .loop import Components

    config = loaded.config
    data = registry.build("dataset", config.data.name, loaded.options["data"], field="data")
    with torch.device("meta") if model_on_meta else contextlib.nullcontext():
        model = registry.build("model", config.model.name, loaded.options["model"], field="model",
                               data_shape=data.info.shape, conditions=data.info.conditions)
    for section in ("loss", "sampler"):
        loaded.options[section] = _with_shared_options(loaded, registry, section, model.shared_options)
    loss = registry.build("loss", config.loss.name, loaded.options["loss"], field="loss")
    sampler = registry.build("sampler", config.sampler.name, loaded.options["sampler"], field="sampler")
    metrics = {
        section.name: registry.build("metric", section.name, options, field=f"train.eval.metrics[{index}]", data=data)
        for index, (section, options) in enumerate(zip(config.train.eval.metrics, loaded.metric_options, strict=True))
    }
    return Components(data=data, model=model, loss=loss, sampler=sampler, metrics=metrics)


def _with_shared_options(loaded: LoadedConfig, registry: Registry, section: str, shared: dict[str, Any]) -> Any:
    """The section's options with the model's shared options filled in (see ``ModelBundle.shared_options``)."""
    options = loaded.options[section]
    if not shared:
        return options
    part = getattr(loaded.config, section)  # "loss" and "sampler" name components of their own kind
    missing = [key for key in shared if key not in type(options).model_fields]
    if missing:
        raise UserError(
            f"{section} {part.name!r} cannot be used with model {loaded.config.model.name!r}: the model fixes "
            f"{', '.join(missing)}, which this {section} does not take",
            field=f"{section}.name",
            hint=f"pick a {section} made for this model (see `aigc-kit plugins`)",
        )
    given = part.plugin_options()
    for key, value in shared.items():
        if key in given and getattr(options, key) != value:
            raise UserError(
                "the model fixes this option for its loss and sampler, to a different value",
                field=f"{section}.{key}",
                expected=value,
                given=given[key],
                hint="remove it here: the model's section sets it for both the loss and the sampler",
            )
    return registry.options(section, part.name, {**given, **shared}, field_prefix=section)


def check(config_path: str | Path, registry: Registry, overrides: list[str] | None = None
          ) -> tuple[LoadedConfig, dict[str, Any]]:
    """Validate a config and build its components, without training (``aigc-kit validate``); the config and the
    conditions its model takes (``{"label": Condition}``, empty for an unconditional model)."""
    from .loop import check_components

    loaded = load_config(config_path, registry, overrides)
    with _errors_about(loaded):
        components = build_components(loaded, registry, model_on_meta=True)
        check_components(components, loaded.config)
    return loaded, dict(components.model.conditions)


@contextlib.contextmanager
def _errors_about(loaded: LoadedConfig) -> Iterator[None]:
    """Name the config file in user errors raised while its components are built or trained."""
    try:
        yield
    except UserError as error:
        if loaded.source is not None and error.field is not None:
            error.with_file(str(loaded.source))
        raise


RESUMABLE_CHANGES = (
    "device", "output", "export", "train.precision", "train.process_timeout", "train.steps", "train.log_every",
    "train.sample_every", "train.sample_count",
    "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every", "train.eval", "train.progress",
    "train.data_workers", "train.nonfinite", "train.tensorboard",
)
"""Config fields a resumed run may change: they do not alter what the steps so far computed."""


def run(config_path: str | Path, registry: Registry, *, overrides: list[str] | None = None,
        output: str | Path | None = None, resume: bool = False, say: Callable[[str], None] | None = None,
        trusted: bool = True) -> RunOutcome:
    """Train as the config file says, write the run directory and export if the config asks.

    With ``resume``, continue the run in the run directory from its latest checkpoint.
    ``say`` receives the run's opening lines (device, precision and why), from process 0.
    ``trusted=False``: the config came with a run directory, and may not load plugins.
    """
    loaded = load_config(config_path, registry, overrides, trusted=trusted)
    return run_loaded(loaded, registry, output=output, resume=resume, say=say)


def resume(run_dir: str | Path, registry: Registry, *, overrides: list[str] | None = None,
           say: Callable[[str], None] | None = None) -> RunOutcome:
    """Continue the run in ``run_dir`` from its latest checkpoint, with its own config (``aigc-kit resume``)."""
    config_path = Path(run_dir) / "config.yaml"
    if not config_path.is_file():
        raise UserError("expected a run directory with a config.yaml", file=str(run_dir),
                        hint="pass the folder `aigc-kit run` wrote, e.g. runs/NAME")
    return run(config_path, registry, overrides=overrides, output=run_dir, resume=True, say=say, trusted=False)


def run_loaded(loaded: LoadedConfig, registry: Registry, *, output: str | Path | None = None,
               resume: bool = False, say: Callable[[str], None] | None = None) -> RunOutcome:
    """Train from an already validated config (see :func:`run`)."""
    with _errors_about(loaded):
        return _train(loaded, registry, output, resume, say or (lambda line: None))


def choose_precision(requested: str, device: Any, checkpoint: Any = None) -> PrecisionChoice:
    """The run's precision: what ``requested`` resolves to here, or, resuming with ``auto``, what the run trained in.

    A resumed ``auto`` run keeps its checkpoint's precision (so that it goes on as
    it started) unless this device cannot run it (fp16 saved, and no GPU here).
    """
    from .device import PrecisionChoice, resolve_precision

    choice = resolve_precision(requested, device)
    saved = ((checkpoint.config.get("train") or {}).get("precision") if checkpoint is not None else None)
    if requested != "auto" or saved not in ("fp32", "bf16", "fp16") or saved == choice.precision:
        return choice
    if saved == "fp16" and device.type not in ("cuda", "mps"):
        return PrecisionChoice(choice.precision, "auto", f"{choice.reason} (the run trained in fp16 until now, "
                                                         f"which needs a GPU)")
    return PrecisionChoice(saved, "auto", f"the run trained in {saved} until now (auto alone would pick "
                                          f"{choice.precision} here: {choice.reason})")


def _train(loaded: LoadedConfig, registry: Registry, output: str | Path | None, resume: bool,
           say: Callable[[str], None]) -> RunOutcome:
    with contextlib.ExitStack() as held:  # the run directory's lock, in process 0, until the export is written
        return _train_holding(loaded, registry, output, resume, say, held)


def _train_holding(loaded: LoadedConfig, registry: Registry, output: str | Path | None, resume: bool,
                   say: Callable[[str], None], held: contextlib.ExitStack) -> RunOutcome:
    from . import distributed
    from .device import check_precision, seed_everything, select_device
    from .loop import Trainer

    config = loaded.config
    run_dir = run_directory(loaded, output)
    export_file = config.export.file if config.export else None
    device = select_device(config.device)
    processes = distributed.from_environment(device, config.train.process_timeout)
    device = processes.device(device)
    if device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = config.train.cudnn_benchmark

    def open_run_directory() -> tuple[Any, str | None]:
        rundir.check_writable(run_dir)
        held.enter_context(rundir.hold(run_dir))
        return _open_run_directory(run_dir, resume, config.output.overwrite)

    # Only process 0 reads the run directory: the other nodes of a job need no shared filesystem.
    checkpoint, opening = distributed.from_process_zero(open_run_directory, processes)
    precision = choose_precision(config.train.precision, device, checkpoint)
    check_precision(precision, device)
    config.train.precision = precision.precision  # the resolved config (and so every resume) keeps the choice
    seed_everything(config.seed)  # the same initial weights in every process
    components = build_components(loaded, registry)
    resolved = loaded.resolved()
    if checkpoint is not None:
        check_resumable(checkpoint.config, resolved, checkpoint.path)
        if checkpoint.step >= config.train.steps:
            raise UserError(f"the run already reached step {checkpoint.step}", field="train.steps",
                            given=config.train.steps, hint="raise train.steps to train further")
    trainer = Trainer(components, config, resolved, run_dir, device, processes)  # checks; writes nothing
    if processes.rank:  # each process draws its own noise from here on
        seed_everything(config.seed + 1_000_003 * processes.rank)
    if processes.is_main:
        if checkpoint is not None:
            _forget_after(run_dir / "metrics.jsonl", checkpoint.step)
        else:
            rundir.clear_run(run_dir, export_file)  # an empty folder, or overwrite, or a resume with nothing yet
        write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        described = environment(registry, device, processes)
        described["precision"] = precision.as_dict()
        write_text(run_dir / "environment.json", json.dumps(described, indent=2))
        steps = f"steps {checkpoint.step + 1}-{config.train.steps}" if checkpoint is not None else \
            f"{config.train.steps} steps"
        processes_note = f", {processes.world_size} processes" if processes.enabled else ""
        if opening:
            say(opening)
        say(f"training {steps} on {device}{processes_note}; precision {precision.describe()}")
    full_disk = f"the last complete checkpoint is intact: free some space, then aigc-kit resume {run_dir}"
    try:
        with disk_full_is_a_user_error(run_dir, full_disk):
            result = trainer.fit(resume=checkpoint)
    finally:
        distributed.shutdown(processes)
    report = None
    if export_file is not None and processes.is_main:
        # From the checkpoint just written, as `aigc-kit export` does: one path, on the CPU, in fp32,
        # whatever device and precision the run trained in.
        with disk_full_is_a_user_error(run_dir, f"free some space, then aigc-kit export {run_dir} --out FILE"):
            report = export(result.checkpoint, registry, format=config.export.format, out=run_dir / export_file,
                            options=config.export.plugin_options())
    return RunOutcome(run_dir=run_dir, train=result, export=report)


def _open_run_directory(run_dir: Path, resume: bool, overwrite: bool) -> tuple[Any, str | None]:
    """The checkpoint to resume from (None to start), and what to tell the user about that choice.

    Resuming a run with no checkpoint yet (stopped while it started) starts it
    from step 1, so that a job scheduler may rerun the same command after any stop.
    """
    from .checkpoint import check_resumable_state, load_checkpoint

    has_run = (run_dir / "checkpoints" / "latest").exists()
    if has_run and not resume and not overwrite:
        raise UserError(
            "the run directory already holds a run",
            file=str(run_dir),
            hint="continue it with --resume, choose another with --output DIR, "
                 "or replace it with --set output.overwrite=true",
        )
    if resume and not has_run:
        return None, f"nothing to resume in {run_dir} (no checkpoint yet): starting the run from step 1"
    if not resume:
        return None, None
    checkpoint = load_checkpoint(run_dir)
    check_resumable_state(checkpoint)
    return checkpoint, None


def environment(registry: Registry, device: Any, processes: Any) -> dict[str, Any]:
    """Where a run trains: versions, device, processes and threads, CPU features, and the plugins loaded."""
    import platform

    import torch

    from .registry import host_version

    described = {
        "aigc-kit": host_version(), "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "machine": platform.machine(), "device": str(device),
        "processes": processes.world_size, "threads": torch.get_num_threads(),
    }
    if getattr(device, "type", None) == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    if getattr(device, "type", None) == "cpu":
        from .device import native_bf16_cpu

        native, why = native_bf16_cpu()
        described["cpu"] = {"capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
                            "bf16_reason": why}
    described["plugins"] = {record.name: f"{record.distribution or record.source} {record.version or ''}".strip()
                            for record in registry.plugins() if record.status == "loaded"}
    return described


def check_resumable(saved: dict[str, Any], resolved: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to resume with a config that changes what the run computes; name every difference."""
    differences = [
        f"{path}: {before!r} -> {after!r}"
        for path, before, after in _differences(saved, resolved)
        if not any(path == allowed or path.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES)
    ]
    if differences:
        raise UserError(
            "the config differs from the checkpoint's in what the run computes: " + "; ".join(differences),
            file=str(checkpoint / "config.yaml"),
            hint="resume with the run's own config (aigc-kit resume RUN_DIR), or start a new run; "
                 "only steps, intervals, logging, workers, device, output and export may change",
        )


def _differences(before: Any, after: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after), key=str):
            found += _differences(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
        return found
    return [] if before == after else [(path, before, after)]


def _forget_after(metrics: Path, step: int) -> None:
    """Drop the metrics.jsonl records written after ``step`` (a resumed run writes them again)."""
    import json

    if not metrics.is_file():
        return
    kept = []
    for line in metrics.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # a line torn by a kill mid-write
            continue
    write_text(metrics, "".join(line + "\n" for line in kept))


def _export_network(registry: Registry, loaded: LoadedConfig, network: Any, components: Any, path: Path) -> Any:
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
        from .loop import check_components

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

    from .device import evaluating

    try:
        trained = load_trained(source, registry, sampler=sampler,
                               changes={"export": {"format": format, "file": Path(out).name, **(options or {})}})
    except UserError as error:
        if (error.field or "").startswith("export"):
            error.file = None  # the export options came from the caller, not from the checkpoint's config
        raise
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), evaluating(trained.network):
        return _export_network(registry, trained.loaded, trained.network, trained.components, Path(out))
