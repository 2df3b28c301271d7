"""Faults during training: kills at any moment, a full disk, non-finite losses and gradients."""

from __future__ import annotations

import errno
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from aigc_kit.cli import cli
from aigc_kit.core import checkpoint as checkpoints
from aigc_kit.core.checkpoint import load_checkpoint
from aigc_kit.core.run import run

from .conftest import tiny_config

KILLABLE_STEPS = 240
"""Enough steps that four kills, each up to 0.4 s after a checkpoint, land before the run ends on a fast CPU."""


def killable_config() -> dict:
    config = tiny_config()
    config["data"]["size"] = 48
    config["train"].update(steps=KILLABLE_STEPS, checkpoint_every=1, log_every=1, sample_every=1000, keep_checkpoints=2)
    return config


def latest_step(run_dir) -> int:
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().strip().removeprefix("step-")) if latest.exists() else 0


@pytest.mark.slow
def test_a_run_killed_at_random_moments_always_leaves_a_loadable_checkpoint_and_resumes_exactly(
        builtin_registry, write_config, tmp_path):
    path = write_config(killable_config())
    run(path, builtin_registry, output=tmp_path / "whole")

    command = [sys.executable, "-m", "aigc_kit.cli"]
    killed_dir = tmp_path / "killed"
    moments = random.Random(2026)
    for _ in range(4):
        before = latest_step(killed_dir)
        args = ["resume", str(killed_dir)] if before else ["run", str(path), "--output", str(killed_dir)]
        process = subprocess.Popen(command + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while latest_step(killed_dir) <= before and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # until this process has trained and checkpointed a step
        time.sleep(moments.uniform(0.0, 0.4))  # then kill at a random moment: mid-step, mid-write, anywhere
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {process.stderr.read().decode()[-500:]}")
        process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoint = load_checkpoint(killed_dir)  # complete, whatever moment the kill came at
        assert checkpoint.networks and checkpoint.step >= before
    assert latest_step(killed_dir) < KILLABLE_STEPS
    result = subprocess.run([*command, "resume", str(killed_dir)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list((killed_dir / "checkpoints").glob(".step-*"))

    whole = load_file(tmp_path / "whole" / "checkpoints" / f"step-{KILLABLE_STEPS:06d}" / "weights.safetensors")
    killed = load_file(killed_dir / "checkpoints" / f"step-{KILLABLE_STEPS:06d}" / "weights.safetensors")
    assert all(torch.equal(whole[key], killed[key]) for key in whole)
    steps = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, KILLABLE_STEPS + 1))


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_says_so(
        write_config, tmp_path, monkeypatch):
    config = tiny_config()
    config["train"]["checkpoint_every"] = 2
    original = checkpoints.save_file
    calls = []

    def fill_disk_on_second_checkpoint(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoints, "save_file", fill_disk_on_second_checkpoint)
    result = CliRunner().invoke(cli, ["run", str(write_config(config)), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "no space left" in result.output and "step-000002" in result.output and "is intact" in result.output
    assert f"aigc-kit resume {tmp_path / 'run'}" in result.output
    assert "Traceback" not in result.output
    assert load_checkpoint(tmp_path / "run").step == 2
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step-000002"]


def poison_generator_loss(monkeypatch, at_step: int, where: str) -> None:
    """At one step, make the generator phase's loss NaN, or finite with an infinite gradient."""
    from aigc_kit.plugins.gan_losses.losses import GanLoss

    original = GanLoss.compute

    def compute(self, phase, batch, bundle, step):
        loss, logs = original(self, phase, batch, bundle, step)
        if step == at_step and phase.name == "generator":
            if where == "loss":
                return loss * float("nan"), logs
            # a finite loss whose gradient is not: d/dw sqrt(0 * w) = 0 / (2 sqrt(0)) = nan
            return loss + (0.0 * bundle.networks["generator"].layers[0].weight.flatten()[0]).sqrt(), logs
        return loss, logs

    monkeypatch.setattr(GanLoss, "compute", compute)


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_loss_or_gradient_stops_the_run_naming_step_and_phase(where, write_config, tmp_path,
                                                                             monkeypatch):
    poison_generator_loss(monkeypatch, 3, where)
    config = tiny_config()
    config["train"]["checkpoint_every"] = 2
    result = CliRunner().invoke(cli, ["run", str(write_config(config)), "--output", str(tmp_path / "run")])
    assert result.exit_code == 1, result.output
    assert "generator phase" in result.output and "at step 3" in result.output
    assert "Traceback" not in result.output
    weights = load_file(tmp_path / "run" / "checkpoints" / "step-000002" / "weights.safetensors")
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_skipping_non_finite_updates_counts_them_and_keeps_the_weights_finite(builtin_registry, write_config,
                                                                               tmp_path, monkeypatch):
    poison_generator_loss(monkeypatch, 3, "gradient")
    config = tiny_config()
    config["train"]["nonfinite"] = "skip"
    outcome = run(write_config(config), builtin_registry, output=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("skipped_updates", 0) for r in records] == [0, 1]
    weights = load_file(outcome.train.checkpoint / "weights.safetensors")
    assert all(torch.isfinite(value).all() for value in weights.values())
