"""The `aigc-kit` group: global options, the state commands share, and one message per failure."""

from __future__ import annotations

import json
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

USER_ERROR = 2
FAILURE = 1


@dataclass
class State:
    """Options given before the command, and the registry they describe (built on first use)."""

    debug: bool = False
    plugins: tuple[str, ...] = ()
    strict: bool = False
    trace: bool = False
    _registry: Any = field(default=None, repr=False)

    def registry(self) -> Any:
        if self._registry is None:
            from aigc_kit.core.errors import UserError
            from aigc_kit.core.registry import Registry

            trace = (lambda line: click.echo(f"trace: {line}", err=True)) if self.trace else None
            registry = Registry(strict=True if self.strict else None, trace=trace)
            for reference in self.plugins:
                try:
                    registry.load_local(reference, base_dir=Path.cwd())
                except UserError as error:
                    error.field = error.field or "--plugin"
                    raise
            self._registry = registry
        return self._registry


class Group(click.Group):
    """Turns known failures into one message and an exit status; tracebacks only with ``--debug``."""

    def invoke(self, ctx: click.Context) -> Any:
        from aigc_kit.core.interrupt import Terminated, terminating, termination_raises

        try:
            with warnings.catch_warnings(), termination_raises():
                if not ctx.params.get("debug"):
                    warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Terminated:
            click.echo("terminated", err=True)
            ctx.exit(128 + Terminated.signal_number)
        except Exception as exc:  # noqa: BLE001 - every exception ends here: the user sees one message
            if terminating():  # the signal came first; what failed after it is its doing
                click.echo("terminated", err=True)
                ctx.exit(128 + Terminated.signal_number)
            debug = bool(ctx.params.get("debug"))
            status, message = _describe_failure(exc)
            if debug:
                traceback.print_exc()
            click.echo(message, err=True)
            if status == FAILURE and not debug and not _is_known(exc):
                click.echo("(run with --debug to see the traceback)", err=True)
            ctx.exit(status)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one line each (``--debug`` shows Python's own format, with where they came from)."""
    click.echo(f"warning: {message}", err=True)


def interrupted(exc: BaseException, run_dir: Path) -> None:
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint: say how to resume, exit 128 + signal."""
    import os

    from aigc_kit.core.interrupt import exit_status

    if os.environ.get("RANK", "0") == "0":  # in a torchrun job, process 0 says it for all
        click.echo(f"stopped by signal {exc.signal_number} after step {exc.step}; checkpoint: {exc.checkpoint}",
                   err=True)
        click.echo(f"resume with: aigc-kit resume {run_dir}", err=True)
    raise click.exceptions.Exit(exit_status(exc.signal_number))


def _is_known(exc: BaseException) -> bool:
    from aigc_kit.core.errors import TrainingError, UserError, ValidationFailed

    return isinstance(exc, UserError | ValidationFailed | TrainingError)


def _describe_failure(exc: BaseException) -> tuple[int, str]:
    from aigc_kit.core.errors import TrainingError, UserError, ValidationFailed

    if isinstance(exc, UserError):
        return USER_ERROR, f"error: {exc}"
    if isinstance(exc, ValidationFailed):
        report = json.dumps(exc.report, indent=2, default=str)
        return FAILURE, f"export failed validation: {exc}\nreport: {report}"
    if isinstance(exc, TrainingError):
        return FAILURE, f"training stopped: {exc}"
    return FAILURE, f"internal error: {type(exc).__name__}: {exc}"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE.py|MODULE",
              help="Load a local plugin file or module (repeatable).")
@click.option("--strict-plugins", is_flag=True,
              help="Fail when any installed plugin fails to load (also AIGC_KIT_STRICT_PLUGINS=1).")
@click.version_option(package_name="aigc-kit", prog_name="aigc-kit")
@click.pass_context
def cli(ctx: click.Context, debug: bool, plugins: tuple[str, ...], strict_plugins: bool) -> None:
    """Train image generators from YAML, with plugins, and export them to ONNX.

    \b
    aigc-kit run examples/dcgan-shapes.yaml     train, sample, checkpoint, export
    aigc-kit resume runs/NAME                   continue a stopped run exactly
    aigc-kit validate CONFIG.yaml               check a config without training
    aigc-kit plugins                            what is installed and what it offers
    aigc-kit export runs/NAME --out model.onnx  export a trained run, checked against PyTorch
    aigc-kit generate model.onnx --out grid.png images from the export, without PyTorch
    aigc-kit inspect model.onnx                 what an exported model is and where it came from
    aigc-kit bench runs/NAME                    onnxruntime against PyTorch, side by side
    aigc-kit eval runs/NAME --metric fid        sample quality, of a run or of its export
    aigc-kit report runs/NAME                   one HTML page: curves, samples, config, environment
    aigc-kit new-plugin aigc-kit-tiny           a plugin package to start from, with its tests
    """
    ctx.obj = State(debug=debug, plugins=plugins, strict=strict_plugins)


OVERRIDE = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a config field, e.g. --set train.steps=100 (repeatable; values are YAML).")


def echo_export(report: dict[str, Any]) -> None:
    line = f"  exported: {report.get('path')}"
    if "what" in report:
        line += f" ({report['what']}, {report.get('precision', 'fp32')}, opset {report.get('opset')})"
    click.echo(line)
    if "max_abs_error" in report and "batch_sizes" not in report:  # another exporter's own check
        click.echo(f"  max abs error vs PyTorch: {report['max_abs_error']:.2g}")
    elif "max_abs_error" in report:
        sizes = ", ".join(str(b) for b in report["batch_sizes"])
        click.echo(f"  onnxruntime vs PyTorch: max abs error {report['max_abs_error']:.2g}, "
                   f"mean {report.get('mean_abs_error', float('nan')):.2g} at batch sizes {sizes} "
                   f"(allowed {report.get('atol')} + {report.get('rtol')} x |expected|)")
    reference = report.get("reference_evaluator")
    if reference:
        if "skipped" in reference:
            click.echo(f"  onnx reference evaluator: skipped ({reference['skipped']})")
        else:
            click.echo(f"  onnx reference evaluator ({reference.get('graph')}): max abs error "
                       f"{reference['max_abs_error']:.2g}")
    if "sampler_graph" in report:
        line = f"  sampler graph: {report['sampler_graph']}"
        if report.get("fp32_steps"):
            line += (f"; the first {report['fp32_steps']} steps fp32, the rest {report.get('precision')}, each "
                     "step's activations calibrated on their own")
        click.echo(line)
    if "step_bytes" in report:
        click.echo(f"  {report['bytes']:,} bytes; one step alone: {report['step_bytes']:,} bytes (weights stored once"
                   + (", in fp32 and int8)" if report.get("fp32_steps") else ")"))
