"""`run`, `resume`, `validate` and `plugins`: training, and what a run is built from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .group import OVERRIDE, State, cli, echo_export, interrupted


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@OVERRIDE
@click.option("--output", type=click.Path(file_okay=False, path_type=Path),
              help="The run directory (default: output.dir/output.name from the config).")
@click.option("--resume", is_flag=True, help="Continue the run in the run directory from its latest checkpoint.")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N data-parallel processes on this machine (launches torchrun).")
@click.pass_obj
def run(state: State, config: Path, overrides: tuple[str, ...], output: Path | None, resume: bool,
        nproc: int) -> None:
    """Train as CONFIG says; write samples, checkpoints, metrics and (if asked) an ONNX model.

    \b
    On several GPUs or machines, start it with torchrun, for example
    torchrun --nproc_per_node=4 -m aigc_kit.cli run CONFIG
    (`--nproc 4` does the same on one machine).
    """
    if nproc > 1:
        _launch(state, nproc, ["run", str(config), *_repeat("--set", overrides),
                               *(["--output", str(output)] if output else []), *(["--resume"] if resume else [])])
    from aigc_kit.core.config import load_config
    from aigc_kit.core.loop import Interrupted
    from aigc_kit.core.run import run_directory, run_loaded

    loaded = load_config(config, state.registry(), list(overrides))
    try:
        outcome = run_loaded(loaded, state.registry(), output=output, resume=resume, say=click.echo)
    except Interrupted as exc:
        interrupted(exc, run_directory(loaded, output))
    _echo_outcome(outcome)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@OVERRIDE
@click.pass_obj
def resume(state: State, run_dir: Path, overrides: tuple[str, ...]) -> None:
    """Continue the run in RUN_DIR from its latest checkpoint, with its own config (e.g. --set train.steps=N)."""
    from aigc_kit.core.loop import Interrupted
    from aigc_kit.core.run import resume as resume_run

    try:
        outcome = resume_run(run_dir, state.registry(), overrides=list(overrides), say=click.echo)
    except Interrupted as exc:
        interrupted(exc, run_dir)
    _echo_outcome(outcome)


def _repeat(option: str, values: tuple[str, ...]) -> list[str]:
    return [part for value in values for part in (option, value)]


def _launch(state: State, nproc: int, command: list[str]) -> None:
    """Run ``aigc-kit COMMAND`` in ``nproc`` processes with torchrun, and exit with its status.

    torchrun runs in a session of its own, so that a Ctrl-C in the terminal
    reaches the processes once, through this launcher: SIGINT and SIGTERM sent
    here are passed on to torchrun, which passes them to every process; each
    finishes its step and checkpoints, and this launcher waits for them all
    before it exits (with 128 + the signal), leaving no process behind.
    """
    import os
    import signal
    import subprocess

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.UsageError("--nproc cannot be used inside a torchrun job (it already has processes)")
    options = [*(["--debug"] if state.debug else []), *_repeat("--plugin", state.plugins),
               *(["--strict-plugins"] if state.strict else [])]
    launcher = [sys.executable, "-m", "aigc_kit.cli.torchrun", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "aigc_kit.cli", *options, *command]
    job = subprocess.Popen(launcher, start_new_session=True)
    received: list[int] = []

    def forward(number: int, frame: object) -> None:
        received.append(number)
        job.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = job.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    raise click.exceptions.Exit(128 + received[0] if received else status)


def _echo_outcome(outcome: Any) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":  # in a torchrun job, process 0 reports
        _leave_process_group_job()
    click.echo(f"run directory: {outcome.run_dir}")
    _report_training(outcome)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _leave_process_group_job()


def _leave_process_group_job() -> None:
    """End a torchrun process once its run is complete and its files are closed, skipping interpreter teardown.

    After the process group is destroyed, gloo's and autograd's native threads can still be
    joinable when the interpreter's C++ destructors run, which aborts the process ("terminate
    called without an active exception") now and then, turning a finished run into a failed job.
    """
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _report_training(outcome: Any) -> None:
    result = outcome.train
    trained = result.steps - result.resumed_from
    rate = trained / result.seconds if result.seconds else float("nan")
    resumed = f", resumed after step {result.resumed_from}" if result.resumed_from else ""
    click.echo(f"  trained {trained} steps in {result.seconds:.1f} s ({rate:.2f} steps/s{resumed})")
    if result.stop_reason:
        click.echo(f"  stopped early, after step {result.steps}: {result.stop_reason}")
    if result.samples:
        click.echo(f"  last samples: {result.samples[-1]}")
    if result.checkpoint:
        click.echo(f"  checkpoint: {result.checkpoint}")
    if outcome.export:
        echo_export(outcome.export)


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@OVERRIDE
@click.pass_obj
def validate(state: State, config: Path, overrides: tuple[str, ...]) -> None:
    """Check CONFIG, plugin options included, by building its components without training."""
    from aigc_kit.core.device import check_precision, resolve_precision, select_device
    from aigc_kit.core.run import check

    loaded, conditions = check(config, state.registry(), list(overrides))
    c = loaded.config
    click.echo(f"{config}: valid (data {c.data.name}, model {c.model.name}, loss {c.loss.name}, "
               f"sampler {c.sampler.name}, {c.train.steps} steps)")
    label = conditions.get("label")
    if label is not None:
        click.echo(f"  class-conditional on {label.count} classes: {', '.join(label.classes[:10])}"
                   + (", ..." if label.count > 10 else ""))
    device = select_device(c.device)
    precision = resolve_precision(c.train.precision, device)
    check_precision(precision, device)
    click.echo(f"  here it would train on {device} in {precision.describe()}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: plugins and every component with its options.")
@click.option("--trace", is_flag=True,
              help="Print each hook call to stderr: which plugin answered and what it returned "
                   "(also AIGC_KIT_TRACE_PLUGINS=1, for any command).")
@click.pass_obj
def plugins(state: State, as_json: bool, trace: bool) -> None:
    """List plugins: distribution, version, source, hooks, components and status."""
    from aigc_kit.core.plugin_api import KINDS

    state.trace = state.trace or trace
    registry = state.registry()
    records = registry.plugins()
    if as_json:
        components = {kind: [registry.describe(kind, name) for name in registry.names(kind)] for kind in KINDS}
        click.echo(json.dumps({"plugins": [r.as_dict() for r in records], "components": components},
                              indent=2, default=str))
        return
    for record in records:
        where = f"{record.distribution} {record.version}" if record.distribution else record.location
        click.echo(f"{record.name}  [{record.status}]  {record.source}: {where}")
        if record.components:
            click.echo(f"    provides: {', '.join(record.components)}")
        if record.hooks:
            click.echo(f"    hooks: {', '.join(record.hooks)}")
        if record.error:
            click.echo(f"    error: {record.error}")
        for warning in record.warnings:
            click.echo(f"    warning: {warning}")
    for kind in KINDS:
        for name in registry.names(kind):
            spec = registry.spec(kind, name)
            if name != spec.name or sum(s.name == spec.name for s in registry.specs(kind)) > 1:
                click.echo(f"note: the {kind} name {spec.name!r} is offered by several plugins; use {name!r}")


