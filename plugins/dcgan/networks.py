"""The DCGAN networks (Radford et al. 2015), sized like the reference PyTorch example.

At 64x64, latent 100, width 64 and 3 channels the generator has 3,576,704
parameters and the discriminator 2,765,568.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from aigc_kit.plugins.common import conditioned_on, pack_samples


def dcgan_init(module: nn.Module) -> None:
    """Convolution weights ~ N(0, 0.02); BatchNorm weights ~ N(1, 0.02), biases 0 (the paper's init)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def upsampling_layers(resolution: int) -> int:
    """Stride-2 layers between the 4x4 start and the last layer: 3 at 64x64."""
    return int(math.log2(resolution)) - 3


class Generator(nn.Module):
    """z (n, latent_dim) -> image (n, channels, resolution, resolution) in [-1, 1].

    With ``classes``, ``forward(z, label)`` also takes each sample's class,
    through class-conditional BatchNorm: each BatchNorm's gain and bias are
    learned per class (de Vries et al. 2017; the generator of Miyato & Koyama
    2018). Feeding the class as an embedding concatenated to z instead made
    this generator ignore z on shapes: every sample of a class alike within
    1,500 steps (docs/gans.md).
    """

    def __init__(self, latent_dim: int, width: int, channels: int, resolution: int, classes: int = 0) -> None:
        super().__init__()
        self.latent_dim = latent_dim

        def norm(features: int) -> nn.Module:
            return ClassBatchNorm2d(features, classes) if classes else nn.BatchNorm2d(features)

        features = width * 2 ** upsampling_layers(resolution)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, features, 4, 1, 0, bias=False),
            norm(features),
            nn.ReLU(inplace=True),
        ]
        for _ in range(upsampling_layers(resolution)):
            layers += [
                nn.ConvTranspose2d(features, features // 2, 4, 2, 1, bias=False),
                norm(features // 2),
                nn.ReLU(inplace=True),
            ]
            features //= 2
        layers += [nn.ConvTranspose2d(features, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.layers = nn.Sequential(*layers)
        self.classes = classes
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        x = z.reshape(z.shape[0], self.latent_dim, 1, 1)
        if not self.classes:
            return self.layers(x)
        label = conditioned_on(label, z)
        for layer in self.layers:
            x = layer(x, label) if isinstance(layer, ClassBatchNorm2d) else layer(x)
        return x


class ClassBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, then a gain and a bias looked up by each sample's class."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(features, affine=False)
        self.gain = nn.Embedding(classes, features)
        self.bias = nn.Embedding(classes, features)
        nn.init.normal_(self.gain.weight, 1.0, 0.02)  # as dcgan_init starts a BatchNorm's weight
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], x.shape[1], 1, 1)
        return self.norm(x) * self.gain(label).reshape(shape) + self.bias(label).reshape(shape)


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
    """image -> one logit per sample, or per group of ``pack`` samples (no sigmoid: losses work on logits).

    With ``classes``, ``forward(image, label)`` sees the class twice: as one-hot
    feature maps concatenated to the image (the input conditioning of most
    conditional DCGANs), and through projection (Miyato & Koyama 2018):
    psi(phi(x, y)) + embed(y) . phi(x, y), phi the last feature map summed over
    space. On shapes, 5,000 steps of the conditional DCGAN reached a class
    agreement of 0.62 with projection alone and 0.80 with both (docs/gans.md).
    """

    def __init__(self, width: int, channels: int, resolution: int, norm: str = "batch", pack: int = 1,
                 classes: int = 0) -> None:
        super().__init__()
        self.pack, self.classes = pack, classes
        layers: list[nn.Module] = [nn.Conv2d((channels + classes) * pack, width, 4, 2, 1, bias=norm != "batch"),
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
        self.embedding = nn.Embedding(classes, features) if classes else None
        self.apply(dcgan_init)
        if self.embedding is not None:
            nn.init.normal_(self.embedding.weight, 0.0, 0.02)

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        if self.embedding is None:
            features = self.layers[:-1](pack_samples(image, self.pack))
            return self.layers[-1](features).reshape(-1)
        label = conditioned_on(label, image)
        maps = nn.functional.one_hot(label, self.classes).to(image.dtype)[:, :, None, None]
        image = torch.cat([image, maps.expand(-1, -1, *image.shape[2:])], dim=1)
        features = self.layers[:-1](image)  # no packing: a conditional model refuses it (refuse_packing_with_labels)
        logits = self.layers[-1](features).reshape(-1)
        return logits + (self.embedding(label) * features.sum(dim=(2, 3))).sum(dim=1)
