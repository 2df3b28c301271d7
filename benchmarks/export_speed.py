"""Exported models under onnxruntime against PyTorch, side by side, with the targets as ratios.

Times (with `aigc_kit.exporters.bench`, what `aigc-kit bench` runs):
- the 64x64 DCGAN generator (latent 100, width 64) at batch 1 and 64: onnxruntime fp32/fp16/int8
  against PyTorch eager fp32, eager bf16 autocast and torch.compile. Speed does not depend on the
  weights, so unless --gan-run is given the generator is trained for a few steps only;
- the whole DDIM sampler of a diffusion run (--ddim-run, e.g. the `examples/ddim-shapes.yaml` run)
  against PyTorch's sampling loop at the same step count.

Then prints the ratios the targets are stated in.

    python benchmarks/export_speed.py [--threads 1] [--ddim-run runs/ddim-shapes] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from aigc_kit.core.registry import default_registry
from aigc_kit.exporters.bench import bench, format_report

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dcgan-shapes.yaml"


def short_gan_run(folder: Path) -> Path:
    """A 64x64 DCGAN (width 64) trained for 20 steps: the architecture is what the timing depends on."""
    run_dir = folder / "dcgan64"
    subprocess.run([sys.executable, "-m", "aigc_kit.cli", "run", str(EXAMPLE), "--output", str(run_dir),
                    "--set", "data.resolution=64", "--set", "model.width=64", "--set", "train.steps=20",
                    "--set", "train.sample_every=20", "--set", "train.checkpoint_every=20",
                    "--set", "export=null"], check=True, stdout=subprocess.DEVNULL)
    return run_dir


def ratio(report, batch: int, numerator: str, denominator: str) -> float | None:
    top, bottom = report.fastest(batch, numerator), report.fastest(batch, denominator)
    return bottom.median_ms / top.median_ms if top and bottom else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--gan-run", type=Path)
    parser.add_argument("--ddim-run", type=Path)
    parser.add_argument("--ddim-batch-sizes", default="1,16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    registry = default_registry()
    results = {"machine": platform.processor() or platform.machine(), "threads": args.threads}
    with tempfile.TemporaryDirectory() as folder:
        gan_run = args.gan_run or short_gan_run(Path(folder))
        gan = bench(gan_run, registry, batch_sizes=(1, 64), threads=args.threads, repeats=args.repeats,
                    progress=lambda line: print(line, file=sys.stderr))
    print(format_report(gan))
    eager_1, onnx_1 = gan.row(1, "torch eager fp32"), gan.row(1, "onnxruntime fp32")
    targets = {
        "batch 1: onnxruntime fp32 / eager fp32 (target >= 2)": eager_1.median_ms / onnx_1.median_ms,
        "batch 1: fastest PyTorch / onnxruntime fp32 (target > 1)": gan.fastest(1, "torch").median_ms
        / onnx_1.median_ms,
        "batch 64: fastest PyTorch / fastest onnxruntime (target >= 1)": ratio(gan, 64, "onnxruntime", "torch"),
    }
    results["gan"] = gan.as_dict()
    if args.ddim_run:
        sizes = tuple(int(size) for size in args.ddim_batch_sizes.split(","))
        ddim = bench(args.ddim_run, registry, batch_sizes=sizes, threads=args.threads, repeats=max(3, args.repeats // 4),
                     progress=lambda line: print(line, file=sys.stderr))
        print(format_report(ddim))
        for size in sizes:
            eager = ddim.row(size, "torch eager fp32")
            onnx = ddim.row(size, "onnxruntime fp32")
            fastest = ddim.fastest(size, "onnxruntime")
            targets[f"DDIM sampler batch {size}: eager loop / onnxruntime fp32"] = eager.median_ms / onnx.median_ms
            targets[f"DDIM sampler batch {size}: eager loop / fastest one-graph sampler, {fastest.path} "
                    "(target >= 1.5)"] = eager.median_ms / fastest.median_ms
            targets[f"DDIM sampler batch {size}: fastest PyTorch / fastest onnxruntime"] = ratio(
                ddim, size, "onnxruntime", "torch")
        results["ddim"] = ddim.as_dict()
    print("\nratios")
    for name, value in targets.items():
        print(f"  {name}: {value:.2f}" if value is not None else f"  {name}: n/a")
    results["targets"] = targets
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
