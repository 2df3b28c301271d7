"""A latent sampler for generators that map z straight to a sample."""

from __future__ import annotations

import torch


class NormalSampler:
    """``noise`` draws z ~ N(0, I), redrawing entries beyond ``truncation``; ``sample`` is ``network(z)``."""

    def __init__(self, truncation: float | None = None) -> None:
        self.truncation = truncation

    @property
    def prior(self) -> dict[str, object]:
        """The noise :meth:`noise` draws, as an export's metadata records it for runtimes that draw their own."""
        return {"kind": "normal", **({"truncation": self.truncation} if self.truncation is not None else {})}

    def noise(self, n: int, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> torch.Tensor:
        z = torch.randn(n, *shape, generator=generator)
        if self.truncation is not None:
            outside = z.abs() > self.truncation
            while outside.any():
                z[outside] = torch.randn(int(outside.sum()), generator=generator)
                outside = z.abs() > self.truncation
        return z.to(device) if device is not None else z

    def training_noise(self, n: int, shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
        """Untruncated z ~ N(0, I): the prior a generator trains on (truncation is a sampling-time trick)."""
        z = torch.randn(n, *shape)
        return z.to(device) if device is not None else z

    def sample(self, network: torch.nn.Module, noise: torch.Tensor, generator: torch.Generator | None = None,
               conditions: dict[str, torch.Tensor] | None = None):
        return network(noise, **(conditions or {}))
