"""Mode coverage on the 2-D mixtures: gan-bce, wgan-gp and hinge on ring and grid, several seeds each.

Every run starts from examples/wgan-gp-grid.yaml (the testbed's shipped
defaults: the mlp networks, the data scaling, the steps) and changes only the
loss, the layout and the seed. The EMA generator is measured at the end
(2,500 samples, PacGAN's protocol) and the table is printed beside the
published rows.

    python benchmarks/mode_coverage.py [--seeds 3] [--steps N] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "wgan-gp-grid.yaml"
# gan-bce and hinge get the example's learning rates and betas, and their own single discriminator step.
SHARED = ("discriminator_lr", "generator_lr", "beta1", "beta2")
LOSSES = ("gan-bce", "wgan-gp", "hinge")
PUBLISHED = [
    ("grid", "GAN (VEEGAN's table)", "3.3", "0.5"),
    ("grid", "Unrolled GAN (VEEGAN's table)", "23.6", "16"),
    ("grid", "VEEGAN", "24.6", "40"),
    ("grid", "GAN (PacGAN's table)", "17.3", "94.8"),
    ("grid", "PacGAN2", "23.8", "91.3"),
    ("grid", "PacGAN4", "24.8", "93.6"),
    ("ring", "VEEGAN", "8", "52.9"),
    ("ring", "PacGAN2", "7.9", "95.6"),
]


def one_run(job: tuple[str, str, int, int | None]) -> tuple[str, str, int, float, float, float]:
    layout, loss, seed, steps = job
    import torch

    torch.set_num_threads(1)
    from aigc_kit.core.config import parse_config
    from aigc_kit.core.registry import Registry
    from aigc_kit.core.run import run_loaded

    config = yaml.safe_load(EXAMPLE.read_text())
    config["data"]["layout"] = layout
    config["seed"] = seed
    config["data"]["seed"] = seed
    if loss != config["loss"]["name"]:
        config["loss"] = {"name": loss, **{key: config["loss"][key] for key in SHARED}}
    if steps:
        config["train"]["steps"] = steps
    config["train"]["progress"] = False
    config["train"]["eval_every"] = config["train"]["steps"]
    config["export"] = None
    registry = Registry(builtin_only=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        outcome = run_loaded(parse_config(config, registry, source=EXAMPLE), registry, output=run_dir)
    values = outcome.train.last_eval
    return (layout, loss, seed, values["mode-coverage/modes"], values["mode-coverage/high_quality"],
            time.perf_counter() - started)


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.1f} ± {statistics.pstdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="Override the example's training steps.")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="Runs in parallel, one thread each.")
    parser.add_argument("--layouts", default="ring,grid")
    parser.add_argument("--losses", default=",".join(LOSSES))
    args = parser.parse_args()
    jobs = [(layout, loss, seed, args.steps) for layout in args.layouts.split(",")
            for loss in args.losses.split(",") for seed in range(args.seeds)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(one_run, jobs))
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.0f} s on {args.jobs} processes "
          f"(base config {EXAMPLE.name}, steps {args.steps or 'as in the example'})")
    print(f"{'data':<6}{'method':<32}{'modes':>14}{'high quality %':>18}{'s/run':>8}   per seed (modes / %)")
    for layout in args.layouts.split(","):
        for loss in args.losses.split(","):
            rows = [r for r in results if r[0] == layout and r[1] == loss]
            per_seed = ", ".join(f"{r[3]:.0f}/{r[4]:.0f}" for r in rows)
            print(f"{layout:<6}{'aigc-kit ' + loss:<32}{spread([r[3] for r in rows]):>14}"
                  f"{spread([r[4] for r in rows]):>18}{statistics.fmean(r[5] for r in rows):>8.0f}   {per_seed}")
        for data, method, modes, quality in PUBLISHED:
            if data == layout:
                print(f"{layout:<6}{method + ' (published)':<32}{modes:>14}{quality:>18}")


if __name__ == "__main__":
    main()
