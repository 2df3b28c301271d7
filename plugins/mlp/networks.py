"""Dense generator and discriminator."""

from __future__ import annotations

import math

import torch
from torch import nn

from aigc_kit.plugins.dcgan.networks import pack_samples


def dense_stack(inputs: int, width: int, depth: int, activation: type[nn.Module], **kwargs) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [nn.Linear(inputs if index == 0 else width, width), activation(**kwargs)]
    return layers


class Generator(nn.Module):
    """z (n, latent_dim) -> sample (n, *shape); tanh output when ``bounded``."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...], width: int, depth: int, bounded: bool) -> None:
        super().__init__()
        self.shape = tuple(shape)
        layers = dense_stack(latent_dim, width, depth, nn.ReLU)
        layers.append(nn.Linear(width, math.prod(shape)))
        if bounded:
            layers.append(nn.Tanh())
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z.reshape(z.shape[0], -1)).reshape(z.shape[0], *self.shape)


class Discriminator(nn.Module):
    """sample -> one logit per sample, or per group of ``pack`` samples."""

    def __init__(self, shape: tuple[int, ...], width: int, depth: int, pack: int = 1) -> None:
        super().__init__()
        self.pack = pack
        layers = dense_stack(math.prod(shape) * pack, width, depth, nn.LeakyReLU, negative_slope=0.2)
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.layers(pack_samples(sample.reshape(sample.shape[0], -1), self.pack)).reshape(-1)
