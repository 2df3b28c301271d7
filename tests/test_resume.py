"""Exact resume: a run stopped by a signal and resumed computes exactly what the uninterrupted run computes."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from aigc_kit.cli import cli
from aigc_kit.core.data import BatchStream
from aigc_kit.core.errors import UserError
from aigc_kit.core.loop import Interrupted, Trainer
from aigc_kit.core.run import resume, run

from .conftest import tiny_config, tiny_unet_config

TIMING = {"steps_per_second", "seconds"}


def resumable(config: dict) -> dict:
    """Six steps over a 40-sample dataset (5 batches per epoch), two loader workers, logs every step."""
    config["data"]["size"] = 40
    config["train"].update(steps=6, batch_size=8, log_every=2, sample_every=3, checkpoint_every=10,
                           data_workers=2, lr_decay="linear")
    return config


def records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def signal_at(monkeypatch, step_to_stop: int, number: int = signal.SIGTERM) -> None:
    """Send this process ``number`` while step ``step_to_stop`` runs, as `kill` or Ctrl-C would."""
    original = Trainer._step

    def step(self, step, batches, averages):
        if step == step_to_stop:
            os.kill(os.getpid(), number)
        return original(self, step, batches, averages)

    monkeypatch.setattr(Trainer, "_step", step)


LABELLED = {"name": "shapes", "resolution": 16, "channels": 3, "size": 64, "labels": True}


def conditional_gan() -> dict:
    return tiny_config(data=dict(LABELLED))


def guided_unet() -> dict:  # label dropout draws random numbers every step: they must resume too
    return tiny_unet_config(data=dict(LABELLED), sampler={"name": "ddim", "steps": 3, "guidance_scale": 2.0})


@pytest.mark.parametrize("make_config", [tiny_config, tiny_unet_config, conditional_gan, guided_unet],
                         ids=["gan-bce", "diffusion", "conditional-gan", "guided-diffusion"])
def test_a_run_stopped_by_a_signal_and_resumed_matches_the_uninterrupted_run_bit_for_bit(
        make_config, builtin_registry, write_config, tmp_path, monkeypatch):
    path = write_config(resumable(make_config()))
    run(path, builtin_registry, output=tmp_path / "whole")

    with monkeypatch.context() as patch:
        signal_at(patch, 3)
        with pytest.raises(Interrupted) as stopped:
            run(path, builtin_registry, output=tmp_path / "parts")
    assert stopped.value.step == 3 and stopped.value.checkpoint.name == "step-000003"
    torch.manual_seed(12345)  # whatever happens between the two processes must not matter
    resume(tmp_path / "parts", builtin_registry)

    assert records(tmp_path / "parts") == records(tmp_path / "whole")
    whole = load_file(tmp_path / "whole" / "checkpoints" / "step-000006" / "weights.safetensors")
    parts = load_file(tmp_path / "parts" / "checkpoints" / "step-000006" / "weights.safetensors")
    assert whole.keys() == parts.keys() and any(key.startswith("ema/") for key in whole)
    assert all(torch.equal(whole[key], parts[key]) for key in whole)


def test_sigint_checkpoints_the_step_and_the_cli_says_how_to_resume(write_config, tmp_path, monkeypatch):
    signal_at(monkeypatch, 2, signal.SIGINT)
    config = tiny_config()
    config["train"]["checkpoint_every"] = 100
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    result = CliRunner().invoke(cli, ["run", str(write_config(config)), "--output", str(tmp_path / "run")])
    assert result.exit_code == 130, result.output
    assert "after step 2" in result.output and f"aigc-kit resume {tmp_path / 'run'}" in result.output
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handlers are put back

    resumed = CliRunner().invoke(cli, ["resume", str(tmp_path / "run")])
    assert resumed.exit_code == 0, resumed.output
    assert "trained 2 steps" in resumed.output and "resumed after step 2" in resumed.output


def test_sigterm_exits_with_143(write_config, tmp_path, monkeypatch):
    signal_at(monkeypatch, 1, signal.SIGTERM)
    result = CliRunner().invoke(cli, ["run", str(write_config(tiny_config())), "--output", str(tmp_path / "run")])
    assert result.exit_code == 143, result.output


def test_resuming_with_a_changed_model_is_refused_naming_the_differences(builtin_registry, write_config, tmp_path):
    config = tiny_config()
    run(write_config(config), builtin_registry, output=tmp_path / "run")
    config["model"]["width"] = 16
    config["loss"] = {"name": "hinge"}
    config["train"]["steps"] = 8  # allowed on its own
    with pytest.raises(UserError) as error:
        run(write_config(config), builtin_registry, output=tmp_path / "run", resume=True)
    message = str(error.value)
    assert "model.width: 8 -> 16" in message and "loss.name: 'gan-bce' -> 'hinge'" in message
    assert "train.steps" not in message.split("hint")[0]


def test_resuming_with_more_steps_and_other_intervals_continues(builtin_registry, write_config, tmp_path):
    config = tiny_config()
    run(write_config(config), builtin_registry, output=tmp_path / "run")
    config["train"].update(steps=6, log_every=1, sample_every=3)
    outcome = run(write_config(config), builtin_registry, output=tmp_path / "run", resume=True)
    assert outcome.train.resumed_from == 4 and outcome.train.steps == 6
    assert [r["step"] for r in records(tmp_path / "run")] == [2, 4, 5, 6]


def test_resuming_with_nothing_to_resume_starts_the_run_and_says_so_and_a_finished_run_is_refused(
        builtin_registry, write_config, tmp_path):
    """A scheduler that reruns `aigc-kit run CONFIG --resume` after any stop gets the run, started or continued."""
    path = write_config(tiny_config())
    said: list[str] = []
    outcome = run(path, builtin_registry, output=tmp_path / "run", resume=True, say=said.append)
    assert outcome.train.resumed_from == 0 and outcome.train.steps == 4
    assert said[0].startswith("nothing to resume in") and "starting the run from step 1" in said[0]
    with pytest.raises(UserError, match="already reached step 4") as error:
        run(path, builtin_registry, output=tmp_path / "run", resume=True)
    assert error.value.field == "train.steps"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_a_batch_stream_restarted_at_its_position_continues_with_the_same_batches(world_size):
    dataset = torch.arange(50).float()[:, None]

    def streams(position=None):
        return [BatchStream(dataset, 4, seed=7, device=torch.device("cpu"), rank=rank, world_size=world_size,
                            position=position) for rank in range(world_size)]

    def take(ranks, steps):
        return [torch.cat([next(stream).samples for stream in ranks]).flatten().tolist() for _ in range(steps)]

    uninterrupted = take(streams(), 12)
    first = streams()
    before = take(first, 5)
    after = take(streams(first[0].position()), 7)
    assert before + after == uninterrupted
    epoch = [i for batch in uninterrupted[: 50 // (4 * world_size)] for i in batch]
    assert len(set(epoch)) == len(epoch)  # no sample twice within an epoch


def test_the_data_position_is_portable_across_process_counts():
    dataset = torch.arange(48).float()[:, None]
    single = BatchStream(dataset, 8, seed=1, device=torch.device("cpu"))
    seen = [next(single).samples for _ in range(2)]
    pair = [BatchStream(dataset, 4, seed=1, device=torch.device("cpu"), rank=rank, world_size=2,
                        position=single.position()) for rank in range(2)]
    rest = [torch.cat([next(stream).samples for stream in pair]) for _ in range(4)]
    epoch = torch.cat(seen + rest).flatten()
    assert sorted(epoch.tolist()) == list(range(48))  # the epoch completes with each sample once
