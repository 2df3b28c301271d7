"""The DCGAN networks (Radford et al. 2015), sized like the reference PyTorch example.

At 64x64, latent 100, width 64 and 3 channels the generator has 3,576,704
parameters and the discriminator 2,765,568.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def dcgan_init(module: nn.Module) -> None:
    """Convolution weights ~ N(0, 0.02); BatchNorm weights ~ N(1, 0.02), biases 0 (the paper's init)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def upsampling_layers(resolution: int) -> int:
    """Stride-2 layers between the 4x4 start and the last layer: 3 at 64x64."""
    return int(math.log2(resolution)) - 3


class Generator(nn.Module):
    """z (n, latent_dim) -> image (n, channels, resolution, resolution) in [-1, 1]."""

    def __init__(self, latent_dim: int, width: int, channels: int, resolution: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        features = width * 2 ** upsampling_layers(resolution)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, features, 4, 1, 0, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
        ]
        for _ in range(upsampling_layers(resolution)):
            layers += [
                nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(features // 2),
                nn.ReLU(inplace=True),
            ]
            features //= 2
        layers += [nn.ConvTranspose2d(features, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z.reshape(z.shape[0], self.latent_dim, 1, 1))


def normalisation(kind: str, features: int, side: int) -> nn.Module:
    """The discriminator's normalisation layer: BatchNorm (DCGAN) or, for critics, LayerNorm, instance norm or none."""
    if kind == "batch":
        return nn.BatchNorm2d(features)
    if kind == "layer":
        return nn.LayerNorm([features, side, side])
    if kind == "instance":
        return nn.InstanceNorm2d(features, affine=True)
    return nn.Identity()


class Discriminator(nn.Module):
    """image -> one logit per sample, or per group of ``pack`` samples (no sigmoid: losses work on logits)."""

    def __init__(self, width: int, channels: int, resolution: int, norm: str = "batch", pack: int = 1) -> None:
        super().__init__()
        self.pack = pack
        layers: list[nn.Module] = [nn.Conv2d(channels * pack, width, 4, 2, 1, bias=norm != "batch"),
                                   nn.LeakyReLU(0.2, inplace=True)]
        features, side = width, resolution // 2
        for _ in range(upsampling_layers(resolution)):
            side //= 2
            layers += [
                nn.Conv2d(features, features * 2, 4, 2, 1, bias=norm == "none"),
                normalisation(norm, features * 2, side),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            features *= 2
        layers.append(nn.Conv2d(features, 1, 4, 1, 0, bias=False))
        self.layers = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.layers(pack_samples(image, self.pack)).reshape(-1)


def pack_samples(samples: torch.Tensor, pack: int) -> torch.Tensor:
    """Concatenate each run of ``pack`` consecutive samples along the channels (PacGAN)."""
    if pack == 1:
        return samples
    if samples.shape[0] % pack:
        raise ValueError(f"a batch of {samples.shape[0]} cannot be packed in groups of {pack}")
    return samples.reshape(samples.shape[0] // pack, pack * samples.shape[1], *samples.shape[2:])
