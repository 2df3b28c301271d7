"""Training speed of the registry-composed loop against a plain hand-written DCGAN loop.

Both train the same DCGAN (32x32, latent 100, width 64) on the same shapes
data with the same batch, optimizers and precision; each is timed over the
second half of its steps (the first half warms up), alternately, and the
best of the repeats is kept. Then the README's example, examples/dcgan-shapes.yaml
as it is (width 32, ``precision: auto``), against the hand-written loop in fp32
for the same model and batch: what a newcomer gets against what they would
write. Also times `aigc-kit --help` and `aigc-kit plugins`.

    python benchmarks/loop_speed.py [--steps 60] [--repeats 2]

To see a CPU without native bf16 on one that has it, cap oneDNN and ATen:
``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/loop_speed.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from aigc_kit.core.components import build_components
from aigc_kit.core.config import load_config, parse_config
from aigc_kit.core.device import native_bf16_cpu, resolve_precision
from aigc_kit.core.loop import Trainer
from aigc_kit.core.registry import Registry
from aigc_kit.plugins.datasets.shapes import ShapesDataset
from aigc_kit.plugins.dcgan.networks import Discriminator, Generator

BATCH = 64
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dcgan-shapes.yaml"


def composed_steps_per_second(steps: int, precision: str, ema: bool) -> float:
    """The Trainer, with components built by the registry, on the benchmark's DCGAN (width 64)."""
    registry = Registry(builtin_only=True)
    config = {
        "device": "cpu",
        "data": {"name": "shapes", "resolution": 32},
        "model": {"name": "dcgan"},
        "loss": {"name": "gan-bce"},
        "sampler": {"name": "normal"},
        "train": {"steps": steps, "batch_size": BATCH, "precision": precision, "log_every": steps // 2,
                  "sample_every": steps, "checkpoint_every": steps, "progress": False, "ema": {"enabled": ema}},
    }
    return trained_steps_per_second(parse_config(config, registry), registry)


def example_steps_per_second(steps: int) -> float:
    """examples/dcgan-shapes.yaml as the README runs it, for ``steps`` steps (no export)."""
    registry = Registry(builtin_only=True)
    loaded = load_config(EXAMPLE, registry, [f"train.steps={steps}", f"train.log_every={steps // 2}",
                                             "train.progress=false", "export=null", "device=cpu"])
    return trained_steps_per_second(loaded, registry)


def trained_steps_per_second(loaded, registry: Registry) -> float:
    """Train as ``loaded`` says; the steps per second of the second half (what metrics.jsonl logs)."""
    loaded.config.train.precision = resolve_precision(loaded.config.train.precision, torch.device("cpu")).precision
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(build_components(loaded, registry), loaded.config, loaded.resolved(), Path(run_dir),
                          torch.device("cpu"))
        trainer.fit()
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["steps_per_second"]


def handwritten_steps_per_second(steps: int, precision: str, width: int = 64, backgrounds: str = "varied") -> float:
    """The loop one would write by hand for the same model (the PyTorch DCGAN example's shape)."""
    torch.manual_seed(0)
    generator, discriminator = Generator(100, width, 3, 32), Discriminator(width, 3, 32)
    g_opt = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(ShapesDataset(32, 3, 20000, 0, backgrounds=backgrounds), batch_size=BATCH,
                                         shuffle=True, drop_last=True)
    batches = iter(loader)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    start = 0.0
    for step in range(1, steps + 1):
        if step == steps // 2 + 1:
            start = time.perf_counter()
        real = next(batches)
        with autocast():
            fake = generator(torch.randn(BATCH, 100))
            d_loss = F.softplus(-discriminator(real).float()).mean() + F.softplus(
                discriminator(fake.detach()).float()).mean()
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        with autocast():
            g_loss = F.softplus(-discriminator(fake).float()).mean()
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()
    return (steps - steps // 2) / (time.perf_counter() - start)


def command_seconds(args: list[str], repeats: int = 5) -> float:
    """Best wall time of ``python -m aigc_kit.cli ARGS`` over ``repeats`` runs."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "aigc_kit.cli", *args], check=True, capture_output=True)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16", help="The rows of the first table (emulated bf16 is "
                                                                    "slow: time it with fewer steps on its own).")
    parser.add_argument("--no-example", action="store_true", help="Skip the example's row.")
    args = parser.parse_args()
    auto = resolve_precision("auto", torch.device("cpu"))
    print(f"machine: {platform.machine()} ({cpu_name()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, "
          f"ATen {torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16_cpu()[0]}")
    print(f"precision auto picks {auto.describe()}")
    print(f"batch {BATCH}, DCGAN 32x32 width 64, {args.steps} steps (timed: the last {args.steps - args.steps // 2})")
    print(f"{'precision':<10}{'hand-written':>14}{'composed':>12}{'ratio':>8}{'composed+EMA':>15}{'ratio':>8}  (steps/s)")
    for precision in args.precisions.split(","):
        best = {"hand": 0.0, "composed": 0.0, "ema": 0.0}
        for _ in range(args.repeats):
            best["hand"] = max(best["hand"], handwritten_steps_per_second(args.steps, precision))
            best["composed"] = max(best["composed"], composed_steps_per_second(args.steps, precision, ema=False))
            best["ema"] = max(best["ema"], composed_steps_per_second(args.steps, precision, ema=True))
        print(f"{precision:<10}{best['hand']:>14.2f}{best['composed']:>12.2f}{best['composed'] / best['hand']:>8.3f}"
              f"{best['ema']:>15.2f}{best['ema'] / best['hand']:>8.3f}")
    best = {"hand": 0.0, "example": 0.0}
    for _ in range(0 if args.no_example else args.repeats):
        best["hand"] = max(best["hand"], handwritten_steps_per_second(args.steps, "fp32", width=32,
                                                                      backgrounds="black"))
        best["example"] = max(best["example"], example_steps_per_second(args.steps))
    if not args.no_example:
        print(f"examples/dcgan-shapes.yaml (width 32, precision auto = {auto.precision}): {best['example']:.2f} "
              f"steps/s; hand-written fp32 loop, same model and batch: {best['hand']:.2f} steps/s; "
              f"ratio {best['example'] / best['hand']:.3f} (target 0.9)")
    for command in (["--help"], ["plugins"]):
        print(f"`aigc-kit {' '.join(command)}`: {command_seconds(command):.3f} s (best of 5)")


def cpu_name() -> str:
    """The CPU's model name, as lscpu reports it (for the record only: no decision reads it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
