"""Devices and precision, including the CUDA paths, exercised on the CPU."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch
import yaml
from click.testing import CliRunner

from aigc_kit.cli import cli
from aigc_kit.core import device as devices
from aigc_kit.core.components import build_components
from aigc_kit.core.config import parse_config
from aigc_kit.core.ema import EMA
from aigc_kit.core.errors import UserError
from aigc_kit.core.loop import Trainer
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


def test_fp16_needs_a_gpu_and_every_device_torch_scales_for_gets_a_grad_scaler():
    with pytest.raises(UserError, match="fp16 training needs a CUDA"):
        devices.check_precision(devices.PrecisionChoice("fp16", "fp16", "as the config asks"), torch.device("cpu"))
    assert devices.make_grad_scaler("bf16", torch.device("cpu")) is None
    assert devices.make_grad_scaler("fp32", torch.device("cpu")) is None
    scaler = devices.make_grad_scaler("fp16", torch.device("cpu"))
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()


def test_bf16_autocast_runs_matmuls_in_bf16_and_fp32_does_not():
    a = torch.randn(4, 4)
    with devices.autocast("bf16", torch.device("cpu")):
        assert (a @ a).dtype == torch.bfloat16
    with devices.autocast("fp32", torch.device("cpu")):
        assert (a @ a).dtype == torch.float32


# -- precision: auto ------------------------------------------------------------------------------------------------

def cpu_probes(monkeypatch, *, onednn: bool, avx512_bf16: bool = False, amx: bool = False, machine: str = "x86_64"):
    """Make this CPU look like another one to the precision probes."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(devices.platform, "machine", lambda: machine)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


@pytest.mark.parametrize(("probes", "expected"), [
    ({"onednn": False}, "fp32"),                                  # AVX2 only: oneDNN has no bf16 at all
    ({"onednn": True}, "fp32"),                                   # plain AVX-512: oneDNN emulates bf16
    ({"onednn": True, "avx512_bf16": True}, "bf16"),
    ({"onednn": True, "amx": True}, "bf16"),
    ({"onednn": True, "machine": "aarch64"}, "bf16"),             # Arm: oneDNN says yes only with BF16 instructions
], ids=["avx2", "avx512-without-bf16", "avx512-bf16", "amx", "arm-bf16"])
def test_auto_trains_a_cpu_in_bf16_only_where_it_computes_bf16_natively(monkeypatch, probes, expected):
    cpu_probes(monkeypatch, **probes)
    choice = devices.resolve_precision("auto", torch.device("cpu"))
    assert (choice.precision, choice.requested) == (expected, "auto")
    assert choice.reason


def test_a_onednn_cap_the_user_set_keeps_auto_in_fp32(monkeypatch):
    cpu_probes(monkeypatch, onednn=True, avx512_bf16=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")
    choice = devices.resolve_precision("auto", torch.device("cpu"))
    assert choice.precision == "fp32" and "ONEDNN_MAX_CPU_ISA=AVX512_CORE" in choice.reason


def test_auto_on_cuda_is_bf16_from_ampere_on_else_fp16_and_on_mps_fp32(monkeypatch):
    class Properties:
        major = 8

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Properties())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # says yes if emulated too
    monkeypatch.setattr(torch.version, "hip", None)
    assert devices.resolve_precision("auto", torch.device("cuda")).precision == "bf16"
    Properties.major = 7  # Volta, Turing: bf16 only emulated
    older = devices.resolve_precision("auto", torch.device("cuda:1"))
    assert older.precision == "fp16" and "Test GPU" in older.reason
    assert devices.resolve_precision("auto", torch.device("mps")).precision == "fp32"
    assert devices.resolve_precision("bf16", torch.device("cuda")).precision == "bf16"  # asked for: kept


def test_asking_for_bf16_on_a_cpu_without_it_warns_once_with_the_way_out(monkeypatch):
    cpu_probes(monkeypatch, onednn=False)
    with pytest.warns(devices.PrecisionWarning, match="20x slower.*precision: auto"):
        devices.check_precision(devices.resolve_precision("bf16", torch.device("cpu")), torch.device("cpu"))
    cpu_probes(monkeypatch, onednn=True, amx=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        devices.check_precision(devices.resolve_precision("bf16", torch.device("cpu")), torch.device("cpu"))


def test_the_cli_says_the_warning_in_one_line_and_still_trains(monkeypatch, tmp_path, write_config):
    cpu_probes(monkeypatch, onednn=False)
    config = tiny_config()
    config["train"]["precision"] = "bf16"
    result = CliRunner().invoke(cli, ["run", str(write_config(config)), "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    warnings_shown = [line for line in result.stderr.splitlines() if "20x slower" in line]
    assert len(warnings_shown) == 1 and warnings_shown[0].startswith("warning: training in bf16")
    assert "precision bf16 (as the config asks)" in result.stdout.splitlines()[0]


def test_a_run_says_records_and_keeps_what_auto_picked(monkeypatch, tmp_path, write_config):
    cpu_probes(monkeypatch, onednn=False)
    config = tiny_config()
    config["train"]["precision"] = "auto"
    path = write_config(config)
    result = CliRunner().invoke(cli, ["run", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("training 4 steps on cpu; precision fp32 (auto: this CPU has no native bf16")
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["precision"]["precision"] == "fp32" and environment["precision"]["requested"] == "auto"
    assert environment["cpu"]["native_bf16"] is False
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["train"]["precision"] == "fp32"

    # The same run resumed on a CPU where auto would pick bf16 goes on in fp32, and says why.
    cpu_probes(monkeypatch, onednn=True, amx=True)
    resumed = CliRunner().invoke(cli, ["run", str(path), "--output", str(tmp_path / "run"), "--resume",
                                       "--set", "train.steps=6"])
    assert resumed.exit_code == 0, resumed.output
    assert "precision fp32 (auto: the run trained in fp32 until now (auto alone would pick bf16 here" in resumed.output
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["precision"]["precision"] == "fp32"


@pytest.mark.slow
def test_a_cpu_capped_to_avx2_resolves_auto_to_fp32_and_onednn_agrees(tmp_path, write_config):
    """The cap docs/benchmarks.md uses to measure a CPU without native bf16: oneDNN itself then reports no bf16."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"ONEDNN_MAX_CPU_ISA=AVX2 describes an x86 CPU; this machine is {platform.machine()}")
    config = tiny_config()
    config["train"]["precision"] = "auto"
    path = write_config(config)
    environment = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    result = subprocess.run([sys.executable, "-m", "aigc_kit.cli", "validate", str(path)], capture_output=True,
                            text=True, env=environment, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "in fp32 (auto: ONEDNN_MAX_CPU_ISA=AVX2" in result.stdout
    onednn = subprocess.run([sys.executable, "-c", "import torch; print(torch.ops.mkldnn._is_mkldnn_bf16_supported())"],
                            capture_output=True, text=True, env=environment, timeout=120, check=True)
    assert onednn.stdout.strip() == "False"


def test_the_training_step_runs_under_the_precision_it_resolved(builtin_registry, tmp_path):
    seen: dict[str, set] = {}
    for precision in ("fp32", "bf16"):
        config = tiny_config()
        config["train"].update(precision=precision, steps=1)
        loaded = parse_config(config, builtin_registry)
        components = build_components(loaded, builtin_registry)
        dtypes: set = set()
        first_layer = next(m for m in components.model.networks["generator"].modules()
                           if isinstance(m, torch.nn.ConvTranspose2d | torch.nn.Linear))
        first_layer.register_forward_hook(  # in training only (sample pictures come from the EMA copy, in eval mode)
            lambda module, args, output, found=dtypes: found.add(output.dtype) if module.training else None)
        (tmp_path / precision).mkdir()
        Trainer(components, loaded.config, loaded.resolved(), tmp_path / precision, torch.device("cpu")).fit()
        seen[precision] = dtypes
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}


def test_the_ema_of_a_known_sequence_of_weights_is_its_closed_form():
    """averaged_n = d^n w_0 + sum_k (1 - d) d^(n-k) w_k, with d the (warm-up free) decay."""
    network = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(network.weight, 2.0)
    ema = EMA(network, decay=0.9, warmup="none")
    weights = [2.0, 5.0, -1.0, 3.0, 0.5]
    for step, value in enumerate(weights[1:], start=1):
        torch.nn.init.constant_(network.weight, value)
        ema.update(network, step)
    n, d = len(weights) - 1, 0.9
    expected = d**n * weights[0] + sum((1 - d) * d ** (n - k) * weights[k] for k in range(1, n + 1))
    assert ema.averaged.weight.item() == pytest.approx(expected, rel=1e-6)
    warming = EMA(torch.nn.Linear(1, 1), decay=0.999, warmup="power", power=0.75)
    assert warming.decay_at(9) == pytest.approx(1 - 10 ** -0.75)
    assert EMA(torch.nn.Linear(1, 1), decay=0.999).decay_at(0) == pytest.approx(0.1)


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


def test_compile_is_ignored_on_the_cpu_with_a_warning_and_the_run_trains(builtin_registry, write_config, tmp_path):
    # torch 2.13's CPU compiler (inductor) turned the tiny DCGAN's losses into NaN at the first step on AVX2 CPUs
    # (ATEN_CPU_CAPABILITY=avx2 reproduces it on others), so a run compiles on CUDA devices only.
    config = tiny_config()
    config["train"]["compile"] = True
    with pytest.warns(UserWarning, match="train.compile is ignored on the CPU"):
        outcome = run(write_config(config), builtin_registry, output=tmp_path / "run")
    assert outcome.train.steps == 4 and all(math.isfinite(value) for value in outcome.train.last_logs.values())
