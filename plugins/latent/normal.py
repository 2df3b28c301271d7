"""A latent sampler for generators that map z straight to a sample."""

from __future__ import annotations

import torch


class NormalSampler:
    """``noise`` draws z ~ N(0, I), redrawing entries beyond ``truncation``; ``sample`` is ``network(z)``."""

    def __init__(self, truncation: float | None = None) -> None:
        self.truncation = truncation

    def noise(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
        z = torch.randn(n, *shape, generator=generator)
        if self.truncation is not None:
            outside = z.abs() > self.truncation
            while outside.any():
                z[outside] = torch.randn(int(outside.sum()), generator=generator)
                outside = z.abs() > self.truncation
        return z.to(device) if device is not None else z

    def sample(self, network: torch.nn.Module, noise: torch.Tensor, generator: torch.Generator | None = None):
        return network(noise)
