"""Devices, precision and seeding: the parts of training that depend on the hardware."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .errors import UserError


def select_device(requested: str) -> torch.device:
    """The device for ``requested``: ``auto`` picks CUDA, then MPS, then the CPU."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", requested):
        raise UserError("unknown device", field="device", expected="auto, cpu, cuda, cuda:N or mps", given=requested)
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                "CUDA was asked for but torch sees no CUDA device",
                field="device",
                given=requested,
                hint="use device: auto or cpu, or install a CUDA build of torch",
            )
        device = torch.device(requested)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"there are only {torch.cuda.device_count()} CUDA devices",
                field="device",
                given=requested,
            )
        return device
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("MPS was asked for but is not available", field="device", given=requested)
    return torch.device(requested)


_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16")
"""oneDNN's CPU instruction sets in increasing order, up to the first with bf16 dot products (the later ones have
them too)."""


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in (fp32, bf16 or fp16), what the config asked for, and why."""

    precision: str
    requested: str
    reason: str

    def describe(self) -> str:
        """For example ``fp32 (auto: this CPU has no native bf16 ...)`` or ``bf16 (as the config asks)``."""
        return f"{self.precision} ({'auto: ' if self.requested == 'auto' else ''}{self.reason})"

    def as_dict(self) -> dict[str, str]:
        return {"precision": self.precision, "requested": self.requested, "reason": self.reason}


class PrecisionWarning(UserWarning):
    """A precision that runs, but far slower than another would on this hardware."""


def native_bf16_cpu() -> tuple[bool, str]:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm), and how we know.

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also
    says yes on plain AVX-512 CPUs, where it emulates bf16 and a DCGAN step
    runs 1.7x slower than in fp32 (docs/benchmarks.md), so on x86 the CPU's
    instruction set is asked as well, and a cap the user set with
    ``ONEDNN_MAX_CPU_ISA`` is respected.
    """
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if x86 and cap in _ONEDNN_ISAS[:-1]:
        return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN from native bf16 instructions, so bf16 would be emulated"
    onednn_check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    emulated = "this CPU has no native bf16 (neither AVX-512 BF16 nor AMX), so bf16 would be emulated"
    if onednn_check is None or not onednn_check():
        return False, emulated
    if not x86:
        return True, "oneDNN reports bf16 instructions on this CPU"
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    if amx or avx512_bf16:
        return True, f"this CPU has {'AMX' if amx else 'AVX-512 BF16'}"
    return False, emulated


def resolve_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """The precision to train in on ``device``: ``requested`` itself, or what ``auto`` picks there.

    ``auto``: bf16 on a CUDA device that computes it natively (Ampere and
    later), fp16 (with a gradient scaler) on an older one; bf16 on a CPU with native bf16, fp32 on other
    CPUs (emulated bf16 ran a DCGAN step about 20x slower than fp32 on an
    AVX2 CPU); fp32 on MPS, whose autocast coverage and bf16 support depend on
    the macOS version (ask for fp16 or bf16 there explicitly).
    """
    if requested != "auto":
        return PrecisionChoice(requested, requested, "as the config asks")
    if device.type == "cuda":
        if native_bf16_gpu(device):
            return PrecisionChoice("bf16", "auto", f"{_gpu_name(device)} computes bf16 natively")
        return PrecisionChoice("fp16", "auto", f"{_gpu_name(device)} has no native bf16; fp16 with a gradient scaler")
    if device.type == "cpu":
        native, why = native_bf16_cpu()
        return PrecisionChoice("bf16" if native else "fp32", "auto", why)
    return PrecisionChoice("fp32", "auto", f"autocast is not chosen automatically on {device.type}; "
                                           "set train.precision to fp16 or bf16 to try it")


def native_bf16_gpu(device: torch.device) -> bool:
    """Whether the CUDA device computes bf16 natively: compute capability 8.0 (Ampere) or later, or ROCm.

    Not ``torch.cuda.is_bf16_supported()`` as called by default: it also says
    yes where bf16 is only emulated (``including_emulation=True``), and it
    asks the current device rather than ``device``.
    """
    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(device).major >= 8


def _gpu_name(device: torch.device) -> str:
    try:
        return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError, AttributeError):
        return "this CUDA device"


def check_precision(choice: PrecisionChoice, device: torch.device) -> None:
    """Refuse precisions the device cannot run; warn (once) about bf16 that this CPU only emulates."""
    precision = choice.precision
    if precision == "fp16" and device.type not in ("cuda", "mps"):
        raise UserError(
            "fp16 training needs a CUDA (or MPS) device",
            field="train.precision",
            given=precision,
            hint="use precision: auto (bf16 on CPUs with native bf16, fp32 on the others)",
        )
    if precision == "bf16" and device.type == "cpu":
        native, why = native_bf16_cpu()
        if native:
            return
        if choice.requested == "bf16":
            advice = "Set train.precision: auto to train in fp32 here"
        else:  # auto, resumed: the run trained in bf16 on another machine
            advice = "The run trained in bf16 until now; continue in fp32 with --set train.precision=fp32"
        warnings.warn(f"training in bf16, but {why}: a DCGAN step measured about 20x slower than in fp32 on such "
                      f"a CPU (docs/benchmarks.md). {advice}", PrecisionWarning, stacklevel=2)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a forward pass in ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (on any device torch has one for: CUDA, MPS, and the CPU, which tests use)."""
    if precision == "fp16":
        return torch.amp.GradScaler(device.type)
    return None


SEED_STRIDE = 1_000_003
"""A prime that keeps derived seeds apart: ``seed + SEED_STRIDE * rank`` (each process's) and ``seed * SEED_STRIDE +
epoch`` (each epoch's order) never meet for any other seed, rank or epoch a run uses."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block and restore their previous modes after it."""
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)
