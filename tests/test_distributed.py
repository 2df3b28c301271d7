"""Data-parallel training on the CPU with the gloo backend, launched as users launch it (torchrun, --nproc)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from aigc_kit.cli import cli
from aigc_kit.core.distributed import SyncBatchNorm, convert_batchnorm

# A deterministic loss (no noise drawn), so one process with batch 2b and two with b compute the same thing.
PLUGIN = textwrap.dedent('''
    import torch
    from aigc_kit.core.plugin_api import (ComponentSpec, DatasetBundle, DatasetInfo, ModelBundle, Options, Phase,
                                          OptimizerSettings, hookimpl)

    class NetOptions(Options):
        batchnorm: bool = False

    class Vectors(torch.utils.data.Dataset):
        def __len__(self):
            return 64
        def __getitem__(self, index):
            generator = torch.Generator().manual_seed(index)
            return torch.randn(2, generator=generator)

    class Regression:
        phases = [Phase("net", trains=("net",), optimizer=OptimizerSettings("sgd", lr=0.1))]
        def compute(self, phase, batch, bundle, step):
            prediction = bundle.networks["net"](batch)
            return (prediction - batch.sin()).square().mean(), {}

    def build_net(options, data_shape=None):
        torch.manual_seed(3)
        layers = [torch.nn.Linear(2, 16)]
        if options.batchnorm:
            layers.append(torch.nn.BatchNorm1d(16))
        layers += [torch.nn.Tanh(), torch.nn.Linear(16, 2)]
        return ModelBundle({"net": torch.nn.Sequential(*layers)}, "net", (2,))

    @hookimpl
    def aigc_register_models():
        return [ComponentSpec("net", build_net, "A small regression net.", NetOptions)]

    @hookimpl
    def aigc_register_losses():
        return [ComponentSpec("regression", lambda options: Regression(), "Fit sin(x).")]

    @hookimpl
    def aigc_register_datasets():
        return [ComponentSpec("vectors", lambda options: DatasetBundle(Vectors(), DatasetInfo((2,), preview="scatter")),
                              "Random 2-vectors.")]
''')


def write_run(tmp_path, name: str, batch_size: int, batchnorm: bool, sync: bool, steps: int = 2):
    (tmp_path / "regression_plugin.py").write_text(PLUGIN)
    config = {
        "plugins": ["regression_plugin.py"], "seed": 0, "device": "cpu",
        "data": {"name": "vectors"}, "model": {"name": "net", "batchnorm": batchnorm},
        "loss": {"name": "regression"}, "sampler": {"name": "normal"},
        "train": {"steps": steps, "batch_size": batch_size, "log_every": 1, "sample_every": 100, "sample_count": 4,
                  "checkpoint_every": 1, "progress": False, "sync_batchnorm": sync, "ema": {"enabled": False}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "aigc_kit.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "weights.safetensors")


@pytest.mark.parametrize("batchnorm", [False, True], ids=["no-batchnorm", "sync-batchnorm"])
def test_two_processes_with_batch_b_train_like_one_process_with_batch_2b(tmp_path, batchnorm):
    single = tmp_path / "single"
    result = CliRunner().invoke(cli, ["run", str(write_run(tmp_path, "single", 8, batchnorm, False)),
                                      "--output", str(single)])
    assert result.exit_code == 0, result.output
    pair = tmp_path / "pair"
    result = torchrun("run", str(write_run(tmp_path, "pair", 4, batchnorm, True)), "--output", str(pair))
    assert result.returncode == 0, result.stderr[-3000:]
    for step in (1, 2):
        one, two = weights(single, step), weights(pair, step)
        assert one.keys() == two.keys()
        assert all(torch.allclose(one[key], two[key], atol=1e-6) for key in one), step
    logged = [json.loads(line) for line in (pair / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]  # process 0 alone writes
    assert [r["net/loss"] for r in logged] == pytest.approx([r["net/loss"] for r in expected], abs=1e-5)


def test_without_synchronised_batchnorm_each_process_normalises_its_own_half(tmp_path):
    """The check above has teeth: plain BatchNorm over 4 samples per process differs from one batch of 8."""
    result = CliRunner().invoke(cli, ["run", str(write_run(tmp_path, "single", 8, True, False)),
                                      "--output", str(tmp_path / "single")])
    assert result.exit_code == 0, result.output
    result = torchrun("run", str(write_run(tmp_path, "pair", 4, True, False)), "--output", str(tmp_path / "pair"))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = weights(tmp_path / "single", 1), weights(tmp_path / "pair", 1)
    assert not all(torch.allclose(one[key], two[key], atol=1e-6) for key in one)


def test_a_two_process_run_resumes_in_one_process_and_the_nproc_shortcut_launches_torchrun(tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(write_run(tmp_path, "pair", 4, True, True)), "--output",
                                      str(run_dir), "--nproc", "2"])
    assert result.exit_code == 0
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000002"
    resumed = CliRunner().invoke(cli, ["resume", str(run_dir), "--set", "train.steps=4"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed after step 2" in resumed.output
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_sync_batchnorm_in_one_process_is_plain_batchnorm():
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.BatchNorm2d(4))
    synced = convert_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.BatchNorm2d(4)))
    synced.load_state_dict(plain.state_dict())
    assert isinstance(synced[1], SyncBatchNorm)
    x = torch.randn(5, 2, 3, 3)
    assert torch.allclose(plain(x), synced(x))


def test_accumulating_two_batches_of_b_updates_like_one_batch_of_2b(tmp_path):
    single = CliRunner().invoke(cli, ["run", str(write_run(tmp_path, "single", 8, False, False)),
                                      "--output", str(tmp_path / "single")])
    assert single.exit_code == 0, single.output
    path = write_run(tmp_path, "accumulated", 4, False, False)
    accumulated = CliRunner().invoke(cli, ["run", str(path), "--output", str(tmp_path / "accumulated"),
                                           "--set", "train.accumulate=2"])
    assert accumulated.exit_code == 0, accumulated.output
    one, two = weights(tmp_path / "single", 2), weights(tmp_path / "accumulated", 2)
    assert all(torch.allclose(one[key], two[key], atol=1e-6) for key in one)
