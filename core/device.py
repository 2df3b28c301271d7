"""Devices, precision and seeding: the parts of training that depend on the hardware."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from .errors import UserError


def select_device(requested: str) -> torch.device:
    """The device for ``requested``: ``auto`` picks CUDA, then MPS, then the CPU."""
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


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precisions the device cannot run."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError(
            "fp16 training needs a CUDA device",
            field="train.precision",
            given=precision,
            hint="use bf16 on the CPU (fast on CPUs with AMX or AVX-512 BF16) or fp32",
        )


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for a forward pass in ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 on CUDA; bf16 and fp32 need none."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def evaluating(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block and restore their previous modes after it."""
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
