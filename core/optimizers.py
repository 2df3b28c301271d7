"""Each loss phase's optimizer: built from the loss's proposal and the config's overrides, with its own gradient
scaler, clipping and learning-rate decay."""

from __future__ import annotations

import math

import torch

from . import distributed
from .config import OptimizerConfig
from .plugin_api import ModelBundle, OptimizerSettings, Phase


class PhaseOptimizer:
    """One phase's optimizer, with its own gradient scaler (fp16) and clipping.

    Each phase has its own scaler: an overflow in the discriminator's gradients
    lowers the discriminator's scale only, and a scaler's growth interval counts
    its own phase's updates.
    """

    def __init__(self, phase: Phase, bundle: ModelBundle, settings: OptimizerSettings,
                 scaler: torch.amp.GradScaler | None, grad_clip: float | None,
                 lr_decay: str = "none", total_steps: int = 1, world_size: int = 1) -> None:
        self.phase = phase
        self.bundle = bundle
        self.parameters = [p for name in phase.trains for p in bundle.networks[name].parameters()]
        self.optimizer = build_optimizer(settings, self.parameters)
        self.scaler = scaler
        self.grad_clip = grad_clip
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(lr_decay, total_steps))
        self.world_size = world_size

    def backward(self, loss: torch.Tensor, first: bool) -> None:
        """Add ``loss``'s gradients (a new update starts at ``first``; later micro-batches accumulate)."""
        if first:
            self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, skip_nonfinite: bool = False) -> torch.Tensor:
        """Apply the accumulated gradients; return whether they were all finite, as a bool tensor on the device.

        Nothing is read back to the host, except with ``skip_nonfinite`` and no
        scaler: then non-finite gradients are dropped instead of applied, which
        needs their verdict on the host before the update. With fp16's scaler,
        an overflowing update is the scaler's to skip (it lowers its scale).
        """
        if self.world_size > 1:
            distributed.average_gradients(self.parameters, self.world_size)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])
        finite = torch.isfinite(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif skip_nonfinite and not finite.item():
            self.optimizer.zero_grad(set_to_none=True)
            return finite
        else:
            self.optimizer.step()
        if self.phase.after_step is not None:
            self.phase.after_step(self.bundle)
        return finite


def lr_factor(decay: str, total_steps: int):
    """The learning-rate multiplier after ``step`` training steps: constant, or decaying to 0 at the end."""
    if decay == "linear":
        return lambda step: max(0.0, 1.0 - step / total_steps)
    if decay == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return lambda step: 1.0


def build_optimizer(settings: OptimizerSettings, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The torch optimizer named by ``settings``."""
    if settings.name == "adam":
        return torch.optim.Adam(parameters, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    if settings.name == "adamw":
        return torch.optim.AdamW(parameters, lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay)
    if settings.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=settings.lr, momentum=settings.momentum,
                                   weight_decay=settings.weight_decay)
    if settings.name == "sgd":
        return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum,
                               weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer {settings.name!r}")


def merge_optimizer(proposed: OptimizerSettings, override: OptimizerConfig | None) -> OptimizerSettings:
    """The loss's proposed optimizer with the config's overrides applied."""
    if override is None:
        return proposed
    changes = {key: value for key, value in override.model_dump().items() if value is not None}
    return OptimizerSettings(**{**proposed.__dict__, **changes})
