"""A run from start to finish: config -> components -> training -> run directory -> export, and its resumption.

:func:`run` is what ``aigc-kit run`` calls, :func:`resume` what ``aigc-kit resume`` calls.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import rundir
from .components import build_components, check_components
from .config import LoadedConfig, load_config
from .errors import UserError
from .files import disk_full_is_a_user_error, write_text
from .registry import Registry
from .trained import export

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


def check(config_path: str | Path, registry: Registry, overrides: list[str] | None = None
          ) -> tuple[LoadedConfig, dict[str, Any]]:
    """Validate a config and build its components, without training (``aigc-kit validate``); the config and the
    conditions its model takes (``{"label": Condition}``, empty for an unconditional model)."""
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
    "train.data_workers", "train.nonfinite", "train.tensorboard", "callbacks",
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
    from .device import SEED_STRIDE, check_precision, seed_everything, select_device
    from .loop import Trainer

    config = loaded.config
    run_dir = run_directory(loaded, output)
    export_file = config.export.file if config.export else None
    device = select_device(config.device)
    place = distributed.from_environment(device, config.train.process_timeout)
    device = place.device(device)
    if device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = config.train.cudnn_benchmark

    def open_run_directory() -> tuple[Any, str | None]:
        rundir.check_writable(run_dir)
        held.enter_context(rundir.hold(run_dir))
        return _open_run_directory(run_dir, resume, config.output.overwrite)

    # Only process 0 reads the run directory: the other nodes of a job need no shared filesystem.
    checkpoint, opening = distributed.from_process_zero(open_run_directory, place)
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
    described = environment(registry, device, place)
    described["precision"] = precision.as_dict()
    trainer = Trainer(components, config, resolved, run_dir, device, place, described)  # checks; writes nothing
    if place.rank:  # each process draws its own noise from here on
        seed_everything(config.seed + SEED_STRIDE * place.rank)
    if place.is_main:
        if checkpoint is not None:
            _forget_after(run_dir / "metrics.jsonl", checkpoint.step)
        else:
            rundir.clear_run(run_dir, export_file)  # an empty folder, or overwrite, or a resume with nothing yet
        write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        write_text(run_dir / "environment.json", json.dumps(described, indent=2))
        steps = f"steps {checkpoint.step + 1}-{config.train.steps}" if checkpoint is not None else \
            f"{config.train.steps} steps"
        processes_note = f", {place.world_size} processes" if place.enabled else ""
        if opening:
            say(opening)
        say(f"training {steps} on {device}{processes_note}; precision {precision.describe()}")
        for name, callback in components.callbacks:  # a config that came with a run names its trackers too: say where
            where = callback.logs_to(run_dir) if callable(getattr(callback, "logs_to", None)) else ""
            if where:
                say(f"{name} logs to {where}")

    def export_run(trained: Path) -> tuple[Path, Any]:
        # From the checkpoint just written, as `aigc-kit export` does: one path, on the CPU, in fp32,
        # whatever device and precision the run trained in.
        out = run_dir / export_file
        with disk_full_is_a_user_error(run_dir, f"free some space, then aigc-kit export {run_dir} --out FILE"):
            return out, export(trained, registry, format=config.export.format, out=out,
                               options=config.export.plugin_options())

    full_disk = f"the last complete checkpoint is intact: free some space, then aigc-kit resume {run_dir}"
    try:
        with disk_full_is_a_user_error(run_dir, full_disk):
            result = trainer.fit(resume=checkpoint, export=export_run if export_file is not None else None)
    finally:
        distributed.shutdown(place)
    report = result.export
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


def environment(registry: Registry, device: Any, place: Any) -> dict[str, Any]:
    """Where a run trains: versions, device, processes and threads, CPU features, and the plugins loaded."""
    import platform

    import torch

    from .compatibility import host_version

    described = {
        "aigc-kit": host_version(), "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(), "machine": platform.machine(), "device": str(device),
        "processes": place.world_size, "threads": torch.get_num_threads(),
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
