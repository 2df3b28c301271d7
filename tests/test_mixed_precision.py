"""The fp16 path (one gradient scaler per phase) and the host reads of a training step, driven on the CPU.

fp16 training needs a GPU for users; its loop code is the same on every device, so these tests build the
Trainer directly with torch's CPU gradient scaler.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import aigc_kit.core
from aigc_kit.core.checkpoint import load_checkpoint
from aigc_kit.core.components import build_components
from aigc_kit.core.config import parse_config
from aigc_kit.core.loop import Trainer

from .conftest import tiny_config


class InfiniteGradient(torch.autograd.Function):
    """The identity forward; an infinite gradient backward (an fp16 overflow, as the scaler sees one)."""

    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, gradient):
        return gradient * float("inf")


def overflow_discriminator_at(monkeypatch, at_step: int) -> None:
    from aigc_kit.plugins.gan_losses.losses import GanLoss

    original = GanLoss.compute

    def compute(self, phase, batch, bundle, step):
        loss, logs = original(self, phase, batch, bundle, step)
        if step == at_step and phase.name == "discriminator":
            return InfiniteGradient.apply(loss), logs
        return loss, logs

    monkeypatch.setattr(GanLoss, "compute", compute)


def trainer(registry, run_dir, precision="fp16", **train) -> Trainer:
    config = tiny_config()
    config["train"].update(precision=precision, **train)
    loaded = parse_config(config, registry)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    return Trainer(build_components(loaded, registry), loaded.config, loaded.resolved(), run_dir, torch.device("cpu"))


def scales(run: Trainer) -> dict[str, float]:
    return {name: optimizer.scaler.get_scale() for name, optimizer in run.optimizers.items()}


def test_each_phase_has_its_own_scaler_and_an_overflow_halves_only_its_phases_scale(builtin_registry, tmp_path,
                                                                                      monkeypatch):
    overflow_discriminator_at(monkeypatch, 3)
    run = trainer(builtin_registry, tmp_path / "run")
    assert run.optimizers["discriminator"].scaler is not run.optimizers["generator"].scaler
    for optimizer in run.optimizers.values():  # a scale of 1: no overflow but the one injected
        optimizer.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    run.fit()
    assert scales(run) == {"discriminator": 0.5, "generator": 1.0}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record.get("skipped_updates", 0) for record in records] == [0, 1]  # counted, at the step it happened


def test_a_skipped_fp16_update_leaves_the_weights_as_they_were(builtin_registry, tmp_path, monkeypatch):
    overflow_discriminator_at(monkeypatch, 1)
    run = trainer(builtin_registry, tmp_path / "run", steps=1, log_every=1)
    before = {k: v.clone() for k, v in run.networks["discriminator"].state_dict().items() if v.is_floating_point()}
    run.fit()
    after = run.networks["discriminator"].state_dict()
    parameters = dict(run.networks["discriminator"].named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in parameters)


def test_every_phases_scale_is_checkpointed_and_a_resume_restores_each(builtin_registry, tmp_path, monkeypatch):
    overflow_discriminator_at(monkeypatch, 1)
    whole = trainer(builtin_registry, tmp_path / "whole")
    whole.fit()
    saved = load_checkpoint(tmp_path / "whole" / "checkpoints" / "step-000002").state["scalers"]
    assert sorted(saved) == ["discriminator", "generator"]

    resumed = trainer(builtin_registry, tmp_path / "parts", steps=2)
    resumed.fit()
    continued = trainer(builtin_registry, tmp_path / "parts")
    continued.fit(resume=load_checkpoint(tmp_path / "parts" / "checkpoints" / "step-000002"))
    for name in ("discriminator", "generator"):
        assert continued.optimizers[name].scaler.get_scale() == whole.optimizers[name].scaler.get_scale()
    final = {name: network.state_dict() for name, network in whole.networks.items()}
    for name, network in continued.networks.items():
        assert all(torch.equal(final[name][key], value) for key, value in network.state_dict().items())


def test_a_checkpoint_with_one_shared_scaler_restores_it_into_every_phase(builtin_registry, tmp_path):
    first = trainer(builtin_registry, tmp_path / "old", steps=2)
    first.fit()
    checkpoint = load_checkpoint(tmp_path / "old")
    checkpoint.state["scaler"] = {**checkpoint.state.pop("scalers")["generator"], "scale": 1024.0}
    later = trainer(builtin_registry, tmp_path / "old", steps=4)
    later.restore(checkpoint)
    assert {optimizer.scaler.get_scale() for optimizer in later.optimizers.values()} == {1024.0}


class HostReads:
    """Counts where aigc-kit's own code reads a tensor's value on the host (on a GPU, each makes the host wait).

    torch's optimizers read their step counters, which live on the host by design: only reads made by
    aigc-kit's modules (the loop, the built-in plugins) count.
    """

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        package_root = str(Path(aigc_kit.core.__file__).resolve().parent.parent)
        for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, original=original, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(package_root) and "/tests/" not in caller:
                    self.count += 1
                return original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_training_steps_read_nothing_back_to_the_host_between_logs(builtin_registry, tmp_path, monkeypatch,
                                                                   precision):
    run = trainer(builtin_registry, tmp_path / "run", precision=precision, steps=6, log_every=3, sample_every=100,
                  checkpoint_every=100)
    batches = run._batches(None)
    next(batches)  # the data loader's own first reads are not the loop's
    reads = HostReads(monkeypatch)
    for step in (1, 2):
        run._step(step, batches, run._averages)
    assert reads.count == 0
    run._settle()
    assert 0 < reads.count <= 3  # all the steps' checks at once


def test_skip_mode_reads_each_update_on_the_host_because_it_must_decide_before_applying_it(builtin_registry,
                                                                                          tmp_path, monkeypatch):
    run = trainer(builtin_registry, tmp_path / "run", precision="fp32", nonfinite="skip")
    batches = run._batches(None)
    next(batches)
    reads = HostReads(monkeypatch)
    run._step(1, batches, run._averages)
    assert reads.count >= 2  # one per phase at least: the loss and the gradient verdicts
