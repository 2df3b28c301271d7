"""Devices and precision, including the CUDA paths, exercised on the CPU."""

from __future__ import annotations

import pytest
import torch

from aigc_kit.core import device as devices
from aigc_kit.core.errors import UserError
from aigc_kit.core.run import run

from .conftest import tiny_config


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.select_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert devices.select_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices.select_device("auto") == torch.device("cpu")


def test_asking_for_a_missing_gpu_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA device"):
        devices.select_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="only 1 CUDA devices"):
        devices.select_device("cuda:1")


@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled:UserWarning")
def test_fp16_needs_cuda_and_gets_a_grad_scaler_there():
    with pytest.raises(UserError, match="fp16 training needs a CUDA device"):
        devices.check_precision("fp16", torch.device("cpu"))
    assert devices.make_grad_scaler("bf16", torch.device("cuda")) is None
    assert devices.make_grad_scaler("fp16", torch.device("cpu")) is None
    assert isinstance(devices.make_grad_scaler("fp16", torch.device("cuda")), torch.amp.GradScaler)


def test_bf16_autocast_runs_matmuls_in_bf16_and_fp32_does_not():
    a = torch.randn(4, 4)
    with devices.autocast("bf16", torch.device("cpu")):
        assert (a @ a).dtype == torch.bfloat16
    with devices.autocast("fp32", torch.device("cpu")):
        assert (a @ a).dtype == torch.float32


def test_a_bf16_run_trains_with_finite_losses(tmp_path, write_config, builtin_registry):
    config = tiny_config()
    config["train"]["precision"] = "bf16"
    outcome = run(write_config(config), builtin_registry, output=tmp_path / "run")
    assert outcome.train.last_logs and all(torch.isfinite(torch.tensor(v)) for v in outcome.train.last_logs.values())


def test_same_seed_gives_the_same_run(tmp_path, write_config, builtin_registry):
    path = write_config(tiny_config())
    first = run(path, builtin_registry, output=tmp_path / "a").train.last_logs
    second = run(path, builtin_registry, output=tmp_path / "b").train.last_logs
    assert first == second


def test_channels_last_trains_the_same_weights_as_the_default_layout(builtin_registry, write_config, tmp_path):
    from safetensors.torch import load_file

    path = write_config(tiny_config())
    default = run(path, builtin_registry, output=tmp_path / "default").train.checkpoint
    channels_last = run(path, builtin_registry, output=tmp_path / "channels-last",
                        overrides=["train.channels_last=true"]).train.checkpoint
    one, two = load_file(default / "weights.safetensors"), load_file(channels_last / "weights.safetensors")
    assert one.keys() == two.keys() and all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)


def _compiler_available() -> bool:
    import shutil

    return shutil.which("cc") is not None or shutil.which("gcc") is not None


@pytest.mark.skipif(not _compiler_available(), reason="torch.compile's CPU backend needs a C compiler (none found)")
def test_compile_option_trains_and_checkpoints_under_the_usual_names(builtin_registry, write_config, tmp_path):
    from safetensors.torch import load_file

    config = tiny_config()
    config["train"]["compile"] = True
    outcome = run(write_config(config), builtin_registry, output=tmp_path / "run")
    names = load_file(outcome.train.checkpoint / "weights.safetensors").keys()
    assert names and not any("_orig_mod" in name for name in names)
