"""An exponential moving average of a network's weights."""

from __future__ import annotations

import copy

import torch


class EMA:
    """Keeps ``averaged``, a copy of ``network`` whose parameters and float buffers trail it.

    The decay at step ``t`` is at most ``decay``, ramped up by ``warmup`` so
    that early averages are not dominated by the random initial weights:
    ``"ratio"``, (1 + t) / (10 + t); ``"power"``, 1 - (1 + t) ** -power (with
    the inverse gamma of 1 usual in diffusion training); ``"none"``.
    Float buffers (BatchNorm's running statistics) are averaged the same way
    so that they match the averaged weights.
    """

    def __init__(self, network: torch.nn.Module, decay: float, warmup: str = "ratio", power: float = 0.75) -> None:
        if warmup not in ("none", "ratio", "power"):
            raise ValueError(f"unknown EMA warm-up {warmup!r}")
        self.decay = decay
        self.warmup = warmup
        self.power = power
        self.averaged = copy.deepcopy(network).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        if self.warmup == "ratio":
            return min(self.decay, (1 + step) / (10 + step))
        if self.warmup == "power":
            return min(self.decay, 1 - (1 + step) ** -self.power)
        return self.decay

    @torch.no_grad()
    def update(self, network: torch.nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        averaged = list(self.averaged.parameters())
        current = [p.detach() for p in network.parameters()]
        torch._foreach_lerp_(averaged, current, weight)
        for mine, theirs in zip(self.averaged.buffers(), network.buffers(), strict=True):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs, weight)
            else:
                mine.copy_(theirs)
