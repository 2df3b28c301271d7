"""An exponential moving average of a network's weights."""

from __future__ import annotations

import copy

import torch


class EMA:
    """Keeps ``averaged``, a copy of ``network`` whose parameters and float buffers trail it.

    The decay at step ``t`` is ``min(decay, (1 + t) / (10 + t))`` when
    ``warmup`` is on, so that early averages are not dominated by the random
    initial weights. Float buffers (BatchNorm's running statistics) are
    averaged the same way so that they match the averaged weights.
    """

    def __init__(self, network: torch.nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.averaged = copy.deepcopy(network).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, network: torch.nn.Module, step: int) -> None:
        weight = 1.0 - self.decay_at(step)
        averaged = list(self.averaged.parameters())
        current = [p.detach() for p in network.parameters()]
        torch._foreach_lerp_(averaged, current, weight)
        for mine, theirs in zip(self.averaged.buffers(), network.buffers()):
            if mine.dtype.is_floating_point:
                mine.lerp_(theirs, weight)
            else:
                mine.copy_(theirs)
