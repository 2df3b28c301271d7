"""Exported models under onnxruntime against PyTorch, side by side, with the targets as ratios.

Times (with `aigc_kit.exporters.bench`, what `aigc-kit bench` runs):
- the 64x64 DCGAN generator (latent 100, width 64) at batch 1 and 64: onnxruntime fp32/fp16/int8
  against PyTorch eager fp32, eager bf16 autocast and torch.compile. Speed does not depend on the
  weights, so unless --gan-run is given the generator is trained for a few steps only;
- the whole DDIM sampler of a diffusion run (--ddim-run, e.g. the `examples/ddim-shapes.yaml` run)
  against PyTorch's sampling loop at the same step count;
- each sampler (DDIM, DPM-Solver++ 2M, UniPC, Euler, Heun) of a diffusion run (--sampler-run), at
  about 10 network evaluations: its one-graph export under onnxruntime, the same sampler as a
  PyTorch loop, and diffusers' scheduler of the same name in the loop diffusers' pipelines run
  (scale the input, call the network, step), around the same network (needs diffusers).

Then prints the ratios the targets are stated in.

    python benchmarks/export_speed.py [--threads 1] [--ddim-run runs/ddim-shapes] [--json out.json]
    python benchmarks/export_speed.py --skip-gan --sampler-run runs/ddim-shapes --threads 2 [--sampler-precisions fp32,int8]
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


SAMPLERS = [  # (label, sampler request, diffusers scheduler class, its options)
    ("DDIM", {"name": "ddim", "steps": 10}, "DDIMScheduler", {"clip_sample": True}),
    ("DPM-Solver++ 2M", {"name": "dpm-solver++", "steps": 10}, "DPMSolverMultistepScheduler",
     {"thresholding": True, "sample_max_value": 1.0}),
    ("UniPC-2", {"name": "unipc", "steps": 10}, "UniPCMultistepScheduler", {"thresholding": True,
                                                                           "sample_max_value": 1.0}),
    ("Euler", {"name": "euler", "steps": 10}, "EulerDiscreteScheduler", {}),
    # from sigma 80 down: the cosine schedule's last sigma, 20,000, leaves Heun ill-conditioned (docs/diffusion.md)
    ("Heun", {"name": "heun", "steps": 5, "sigma_max": 80.0}, "HeunDiscreteScheduler", {"clip_sample": True}),
]
DIFFUSERS_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def diffusers_loop(name: str, options: dict, sampler, network):
    """diffusers' scheduler ``name`` over ``sampler``'s timesteps, in its pipelines' loop around ``network``."""
    import diffusers
    import torch

    schedule = sampler.schedule
    scheduler = getattr(diffusers, name)(
        num_train_timesteps=schedule.num_train_timesteps, prediction_type=schedule.prediction_type,
        beta_schedule=DIFFUSERS_BETAS[sampler.beta_schedule], timestep_spacing="trailing", **options)
    def start() -> None:  # the sigma-based schedulers take our timesteps (sigma_max moves them), the others theirs
        if name in ("EulerDiscreteScheduler", "HeunDiscreteScheduler"):
            scheduler.set_timesteps(timesteps=sampler.timesteps)
        else:
            scheduler.set_timesteps(len(sampler.timesteps))

    start()
    if [int(t) for t in scheduler.timesteps][::2 if name == "HeunDiscreteScheduler" else 1] != sampler.timesteps:
        raise SystemExit(f"{name} visits other timesteps than {sampler.timesteps}: {scheduler.timesteps.tolist()}")

    @torch.no_grad()
    def run(noise: torch.Tensor) -> torch.Tensor:
        start()
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            batch = torch.full((noise.shape[0],), round(float(t)), dtype=torch.long)
            x = scheduler.step(network(scheduler.scale_model_input(x, t), batch), t, x).prev_sample
        return x

    return run, len(scheduler.timesteps)


def sampler_speed(run: Path, registry, batch_sizes: tuple[int, ...], threads: int, repeats: int,
                  folder: Path, precisions: tuple[str, ...] = ("fp32",)) -> tuple[list[dict], dict]:
    """Each sampler's export at each of ``precisions``, its PyTorch loop and diffusers' loop, timed in turn at each
    batch size."""
    import onnxruntime
    import torch

    from aigc_kit.core.trained import export, load_trained
    from aigc_kit.exporters.bench import measure_interleaved

    torch.set_num_threads(threads)
    rows, targets = [], {}
    for label, request, scheduler, options in SAMPLERS:
        trained = load_trained(run, registry, sampler=request)
        sampler, network = trained.components.sampler, trained.network
        sampler.beta_schedule = trained.loaded.options["model"].schedule.beta_schedule
        settings = onnxruntime.SessionOptions()
        settings.intra_op_num_threads = threads
        settings.log_severity_level = 3
        sessions = {}
        for precision in precisions:  # int8 takes the unrolled layout, calibrated step by step (the exporter's rule)
            path = folder / f"{request['name']}-{precision}.onnx"
            export(run, registry, out=path, sampler=request,
                   options={"validate_batch_sizes": [1], "precision": precision})
            sessions[f"onnxruntime {precision}"] = onnxruntime.InferenceSession(str(path), settings,
                                                                                 providers=["CPUExecutionProvider"])
        theirs, evaluations = diffusers_loop(scheduler, options, sampler, network)
        for batch in batch_sizes:
            noise = torch.randn(batch, *trained.components.model.noise_shape, generator=torch.Generator().manual_seed(0))
            feed = {"noise": noise.numpy()}
            paths = {name: lambda session=session, feed=feed: session.run(None, feed)
                     for name, session in sessions.items()}
            paths["pytorch loop"] = lambda sampler=sampler, network=network, noise=noise: sampler.sample(network, noise)
            paths["diffusers loop"] = lambda theirs=theirs, noise=noise: theirs(noise)
            with torch.no_grad():
                # a pause before each call: onnxruntime's spinning threads would slow the next path 2x (measured)
                times = measure_interleaved(paths, repeats, pause=0.05)
            medians = {path: sorted(values)[len(values) // 2] * 1e3 for path, values in times.items()}
            row = {"sampler": label, "batch": batch, "evaluations": evaluations, **medians}
            rows.append(row)
            print(f"{label:<16} batch {batch:>3}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in medians.items()),
                  file=sys.stderr)
            for name in sessions:
                targets[f"{label} batch {batch}: PyTorch loop / {name} (target >= 1.5 at 16)"] = \
                    medians["pytorch loop"] / medians[name]
                targets[f"{label} batch {batch}: diffusers loop / {name} (target > 1)"] = \
                    medians["diffusers loop"] / medians[name]
    return rows, targets


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
    parser.add_argument("--sampler-run", type=Path, help="A diffusion run: time each sampler (needs diffusers).")
    parser.add_argument("--sampler-precisions", default="fp32",
                        help="The exports timed for --sampler-run, comma-separated: fp32, fp16, int8.")
    parser.add_argument("--skip-gan", action="store_true", help="Leave out the GAN generator.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    registry = default_registry()
    results = {"machine": platform.processor() or platform.machine(), "threads": args.threads}
    targets: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as folder:
        if args.sampler_run:
            sizes = tuple(int(size) for size in args.ddim_batch_sizes.split(","))
            results["samplers"], sampler_targets = sampler_speed(args.sampler_run, registry, sizes, args.threads,
                                                                 max(3, args.repeats // 4), Path(folder),
                                                                 tuple(args.sampler_precisions.split(",")))
            targets.update(sampler_targets)
        if args.skip_gan:
            report_targets(targets, results, args.json)
            return
        gan_run = args.gan_run or short_gan_run(Path(folder))
        gan = bench(gan_run, registry, batch_sizes=(1, 64), threads=args.threads, repeats=args.repeats,
                    progress=lambda line: print(line, file=sys.stderr))
    print(format_report(gan))
    eager_1, onnx_1 = gan.row(1, "torch eager fp32"), gan.row(1, "onnxruntime fp32")
    targets |= {
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
    report_targets(targets, results, args.json)


def report_targets(targets: dict[str, float | None], results: dict, path: Path | None) -> None:
    print("\nratios")
    for name, value in targets.items():
        print(f"  {name}: {value:.2f}" if value is not None else f"  {name}: n/a")
    results["targets"] = targets
    if path:
        path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
