"""Data-parallel training on the CPU with the gloo backend, launched as users launch it (torchrun, --nproc)."""

from __future__ import annotations

import json
import os
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

from .conftest import tiny_config

# A deterministic loss (no noise drawn), so one process with batch 2b and two with b compute the same thing.
PLUGIN = textwrap.dedent('''
    import os
    import time

    import torch
    from aigc_kit.core.plugin_api import (ComponentSpec, DatasetBundle, DatasetInfo, ModelBundle, Options, Phase,
                                          OptimizerSettings, hookimpl)

    if os.environ.get("RANK") == "1" and os.environ.get("ISOLATE_PROCESS_1"):
        os.chdir(os.environ["ISOLATE_PROCESS_1"])  # as on another node: the run directory is not here

    class NetOptions(Options):
        batchnorm: bool = False
        branches: bool = False

    class LossOptions(Options):
        side_branch_in_process: int = -1

    class SlowOptions(Options):
        seconds: float = 1.0

    class Vectors(torch.utils.data.Dataset):
        def __len__(self):
            return 64
        def __getitem__(self, index):
            generator = torch.Generator().manual_seed(index)
            return torch.randn(2, generator=generator)

    class Branches(torch.nn.Module):
        def __init__(self, main):
            super().__init__()
            self.main, self.side, self.unused = main, torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        def forward(self, x):
            return self.main(x)

    class Regression:
        def __init__(self, options):
            self.side_branch_in_process = options.side_branch_in_process
            decay = 0.1 if self.side_branch_in_process >= 0 else 0.0
            self.phases = [Phase("net", trains=("net",), optimizer=OptimizerSettings("sgd", lr=0.1,
                                                                                     weight_decay=decay))]
        def compute(self, phase, batch, bundle, step):
            net = bundle.networks["net"]
            loss = (net(batch) - batch.sin()).square().mean()
            if torch.distributed.is_initialized() and torch.distributed.get_rank() == self.side_branch_in_process:
                loss = loss + net.side(batch).square().mean()  # a branch this process alone takes
            return loss, {}

    class Slow:
        def __init__(self, options):
            self.seconds = options.seconds
        def update(self, samples):
            pass
        def compute(self):
            time.sleep(self.seconds)
            return {"value": 1.0}

    def build_net(options, data_shape=None):
        torch.manual_seed(3)
        layers = [torch.nn.Linear(2, 16)]
        if options.batchnorm:
            layers.append(torch.nn.BatchNorm1d(16))
        layers += [torch.nn.Tanh(), torch.nn.Linear(16, 2)]
        net = torch.nn.Sequential(*layers)
        return ModelBundle({"net": Branches(net) if options.branches else net}, "net", (2,))

    @hookimpl
    def aigc_register_models():
        return [ComponentSpec("net", build_net, "A small regression net.", NetOptions)]

    @hookimpl
    def aigc_register_losses():
        return [ComponentSpec("regression", Regression, "Fit sin(x).", LossOptions)]

    @hookimpl
    def aigc_register_datasets():
        return [ComponentSpec("vectors", lambda options: DatasetBundle(Vectors(), DatasetInfo((2,), preview="scatter")),
                              "Random 2-vectors.")]

    @hookimpl
    def aigc_register_metrics():
        return [ComponentSpec("slow", lambda options, data=None: Slow(options), "Takes its time.", SlowOptions)]

    class StopInProcessOne:
        """Asks for a checkpoint after step 1 and to stop after step 2, in process 1 only; each notes what it heard."""
        def _note(self, run, *event):
            with open(run.run_dir / f"heard-{torch.distributed.get_rank()}.jsonl", "a") as handle:
                handle.write(__import__("json").dumps([run.step, *event]) + "\\n")
        def on_evaluate(self, run, step, values):
            self._note(run, "on_evaluate", values)
        def on_step(self, run, step):
            if step == 1 and torch.distributed.get_rank() == 1:
                run.request_checkpoint()
            if step == 2 and torch.distributed.get_rank() == 1:
                run.request_stop("process 1 has seen enough")
        def on_end(self, run, outcome):
            self._note(run, "on_end", outcome)

    @hookimpl
    def aigc_register_callbacks():
        return [ComponentSpec("stop-in-process-one", lambda options: StopInProcessOne(), "Stops early.")]
''')


def write_run(tmp_path, name: str, batch_size: int, batchnorm: bool, sync: bool, steps: int = 2):
    (tmp_path / "regression_plugin.py").write_text(PLUGIN)
    config = {
        "plugins": ["regression_plugin.py"], "seed": 0, "device": "cpu",
        "data": {"name": "vectors"}, "model": {"name": "net", "batchnorm": batchnorm},
        "loss": {"name": "regression"}, "sampler": {"name": "normal"},
        "train": {"steps": steps, "batch_size": batch_size, "precision": "fp32", "log_every": 1, "sample_every": 100,
                  "sample_count": 4, "checkpoint_every": 1, "progress": False, "sync_batchnorm": sync,
                  "ema": {"enabled": False}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def torchrun(*args: str, nproc: int = 2, cwd=None, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "aigc_kit.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=cwd,
                          env={**os.environ, **(env or {})})


def weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:06d}" / "weights.safetensors")


@pytest.mark.slow
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


@pytest.mark.slow
def test_without_synchronised_batchnorm_each_process_normalises_its_own_half(tmp_path):
    """The check above has teeth: plain BatchNorm over 4 samples per process differs from one batch of 8."""
    result = CliRunner().invoke(cli, ["run", str(write_run(tmp_path, "single", 8, True, False)),
                                      "--output", str(tmp_path / "single")])
    assert result.exit_code == 0, result.output
    result = torchrun("run", str(write_run(tmp_path, "pair", 4, True, False)), "--output", str(tmp_path / "pair"))
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = weights(tmp_path / "single", 1), weights(tmp_path / "pair", 1)
    assert not all(torch.allclose(one[key], two[key], atol=1e-6) for key in one)


@pytest.mark.slow
def test_a_two_process_run_resumes_in_one_process_and_the_nproc_shortcut_launches_torchrun(tmp_path):
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(write_run(tmp_path, "pair", 4, True, True)), "--output",
                                      str(run_dir), "--nproc", "2"])
    assert result.exit_code == 0
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000002"
    # a run folder never runs code: its local plugin is named again to resume it
    resumed = CliRunner().invoke(cli, ["--plugin", str(tmp_path / "regression_plugin.py"), "resume", str(run_dir),
                                       "--set", "train.steps=4"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed after step 2" in resumed.output
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_conditional_gan_trains_in_two_processes_and_each_keeps_its_labels_with_its_samples(tmp_path):
    """Each process's share of a labelled batch keeps its labels: the loss sees the labels of its own samples."""
    (tmp_path / "spy_plugin.py").write_text(textwrap.dedent('''
        import json, os
        import torch
        from aigc_kit.core.plugin_api import ComponentSpec, hookimpl
        from aigc_kit.plugins.datasets.shapes import ShapesDataset
        from aigc_kit.plugins.gan_losses.losses import GanLoss

        def build(options):
            from aigc_kit.testing import isolated_registry
            loss = isolated_registry().create("loss", "gan-bce")
            original = loss.compute
            reference = ShapesDataset(16, 3, 64, seed=0, backgrounds="varied", labels=True)
            kinds = {reference[i]["sample"].numpy().tobytes(): reference[i]["label"] for i in range(64)}

            def compute(phase, batch, bundle, step, conditions=None, sampler=None):
                if phase.name == "discriminator":
                    wanted = [kinds[sample.cpu().numpy().tobytes()] for sample in batch]
                    with open(f"labels-{os.environ['RANK']}.jsonl", "a") as log:
                        log.write(json.dumps([wanted, conditions["label"].tolist()]) + "\\n")
                return original(phase, batch, bundle, step, conditions=conditions, sampler=sampler)

            loss.compute = compute
            return loss

        @hookimpl
        def aigc_register_losses():
            return [ComponentSpec("spy", build, "gan-bce, recording each batch's labels.")]
    '''))
    config = tiny_config(data={"name": "shapes", "resolution": 16, "channels": 3, "size": 64, "labels": True,
                               "seed": 0}, loss={"name": "spy"}, plugins=["spy_plugin.py"])
    config["train"].update(steps=3, ema={"enabled": False})
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    result = torchrun("run", "run.yaml", "--output", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        lines = [json.loads(line) for line in (tmp_path / f"labels-{rank}.jsonl").read_text().splitlines()]
        assert len(lines) == 3 and all(wanted == given and len(given) == 8 for wanted, given in lines), lines  # 8 per process
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000003"


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


@pytest.mark.slow
def test_a_parameter_only_one_process_has_a_gradient_for_is_averaged_with_zeros_and_none_stays_untouched(tmp_path):
    path = write_run(tmp_path, "branches", 4, False, False)
    config = yaml.safe_load(path.read_text())
    config["model"]["branches"] = True
    config["loss"]["side_branch_in_process"] = 1
    path.write_text(yaml.safe_dump(config))
    result = torchrun("run", str(path), "--output", str(tmp_path / "run"))  # before: all-reduces of two sizes
    assert result.returncode == 0, result.stderr[-3000:]
    import importlib.util

    spec = importlib.util.spec_from_file_location("regression_plugin", tmp_path / "regression_plugin.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    initial = plugin.build_net(plugin.NetOptions(branches=True)).networks["net"].state_dict()
    trained = weights(tmp_path / "run", 2)
    assert not torch.equal(trained["networks/net/side.weight"], initial["side.weight"])  # moved: half a gradient
    # No process has a gradient for it: no update at all (a zero gradient would still have decayed it)
    assert torch.equal(trained["networks/net/unused.weight"], initial["unused.weight"])


@pytest.mark.slow
def test_a_resumed_job_reads_the_run_directory_in_process_0_alone(tmp_path):
    """Process 1 runs in a folder without the run directory, as on another node without a shared filesystem."""
    elsewhere = tmp_path / "other-node"
    elsewhere.mkdir()
    config = write_run(tmp_path, "pair", 4, True, True)
    isolated = {"ISOLATE_PROCESS_1": str(elsewhere)}
    first = torchrun("run", config.name, "--output", "pair", cwd=tmp_path, env=isolated)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun("run", config.name, "--output", "pair", "--resume", "--set", "train.steps=4", cwd=tmp_path,
                       env=isolated)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(elsewhere.iterdir())  # process 1 wrote nothing where it runs
    single = CliRunner().invoke(cli, ["run", str(write_run(tmp_path, "single", 8, True, False)), "--output",
                                      str(tmp_path / "single"), "--set", "train.steps=4"])
    assert single.exit_code == 0, single.output
    one, two = weights(tmp_path / "single", 4), weights(tmp_path / "pair", 4)
    assert all(torch.allclose(one[key], two[key], atol=1e-6) for key in one)


def slow_evaluation_run(tmp_path, seconds: float, timeout: float):
    path = write_run(tmp_path, "slow", 4, False, False)
    config = yaml.safe_load(path.read_text())
    config["train"].update(eval_every=1, process_timeout=timeout,
                           eval={"samples": 8, "metrics": [{"name": "slow", "seconds": seconds}]})
    path.write_text(yaml.safe_dump(config))
    return torchrun("run", str(path), "--output", str(tmp_path / f"slow-{seconds}"))


@pytest.mark.slow
def test_a_stop_or_checkpoint_one_process_asks_for_happens_in_every_process_after_the_same_step(tmp_path):
    config = yaml.safe_load(write_run(tmp_path, "stop", batch_size=8, batchnorm=False, sync=False, steps=6).read_text())
    config["train"].update(eval_every=2, eval={"samples": 8, "metrics": [{"name": "slow", "seconds": 0.0}]},
                           checkpoint_every=100)
    config["callbacks"] = [{"name": "stop-in-process-one"}]
    (tmp_path / "stop.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "stop-run"
    done = torchrun("run", str(tmp_path / "stop.yaml"), "--output", str(run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert (run_dir / "checkpoints" / "step-000001").is_dir()  # asked for by process 1 alone
    for rank in (0, 1):  # process 0 evaluated; both heard the same values, and both stopped
        heard = [json.loads(line) for line in (run_dir / f"heard-{rank}.jsonl").read_text().splitlines()]
        assert heard == [[2, "on_evaluate", {"slow/value": 1.0}], [2, "on_end", "stopped"]]


@pytest.mark.slow
def test_processes_wait_for_process_0s_evaluation_within_the_process_timeout_and_no_longer(tmp_path):
    within = slow_evaluation_run(tmp_path, seconds=1.5, timeout=60)
    assert within.returncode == 0, within.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "slow-1.5" / "metrics.jsonl").read_text().splitlines()]
    assert [record["slow/value"] for record in records if "slow/value" in record] == [1.0, 1.0]
    beyond = slow_evaluation_run(tmp_path, seconds=6.0, timeout=1)
    assert beyond.returncode != 0
    assert "timed out" in beyond.stderr.lower() or "timeout" in beyond.stderr.lower()


def test_the_process_timeout_reaches_the_process_group(monkeypatch):
    from datetime import timedelta

    from aigc_kit.core import distributed

    given = {}
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kwargs: given.update(
        backend=backend, **kwargs))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    place = distributed.from_environment(torch.device("cpu"), timeout=1234)
    assert given == {"backend": "gloo", "timeout": timedelta(seconds=1234)} and place.rank == 1


def test_each_process_checkpoints_only_its_own_cuda_devices_random_state(monkeypatch):
    from aigc_kit.core import checkpoint

    own_state = torch.arange(4, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": own_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(state))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)

    def every_device(*args, **kwargs):
        raise AssertionError("read or set every device's state")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_device)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_device)
    state = checkpoint.rng_state()
    assert torch.equal(state["cuda"], own_state)
    checkpoint.set_rng_state(state)
    checkpoint.set_rng_state({**state, "cuda": [torch.zeros(4, dtype=torch.uint8), own_state]})  # an older file
    assert [tensor.tolist() for tensor in restored] == [own_state.tolist(), own_state.tolist()]


def test_the_synchronised_variance_is_exact_for_activations_far_from_zero():
    from aigc_kit.core.distributed import batch_statistics

    x = 1e4 + torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mean, variance, count = batch_statistics(x, lambda tensor: tensor)  # one process: the all-reduce is the identity
    reference = x.double().var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(variance.double(), reference, rtol=1e-4)
    one_pass = x.square().mean(dim=(0, 2, 3)) - x.mean(dim=(0, 2, 3)).square()  # the formula this replaced
    assert not torch.allclose(one_pass.double(), reference, rtol=1e-2)
    assert count.item() == 64 * 16 and torch.allclose(mean.double(), x.double().mean(dim=(0, 2, 3)))


def test_on_cuda_batchnorm_becomes_torchs_own_synchronised_batchnorm():
    network = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.BatchNorm2d(4))
    converted = convert_batchnorm(network, torch.device("cuda"))
    assert type(converted[1]) is torch.nn.SyncBatchNorm
    assert isinstance(convert_batchnorm(torch.nn.BatchNorm1d(3), torch.device("cpu")), SyncBatchNorm)
