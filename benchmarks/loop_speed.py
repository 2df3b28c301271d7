"""Training speed of the registry-composed loop against a plain hand-written DCGAN loop.

Both train the same DCGAN (32x32, latent 100, width 64) on the same shapes
data with the same batch, optimizers and precision; each is timed over the
second half of its steps (the first half warms up), alternately, and the
best of the repeats is kept. Also times `aigc-kit --help` and `aigc-kit plugins`.

    python benchmarks/loop_speed.py [--steps 60] [--repeats 2]
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

from aigc_kit.core.config import parse_config
from aigc_kit.core.loop import Trainer
from aigc_kit.core.registry import Registry
from aigc_kit.core.run import build_components
from aigc_kit.plugins.datasets.shapes import ShapesDataset
from aigc_kit.plugins.dcgan.networks import Discriminator, Generator

BATCH = 64


def composed_steps_per_second(steps: int, precision: str, ema: bool) -> float:
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
    loaded = parse_config(config, registry)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(build_components(loaded, registry), loaded.config, loaded.resolved(), Path(run_dir),
                          torch.device("cpu"))
        trainer.fit()
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return records[-1]["steps_per_second"]


def handwritten_steps_per_second(steps: int, precision: str) -> float:
    """The loop one would write by hand for the same model (the PyTorch DCGAN example's shape)."""
    torch.manual_seed(0)
    generator, discriminator = Generator(100, 64, 3, 32), Discriminator(64, 3, 32)
    g_opt = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    loader = torch.utils.data.DataLoader(ShapesDataset(32, 3, 20000, 0), batch_size=BATCH, shuffle=True,
                                         drop_last=True)
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
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"batch {BATCH}, DCGAN 32x32 width 64, {args.steps} steps (timed: the last {args.steps - args.steps // 2})")
    print(f"{'precision':<10}{'hand-written':>14}{'composed':>12}{'ratio':>8}{'composed+EMA':>15}{'ratio':>8}  (steps/s)")
    for precision in ("fp32", "bf16"):
        best = {"hand": 0.0, "composed": 0.0, "ema": 0.0}
        for _ in range(args.repeats):
            best["hand"] = max(best["hand"], handwritten_steps_per_second(args.steps, precision))
            best["composed"] = max(best["composed"], composed_steps_per_second(args.steps, precision, ema=False))
            best["ema"] = max(best["ema"], composed_steps_per_second(args.steps, precision, ema=True))
        print(f"{precision:<10}{best['hand']:>14.2f}{best['composed']:>12.2f}{best['composed'] / best['hand']:>8.3f}"
              f"{best['ema']:>15.2f}{best['ema'] / best['hand']:>8.3f}")
    for args in (["--help"], ["plugins"]):
        print(f"`aigc-kit {' '.join(args)}`: {command_seconds(args):.3f} s (best of 5)")


if __name__ == "__main__":
    main()
