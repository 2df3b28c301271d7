"""Every GPU path of aigc-kit in one command, for the first machine with CUDA: a table of pass/fail and figures.

    python benchmarks/gpu_check.py [--steps 200] [--out runs/gpu-check]

On one GPU it takes a few minutes: short fp16, bf16 and auto DCGAN runs (each
exported to ONNX at the end, as `aigc-kit run` does), data-parallel training
(two processes over NCCL when there are two GPUs, else NCCL's collectives in
one process), a short UNet-DDIM run and its exported sampler, `aigc-kit
generate` on the CUDA provider (and TensorRT, when onnxruntime has it), and
`aigc-kit bench` on the GPU. It exits non-zero if any row fails.

On a machine without CUDA it says so and exits 0 having run nothing heavy.
``--rehearse`` runs the same rows on the CPU instead (gloo for NCCL, the CPU
provider for CUDA, fp32 where fp16 needs a GPU), to check the script itself
anywhere; ``--tiny`` shrinks every model, for that check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = {  # what --tiny sets on top of each example: small images and networks, a few steps
    "dcgan": ["data.resolution=16", "data.size=256", "model.width=8", "train.batch_size=16", "train.sample_count=4"],
    "ddim": ["data.size=256", "model.width=8", "model.channel_multipliers=[1, 2]", "model.attention_resolutions=[8]",
             "model.norm_groups=4", "sampler.steps=4", "train.batch_size=16", "train.sample_count=4"],
}


@dataclass
class Row:
    name: str
    status: str = "pass"  # pass, FAIL or skipped
    figures: str = ""
    detail: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Check:
    """The machine's GPU setup and the options of this check."""

    out: Path
    steps: int
    rehearse: bool
    tiny: bool
    gpus: int
    bf16: bool
    rows: list[Row] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cpu" if self.rehearse else "cuda"

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """``aigc-kit ARGS`` in a fresh process, as a user runs it."""
        return subprocess.run([sys.executable, "-m", "aigc_kit.cli", *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def example(self, name: str, config: str, *changes: str, nproc: int = 1) -> tuple[subprocess.CompletedProcess,
                                                                                       Path]:
        """Train ``examples/CONFIG`` for ``steps`` steps into OUT/NAME, with ``changes`` (``--set`` values)."""
        run_dir = self.out / name
        shutil.rmtree(run_dir, ignore_errors=True)
        family = "ddim" if config.startswith("ddim") else "dcgan"
        settings = [f"train.steps={self.steps}", f"train.log_every={max(1, self.steps // 4)}",
                    f"train.sample_every={self.steps}", f"train.checkpoint_every={self.steps}", "train.progress=false",
                    f"device={self.device}", *(TINY[family] if self.tiny else []), *changes]
        args = ["run", str(EXAMPLES / config), "--output", str(run_dir)]
        args += [part for setting in settings for part in ("--set", setting)]
        if nproc > 1:
            args += ["--nproc", str(nproc)]
        return self.cli(*args), run_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="Training steps of each short run.")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="Where the runs and exports go.")
    parser.add_argument("--rehearse", action="store_true", help="Run every row on the CPU (checks this script).")
    parser.add_argument("--tiny", action="store_true", help="Shrink every model (with --rehearse, for a quick check).")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.rehearse:
        print(f"no CUDA device here (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}): nothing "
              "to check. Run this on a machine with a GPU, or pass --rehearse to run the same rows on the CPU.")
        return 0
    from aigc_kit.core.device import native_bf16_gpu

    gpus = torch.cuda.device_count() if not args.rehearse else 0
    check = Check(out=args.out, steps=args.steps, rehearse=args.rehearse, tiny=args.tiny, gpus=gpus,
                  bf16=bool(gpus) and native_bf16_gpu(torch.device("cuda", 0)))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    steps = [lambda: [environment_row(check)], *[lambda p=precision: [dcgan_row(check, p)]
                                                 for precision in ("fp16", "bf16", "auto")],
             lambda: [data_parallel_row(check)], lambda: [ddim_row(check)], lambda: generate_rows(check),
             lambda: [bench_row(check)]]
    for step in steps:
        began = time.perf_counter()
        rows = step()
        for row in rows:
            row.seconds = (time.perf_counter() - began) / len(rows)
        check.rows.extend(rows)
    print(table(check.rows))
    print(f"{time.perf_counter() - started:.0f} s in all; runs and exports in {args.out}")
    return 1 if any(row.status == "FAIL" for row in check.rows) else 0


def environment_row(check: Check) -> Row:
    import onnxruntime
    import torch

    providers = onnxruntime.get_available_providers()
    if check.rehearse:
        return Row("environment", figures=f"rehearsal on the CPU; torch {torch.__version__}; "
                                          f"onnxruntime {onnxruntime.__version__} ({', '.join(providers)})")
    names = ", ".join(torch.cuda.get_device_name(index) for index in range(check.gpus))
    row = Row("environment", figures=f"{check.gpus} GPU(s): {names}; CUDA {torch.version.cuda}; bf16: {check.bf16}; "
                                     f"torch {torch.__version__}; onnxruntime {onnxruntime.__version__}")
    if "CUDAExecutionProvider" not in providers:
        row.status = "FAIL"
        row.detail.append(f"onnxruntime has no CUDA provider ({providers}): pip install 'aigc-kit[gpu]' "
                          "(onnxruntime-gpu alone, not beside onnxruntime)")
    return row


def dcgan_row(check: Check, precision: str) -> Row:
    row = Row(f"DCGAN {precision}, {check.steps} steps + export")
    if precision == "fp16" and check.rehearse:
        return Row(row.name, "skipped", "fp16 training needs a GPU")
    if precision == "bf16" and not check.rehearse and not check.bf16:
        return Row(row.name, "skipped", "this GPU has no native bf16")
    result, run_dir = check.example(f"dcgan-{precision}", "dcgan-shapes.yaml", f"train.precision={precision}")
    if not passed(row, result):
        return row
    environment = json.loads((run_dir / "environment.json").read_text())
    chosen = environment["precision"]["precision"]
    expected = {"fp16": "fp16", "bf16": "bf16"}.get(precision) or expected_auto(check)
    records = metrics(run_dir)
    skipped = records[-1].get("skipped_updates", 0)
    row.figures = (f"{records[-1]['steps_per_second']:.1f} steps/s, precision {chosen}, {skipped} skipped updates, "
                   f"export max abs error {export_error(check, run_dir / 'model.onnx')}")
    if chosen != expected:
        row.status = "FAIL"
        row.detail.append(f"trained in {chosen}, expected {expected} ({environment['precision']['reason']})")
    if precision == "fp16" and skipped >= check.steps:
        row.status = "FAIL"
        row.detail.append("the gradient scaler skipped every update")
    return row


def expected_auto(check: Check) -> str:
    if check.rehearse:
        from aigc_kit.core.device import native_bf16_cpu

        return "bf16" if native_bf16_cpu()[0] else "fp32"
    return "bf16" if check.bf16 else "fp16"


def data_parallel_row(check: Check) -> Row:
    if check.gpus >= 2 or check.rehearse:
        backend = "gloo" if check.rehearse else "NCCL"
        row = Row(f"2-process data parallel ({backend}), SyncBatchNorm")
        result, run_dir = check.example("dcgan-ddp", "dcgan-shapes.yaml", "train.sync_batchnorm=true",
                                        "train.precision=auto", "export=null", nproc=2)
        if passed(row, result):
            records = metrics(run_dir)
            row.figures = f"{records[-1]['steps_per_second']:.1f} steps/s over 2 processes"
        return row
    return nccl_one_process_row(check)


NCCL_PROBE = textwrap.dedent("""
    import os
    import torch
    import torch.distributed as dist
    from aigc_kit.core import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1")
    torch.cuda.set_device(0)
    dist.init_process_group("nccl")
    layer = torch.nn.Linear(4, 4).cuda()
    layer(torch.randn(8, 4, device="cuda")).square().mean().backward()
    before = layer.weight.grad.clone()
    distributed.average_gradients(list(layer.parameters()), 1)
    assert torch.allclose(before, layer.weight.grad)
    network = distributed.convert_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)),
                                            torch.device("cuda")).cuda()
    assert isinstance(network[1], torch.nn.SyncBatchNorm)
    network(torch.randn(4, 3, 8, 8, device="cuda")).sum().backward()
    value = torch.ones(3, device="cuda")
    dist.all_reduce(value)
    assert value.tolist() == [1.0, 1.0, 1.0]
    dist.destroy_process_group()
    print("ok")
""")


def nccl_one_process_row(check: Check) -> Row:
    row = Row("NCCL in one process (one GPU: no 2-process run)")
    result = subprocess.run([sys.executable, "-c", NCCL_PROBE], capture_output=True, text=True, timeout=300,
                            check=False)
    if result.returncode != 0 or "ok" not in result.stdout:
        row.status = "FAIL"
        row.detail.append(last_lines(result.stderr))
    else:
        row.figures = "all-reduce, gradient averaging and torch's SyncBatchNorm run"
    return row


def ddim_row(check: Check) -> Row:
    row = Row(f"UNet-DDIM, {check.steps} steps + sampler export")
    result, run_dir = check.example("ddim", "ddim-shapes.yaml", "train.precision=auto")
    if not passed(row, result):
        return row
    exported = check.cli("export", str(run_dir), "--out", str(check.out / "ddim.onnx"))
    if not passed(row, exported):
        return row
    records = metrics(run_dir)
    row.figures = (f"{records[-1]['steps_per_second']:.1f} steps/s; sampler max abs error "
                   f"{export_error(check, check.out / 'ddim.onnx')}")
    return row


def generate_rows(check: Check) -> list[Row]:
    import onnxruntime

    provider = "cpu" if check.rehearse else "cuda"
    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
    cases = [(provider, "dcgan-fp16" if not check.rehearse else "dcgan-bf16"), (provider, "ddim")]
    if not check.rehearse:
        cases.append(("tensorrt", "dcgan-fp16"))
    rows = []
    for providers, source in cases:
        model = check.out / (f"{source}/model.onnx" if source.startswith("dcgan") else f"{source}.onnx")
        row = Row(f"generate {source} on {providers}")
        if providers == "tensorrt" and wanted["tensorrt"] not in onnxruntime.get_available_providers():
            rows.append(Row(row.name, "skipped", "onnxruntime has no TensorRT provider here"))
            continue
        if not model.is_file():
            rows.append(Row(row.name, "FAIL", f"no {model} (its run failed above)"))
            continue
        started = time.perf_counter()
        result = check.cli("generate", str(model), "-n", "64", "--out", str(check.out / f"{source}-{providers}.png"),
                           "--providers", providers)
        seconds = time.perf_counter() - started
        if passed(row, result):
            ran = result.stdout.split(" on ")[-1].split()[0] if " on " in result.stdout else "?"
            row.figures = f"64 images in {seconds:.1f} s (with start-up) on {ran}"
            if ran != wanted[providers] or "warning" in result.stderr:
                row.status = "FAIL"
                row.detail.append(f"asked for {wanted[providers]}, ran on {ran}: {last_lines(result.stderr)}")
        rows.append(row)
    return rows


def bench_row(check: Check) -> Row:
    row = Row(f"bench on {check.device}")
    source = check.out / ("dcgan-fp16" if not check.rehearse else "dcgan-bf16")
    if not source.is_dir():
        return Row(row.name, "FAIL", f"no {source} (its run failed above)")
    batch = 8 if check.tiny else 64
    result = check.cli("bench", str(source), "--device", check.device, "--batch-sizes", f"1,{batch}", "--repeats",
                       "3" if check.tiny else "5", "--precisions", "fp32,fp16", "--no-compile", "--json")
    if not passed(row, result):
        return row
    report = json.loads(result.stdout)
    fastest = {timing["path"]: timing["images_per_second"] for timing in report["timings"]
               if timing["batch_size"] == batch}
    best = max(fastest, key=fastest.get)
    row.figures = (f"batch {batch}: fastest {best} ({fastest[best]:.0f} images/s); eager fp32 "
                   f"{fastest.get('torch eager fp32', float('nan')):.0f} images/s")
    return row


def passed(row: Row, result: subprocess.CompletedProcess) -> bool:
    if result.returncode == 0:
        return True
    row.status = "FAIL"
    row.detail.append(f"exit {result.returncode}: {last_lines(result.stderr or result.stdout)}")
    return False


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def export_error(check: Check, model: Path) -> str:
    result = check.cli("inspect", str(model), "--json")
    if result.returncode != 0:
        return "? (inspect failed)"
    return f"{json.loads(result.stdout).get('validation', {}).get('max_abs_error', float('nan')):.2g}"


def last_lines(text: str, count: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:])


def table(rows: list[Row]) -> str:
    width = max(len(row.name) for row in rows)
    lines = [f"{'check':<{width}}  {'status':<7}  {'seconds':>7}  figures",
             f"{'-' * width}  {'-' * 7}  {'-' * 7}  {'-' * 7}"]
    for row in rows:
        lines.append(f"{row.name:<{width}}  {row.status:<7}  {row.seconds:>7.1f}  {row.figures}")
        lines.extend(f"{'':<{width}}  {'':<7}  {'':>7}  {detail}" for detail in row.detail)
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
