"""The GAN losses' computations."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from aigc_kit.core.plugin_api import ModelBundle, OptimizerSettings, Phase


def latent_batch(bundle: ModelBundle, like: torch.Tensor) -> torch.Tensor:
    """A batch of standard normal latents, as many as samples in ``like``, on its device."""
    return torch.randn(like.shape[0], *bundle.noise_shape, device=like.device)


class NonSaturatingLoss:
    """The discriminator minimises BCE on logits; the generator minimises -log D(G(z)) (softplus form)."""

    def __init__(self, options: Any) -> None:
        adam = OptimizerSettings("adam", lr=options.lr, betas=(options.beta1, options.beta2))
        self.phases = [
            Phase("discriminator", ("discriminator",), repeat=options.discriminator_steps, optimizer=adam),
            Phase("generator", ("generator",), uses_data=False, optimizer=adam),
        ]

    def compute(self, phase: Phase, batch: torch.Tensor, bundle: ModelBundle, step: int):
        generator = bundle.networks["generator"]
        discriminator = bundle.networks["discriminator"]
        fake = generator(latent_batch(bundle, batch))
        if phase.name == "discriminator":
            real_logits = discriminator(batch).float()
            fake_logits = discriminator(fake.detach()).float()
            # softplus(-x) = -log sigmoid(x): BCE on logits without overflow.
            loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
            return loss, {"real_logit": real_logits.mean().detach(), "fake_logit": fake_logits.mean().detach()}
        fake_logits = discriminator(fake).float()
        return F.softplus(-fake_logits).mean(), {}
