"""`eval`, `report`, `export`, `generate`, `inspect`, `bench` and `new-plugin`: what is done with a trained run or an
exported file, and a new plugin package."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .group import State, cli, echo_export

SAMPLER_OPTION = click.option(
    "--sampler", metavar="NAME", help="Sample with this sampler instead of the run's (its options as far as the new "
    "one has them; `aigc-kit plugins` lists samplers): ddim, dpm-solver++, unipc, euler, heun, ...")
SAMPLER_OPTIONS = click.option(
    "--sampler-option", "sampler_options", multiple=True, metavar="KEY=VALUE",
    help="An option of the sampler (repeatable; values are YAML), e.g. --sampler-option solver_order=3.")


@cli.command("eval")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--metric", "metrics", multiple=True, required=True, metavar="NAME",
              help="A metric to compute (repeatable): fid, kid, precision-recall, density-coverage, ...")
@click.option("--option", "extra", multiple=True, metavar="METRIC.KEY=VALUE",
              help="A metric's option (repeatable; values are YAML), e.g. --option fid.real_samples=5000.")
@click.option("-n", "count", type=click.IntRange(min=2), default=10000, show_default=True,
              help="Generated samples to evaluate.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seeds the noise.")
@click.option("--guidance", type=float, help="Conditional diffusion samplers: the classifier-free guidance scale "
                                            "to sample with (default: the run's, or the export's).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="The JSON report (default: RUN_DIR/eval.json, or MODEL.eval.json beside an ONNX file).")
@SAMPLER_OPTION
@SAMPLER_OPTIONS
@click.pass_obj
def eval_command(state: State, source: Path, metrics: tuple[str, ...], extra: tuple[str, ...], count: int, seed: int,
                 guidance: float | None, out: Path | None, sampler: str | None,
                 sampler_options: tuple[str, ...]) -> None:
    """Compute metrics of SOURCE's samples: a run directory, a checkpoint folder or an exported MODEL.onnx.

    A run samples with its own sampler, or with --sampler NAME (and --sampler-option KEY=VALUE).
    """
    from aigc_kit.core.errors import UserError

    switched = _sampler_request(sampler, sampler_options)
    if switched and source.suffix == ".onnx":
        raise UserError("an exported file holds the sampler it was exported with", field="--sampler",
                        file=str(source), hint="export the run again with --sampler, or eval the run directory")
    requested: dict[str, dict[str, Any]] = {name: {} for name in metrics}
    expected = "METRIC.KEY=VALUE for a metric given with --metric"
    for item in extra:
        key, value = _key_value(item, expected)
        metric, dot, option = key.partition(".")
        if not dot or metric not in requested:
            raise click.BadParameter(f"expected {expected}, got {item!r}", param_hint="--option")
        requested[metric][option] = value
    from tqdm import tqdm

    from aigc_kit.core.files import write_text
    from aigc_kit.core.rundir import check_output_file

    if source.suffix == ".onnx":
        out = out or source.with_suffix(".eval.json")
    else:
        out = out or (source / "eval.json" if (source / "checkpoints").is_dir() else Path("eval.json"))
    check_output_file(out, "--out")  # before minutes of sampling, not after
    # a progress bar on a terminal (tqdm turns itself off otherwise); the real features come after the samples
    with tqdm(total=count, unit="sample", file=sys.stderr, disable=None, mininterval=1.0) as bar:
        if source.suffix == ".onnx":
            from aigc_kit.exporters.evaluate import evaluate_onnx

            report = evaluate_onnx(source, state.registry(), list(requested.items()), count, seed=seed,
                                   guidance=guidance, progress=bar.update)
        else:
            from aigc_kit.core.evaluation import evaluate_run

            report = evaluate_run(source, state.registry(), list(requested.items()), count, seed=seed,
                                  guidance=guidance, progress=bar.update, sampler=switched)
    width = max(len(key) for key in report["values"])
    click.echo(f"{source}: {count:,} samples, seed {seed}")
    for key, value in report["values"].items():
        click.echo(f"  {key:<{width}}  {value:.6g}")
    write_text(out, json.dumps(report, indent=2) + "\n")
    click.echo(f"  report: {out}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML page (default: RUN_DIR/report/report.html); its PNG figures go beside it.")
def report(run_dir: Path, out: Path | None) -> None:
    """Write one self-contained HTML page about RUN_DIR: curves, metrics, samples over time, config, environment."""
    from aigc_kit.core.report import write_report

    click.echo(f"report: {write_report(run_dir, out)}")


@cli.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the package (default: ./NAME); must be new or empty.")
@click.option("--kind", "kinds", multiple=True, default=("model",), show_default=True,
              type=click.Choice(["model", "loss", "sampler", "dataset", "metric", "exporter", "callback"]),  # SCAFFOLD_KINDS
              help="A component kind to include a working example of (repeatable).")
def new_plugin(name: str, directory: Path | None, kinds: tuple[str, ...]) -> None:
    """Write a pip-installable plugin package NAME: entry point, example components, README, tests."""
    from aigc_kit.testing.scaffold import new_plugin as write_package

    target = write_package(name, directory, kinds)
    click.echo(f"wrote {target}/ ({', '.join(kinds)})")
    click.echo(f"next: pip install -e '{target}[test]' && aigc-kit plugins && python -m pytest {target}")


def _sampler_request(name: str | None, items: tuple[str, ...]) -> dict[str, Any] | None:
    """``--sampler`` and ``--sampler-option``s as :func:`aigc_kit.core.trained.switched_sampler` takes them."""
    request: dict[str, Any] = {"name": name} if name else {}
    for item in items:
        key, value = _key_value(item, "KEY=VALUE", "--sampler-option")
        request[key] = value
    return request or None


def _key_value(item: str, expected: str, option: str = "--option") -> tuple[str, Any]:
    """``--option KEY=VALUE``: the key, and the value read as YAML."""
    import yaml

    key, separator, value = item.partition("=")
    if not separator or not key.strip():
        raise click.BadParameter(f"expected {expected}, got {item!r}", param_hint=option)
    return key.strip(), yaml.safe_load(value)


def _batch_sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        sizes = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, like 1,8; got {value!r}")
    return sizes


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--format", "format_", default="onnx", show_default=True, help="The exporter's name.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The file to write.")
@click.option("--what", type=click.Choice(["auto", "generator", "denoiser", "sampler"]),
              help="generator (GANs), denoiser or the whole sampler (diffusion); default: auto.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Default: fp32.")
@click.option("--steps", type=click.IntRange(min=1), help="Sampler steps in the graph (default: the run's sampler's).")
@click.option("--sampler-graph", type=click.Choice(["auto", "loop", "unrolled"]),
              help="A sampler as one Loop (steps choosable at run time) or unrolled, one step per timestep (int8 "
              "calibrates each step); default: auto (unrolled for int8).")
@click.option("--pixels", type=click.Choice(["float", "uint8"]), help="uint8: the graph outputs NHWC pixels.")
@click.option("--opset", type=int, help="ONNX opset (default 18).")
@click.option("--batch-sizes", callback=_batch_sizes, metavar="N,N,...",
              help="Batch sizes to check onnxruntime against PyTorch at (default 1,5; the traced 2 is added).")
@click.option("--option", "extra", multiple=True, metavar="KEY=VALUE",
              help="Any other exporter option (repeatable; values are YAML), e.g. --option atol=1e-5.")
@SAMPLER_OPTION
@SAMPLER_OPTIONS
@click.pass_obj
def export(state: State, source: Path, format_: str, out: Path, what: str | None, precision: str | None,
           steps: int | None, sampler_graph: str | None, pixels: str | None, opset: int | None,
           batch_sizes: tuple[int, ...] | None, extra: tuple[str, ...], sampler: str | None,
           sampler_options: tuple[str, ...]) -> None:
    """Export SOURCE (a run directory or checkpoint folder) and check the file against PyTorch.

    The same options can sit in a run config's `export:` section. A diffusion model exports with its
    run's sampler, or with another one: --sampler dpm-solver++ --steps 10.
    """
    from aigc_kit.core.trained import export as export_run

    options: dict[str, Any] = {key: value for key, value in (
        ("what", what), ("precision", precision), ("steps", steps), ("sampler_graph", sampler_graph),
        ("pixels", pixels), ("opset", opset), ("validate_batch_sizes", batch_sizes)) if value is not None}
    for item in extra:
        key, value = _key_value(item, "KEY=VALUE")
        options[key] = value
    echo_export(export_run(source, state.registry(), format=format_, out=out, options=options,
                            sampler=_sampler_request(sampler, sampler_options)))


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "count", type=click.IntRange(min=1), default=64, show_default=True, help="Images to generate.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seeds the noise (NumPy).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write one grid picture (PNG).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="Write one PNG per image.")
@click.option("--steps", type=click.IntRange(min=1), help="Diffusion samplers: another step count.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--providers", default="auto", show_default=True,
              help="auto (CUDA, OpenVINO, then CPU), cpu, cuda, tensorrt, openvino, or a comma-separated list.")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime's intra-op threads.")
@click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True,
              help="The GPU to run on (CUDA and TensorRT).")
@click.option("--trt-cache", type=click.Path(file_okay=False, path_type=Path),
              help="TensorRT: where its engines are kept (default: MODEL.onnx.trt-cache/ beside the model).")
@click.option("--trt-fp16", is_flag=True, help="TensorRT: let it run fp32 layers in fp16 (on for an fp16 export).")
@click.option("--label", "labels", multiple=True, metavar="CLASS",
              help="Conditional models: the class to draw (a name or an index; repeat for several, one after the "
                   "other), or 'all': -n images of every class, one grid row each. Default: random classes.")
@click.option("--guidance", type=float, help="Conditional diffusion samplers: the classifier-free guidance scale "
                                             "(default: the export's; 0 unconditional, 1 conditional).")
@click.option("--sampler", metavar="NAME", help="Diffusion samplers: the sampler to run, which must be the one the "
              "file holds (each export holds one; `aigc-kit inspect` says which).")
def generate(model: Path, count: int, seed: int, out: Path | None, out_dir: Path | None, steps: int | None,
             batch_size: int, providers: str, threads: int | None, device_id: int, trt_cache: Path | None,
             trt_fp16: bool, labels: tuple[str, ...], guidance: float | None, sampler: str | None) -> None:
    """Generate images from an exported MODEL.onnx with onnxruntime alone (no PyTorch needed)."""
    from aigc_kit.core.errors import UserError
    from aigc_kit.exporters.images import check_places, write_images
    from aigc_kit.exporters.runtime import OnnxGenerator

    every_class = "all" in labels
    if every_class and len(labels) > 1:
        raise UserError("--label all draws every class; it takes no other labels", field="--label",
                        given=" ".join(labels))
    check_places(count, out, out_dir)  # before the model loads: a bad place costs nothing
    try:
        generator = OnnxGenerator(model, providers=providers, threads=threads, device_id=device_id,
                                  tensorrt_cache=trt_cache, tensorrt_fp16=trt_fp16, batch_size=batch_size)
    except UserError as error:
        error.field = "--providers" if error.field == "providers" else error.field
        raise
    if sampler is not None:
        generator.check_sampler(sampler)
    try:
        written = write_images(generator, count, seed, out=out, out_dir=out_dir, batch_size=batch_size,
                               steps=steps, labels=_generate_labels(generator, labels, count), guidance=guidance,
                               every_class=every_class)
    except UserError as error:
        error.field = {"label": "--label", "guidance": "--guidance"}.get(error.field or "", error.field)
        raise
    click.echo(f"generated {written.count} images of {written.height}x{written.width} on {generator.provider}"
               + _conditions_shown(generator, labels, guidance))
    if written.grid is not None:
        click.echo(f"  grid: {written.grid}")
    if written.folder is not None:
        click.echo(f"  images: {written.folder}/00000.png .. {written.count - 1:05d}.png")


def _generate_labels(generator: Any, labels: tuple[str, ...], count: int) -> Any:
    """``generate``'s labels for ``--label``: none (random classes), one class for all, or several in turn."""
    from aigc_kit.core.errors import UserError

    if labels and not generator.classes:
        raise UserError("this model takes no class labels (it was trained without them)", field="--label",
                        file=str(generator.path), hint="drop --label")
    if not labels or labels == ("all",):
        return None
    if len(labels) == 1:
        return labels[0]
    return [labels[index * len(labels) // count] for index in range(count)]  # in runs, in the order given


def _conditions_shown(generator: Any, labels: tuple[str, ...], guidance: float | None) -> str:
    """What ``generate`` drew, for its summary line: the classes and the guidance scale."""
    if not generator.classes:
        return ""
    shown = ("every class (" + ", ".join(generator.classes) + ")" if labels == ("all",) else
             "class " + ", ".join(labels) if labels else f"random classes of {len(generator.classes)}")
    scale = guidance if guidance is not None else generator.guidance_scale
    return f", {shown}" + (f", guidance {scale:g}" if scale is not None else "")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def inspect(model: Path, as_json: bool) -> None:
    """Show what an exported MODEL.onnx is: its inputs and outputs, sampler, provenance and validation."""
    from aigc_kit.core.errors import UserError

    try:
        import onnx
    except ImportError:
        raise UserError("inspect reads the file with the onnx package, which is not installed",
                        hint="pip install onnx (generate needs only onnxruntime)") from None
    from aigc_kit.exporters.metadata import describe
    from aigc_kit.exporters.metadata import parse as read_metadata

    if not model.is_file():
        raise UserError("no such model file", file=str(model))
    try:
        proto = onnx.load_model(str(model), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for a file that is not ONNX
        raise UserError(f"not an ONNX model: {type(exc).__name__}", file=str(model)) from None
    info = read_metadata({entry.key: entry.value for entry in proto.metadata_props}, model)
    opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    info["producer"] = f"{proto.producer_name} {proto.producer_version}".strip()
    info["opset_imports"] = opsets
    info["bytes"] = model.stat().st_size
    if as_json:
        click.echo(json.dumps(info, indent=2))  # JSON escapes control characters itself
        return
    for line in describe(info, model):
        click.echo(line)


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--batch-sizes", callback=_batch_sizes, default="1,16,64", show_default=True, metavar="N,N,...")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for both runtimes (default: PyTorch's count).")
@click.option("--repeats", type=click.IntRange(min=3), default=10, show_default=True, help="Timed calls per row.")
@click.option("--precisions", default="fp32,fp16,int8", show_default=True, help="Exports to time (run directories).")
@click.option("--no-compile", is_flag=True, help="Skip torch.compile (its first call can take a minute).")
@click.option("--device", default="cpu", show_default=True, help="Where the PyTorch paths run: cpu, cuda or cuda:N.")
@click.option("--providers", help="onnxruntime's provider(s), as for generate (default: cuda with --device cuda, "
                                  "else cpu; e.g. openvino).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def bench(state: State, source: Path, batch_sizes: tuple[int, ...], threads: int | None, repeats: int,
          precisions: str, no_compile: bool, device: str, providers: str | None, as_json: bool) -> None:
    """Time SOURCE (a run directory, or MODEL.onnx) with onnxruntime and with each PyTorch path."""
    from aigc_kit.core.errors import UserError
    from aigc_kit.exporters.bench import bench as run_bench
    from aigc_kit.exporters.bench import format_report

    chosen = tuple(part.strip() for part in precisions.split(",") if part.strip())
    unknown = sorted(set(chosen) - {"fp32", "fp16", "int8"})
    if unknown or not chosen:
        raise UserError("unknown precision", field="--precisions", expected="some of fp32, fp16, int8",
                        given=precisions)
    registry = None if source.suffix == ".onnx" else state.registry()
    try:
        report = run_bench(source, registry, batch_sizes=batch_sizes, threads=threads, repeats=repeats,
                           precisions=chosen, compile=not no_compile, providers=providers, device=device,
                           progress=(lambda line: None) if as_json else (lambda line: click.echo(line, err=True)))
    except UserError as error:
        error.field = {"device": "--device", "providers": "--providers"}.get(error.field or "", error.field)
        raise
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_report(report))


