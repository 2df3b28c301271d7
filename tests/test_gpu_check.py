"""benchmarks/gpu_check.py, the one command for a GPU machine: harmless without CUDA, every row rehearsed on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          check=False)


def test_without_cuda_it_says_so_and_exits_0_having_run_nothing(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run for real")
    result = gpu_check("--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "no CUDA device here" in result.stdout and "--rehearse" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_row_runs_on_the_cpu_in_rehearsal(tmp_path):
    result = gpu_check("--rehearse", "--tiny", "--steps", "4", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("  ")[0].strip(): line for line in result.stdout.splitlines()[2:] if line[:1].strip()}
    expected = ["environment", "DCGAN fp16", "DCGAN bf16", "DCGAN auto", "2-process data parallel", "UNet-DDIM",
                "generate dcgan-bf16 on cpu", "generate ddim on cpu", "bench on cpu"]
    for name in expected:
        matching = [line for row, line in rows.items() if row.startswith(name)]
        assert matching, f"no row {name!r} in:\n{result.stdout}"
        assert " pass " in matching[0] or (name == "DCGAN fp16" and " skipped " in matching[0]), matching[0]
    assert (tmp_path / "out" / "ddim.onnx").is_file() and (tmp_path / "out" / "dcgan-auto" / "model.onnx").is_file()
