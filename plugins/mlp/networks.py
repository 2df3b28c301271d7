"""Dense generator and discriminator."""

from __future__ import annotations

import math

import torch
from torch import nn

from aigc_kit.plugins.common import conditioned_on, pack_samples


def dense_stack(inputs: int, width: int, depth: int, activation: type[nn.Module], **kwargs) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for index in range(depth):
        layers += [nn.Linear(inputs if index == 0 else width, width), activation(**kwargs)]
    return layers


class Generator(nn.Module):
    """z (n, latent_dim) -> sample (n, *shape); tanh output when ``bounded``.

    With ``classes``, ``forward(z, label)``: a learned class embedding is concatenated to z.
    """

    def __init__(self, latent_dim: int, shape: tuple[int, ...], width: int, depth: int, bounded: bool,
                 classes: int = 0) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.embedding = nn.Embedding(classes, latent_dim) if classes else None
        layers = dense_stack(latent_dim * (2 if classes else 1), width, depth, nn.ReLU)
        layers.append(nn.Linear(width, math.prod(shape)))
        if bounded:
            layers.append(nn.Tanh())
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        z = z.reshape(z.shape[0], -1)
        if self.embedding is not None:
            z = torch.cat([z, self.embedding(conditioned_on(label, z))], dim=1)
        return self.layers(z).reshape(z.shape[0], *self.shape)


class Discriminator(nn.Module):
    """sample -> one logit per sample, or per group of ``pack`` samples.

    With ``classes``, ``forward(sample, label)`` adds the projection embed(y) . phi(x) (Miyato & Koyama 2018),
    phi(x) the last hidden layer.
    """

    def __init__(self, shape: tuple[int, ...], width: int, depth: int, pack: int = 1, classes: int = 0) -> None:
        super().__init__()
        self.pack = pack
        layers = dense_stack(math.prod(shape) * pack, width, depth, nn.LeakyReLU, negative_slope=0.2)
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)
        self.embedding = nn.Embedding(classes, width) if classes else None
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, 0.0, 0.02)

    def forward(self, sample: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        features = self.layers[:-1](pack_samples(sample.reshape(sample.shape[0], -1), self.pack))
        logits = self.layers[-1](features).reshape(-1)
        if self.embedding is not None:
            logits = logits + (self.embedding(conditioned_on(label, sample)) * features).sum(dim=1)
        return logits
