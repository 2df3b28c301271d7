"""The GAN losses' computations: one class per loss, sharing the phase logic."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from aigc_kit.core.plugin_api import ModelBundle, OptimizerSettings, Phase, training_noise


def latent_batch(bundle: ModelBundle, like: torch.Tensor) -> torch.Tensor:
    """A batch of standard normal latents, as many as samples in ``like``, on its device."""
    return torch.randn(like.shape[0], *bundle.noise_shape, device=like.device)


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     conditions: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """E[(||grad D(x_hat)||_2 - 1)^2] at random interpolates x_hat (Gulrajani et al. 2017, eq. 3), in fp32.

    The norm is taken per critic output, so a packed critic (PacGAN) is
    penalised on the gradient with respect to its whole packed input.
    """
    real, fake = real.detach().float(), fake.detach().float()
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    interpolates = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = critic(interpolates, **(conditions or {})).float()
    (gradients,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
    norms = gradients.reshape(scores.shape[0], -1).norm(2, dim=1)
    return ((norms - 1) ** 2).mean()


def r1_penalty(discriminator: torch.nn.Module, real: torch.Tensor,
               conditions: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """E||grad D(x_real)||^2 (Mescheder et al. 2018), in fp32; the loss multiplies it by gamma / 2."""
    real = real.detach().float().requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = discriminator(real, **(conditions or {})).float()
    (gradients,) = torch.autograd.grad(scores.sum(), real, create_graph=True)
    return gradients.reshape(scores.shape[0], -1).pow(2).sum(dim=1).mean()


class GanLoss:
    """A discriminator phase repeated ``discriminator_steps`` times, then a generator phase.

    Subclasses give the two losses from the discriminator's outputs on real
    and generated samples, and optionally a penalty and an ``after_discriminator_step``.
    """

    optimizer = "adam"
    after_discriminator_step = None

    def __init__(self, options: Any) -> None:
        self.options = options
        betas = (getattr(options, "beta1", 0.9), getattr(options, "beta2", 0.999))
        discriminator = OptimizerSettings(self.optimizer, lr=options.discriminator_lr, betas=betas)
        generator = OptimizerSettings(self.optimizer, lr=options.generator_lr, betas=betas)
        self.phases = [
            Phase("discriminator", ("discriminator",), repeat=options.discriminator_steps, optimizer=discriminator,
                  after_step=self.after_discriminator_step),
            Phase("generator", ("generator",), uses_data=False, optimizer=generator),
        ]

    def compute(self, phase: Phase, batch: torch.Tensor, bundle: ModelBundle, step: int,
                conditions: dict[str, torch.Tensor] | None = None, sampler: Any = None):
        """One phase's loss; a conditional model's fakes are drawn for the real batch's classes."""
        generator = bundle.networks["generator"]
        discriminator = bundle.networks["discriminator"]
        conditions = conditions or {}
        noise = training_noise(sampler, batch.shape[0], tuple(bundle.noise_shape), batch.device) \
            if sampler is not None else latent_batch(bundle, batch)
        fake = generator(noise, **conditions)
        if phase.name == "discriminator":
            fake = fake.detach()
            real_scores = discriminator(batch, **conditions).float()
            fake_scores = discriminator(fake, **conditions).float()
            loss = self.discriminator_loss(real_scores, fake_scores)
            logs = {"real_score": real_scores.mean().detach(), "fake_score": fake_scores.mean().detach()}
            penalty = self.penalty(discriminator, batch, fake, conditions)
            if penalty is not None:
                loss = loss + penalty
                logs["penalty"] = penalty.detach()
            return loss, logs
        return self.generator_loss(discriminator(fake, **conditions).float()), {}

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, discriminator: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                conditions: dict[str, torch.Tensor] | None = None) -> torch.Tensor | None:
        gamma = getattr(self.options, "r1_gamma", 0.0)
        return gamma / 2 * r1_penalty(discriminator, real, conditions) if gamma else None


class NonSaturatingLoss(GanLoss):
    """The discriminator minimises BCE on logits; the generator minimises -log D(G(z))."""

    def discriminator_loss(self, real, fake):
        # softplus(-x) = -log sigmoid(x): BCE on logits without overflow.
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def generator_loss(self, fake):
        return F.softplus(-fake).mean()


class HingeLoss(GanLoss):
    """Critic: E relu(1 - D(x)) + E relu(1 + D(G(z))); generator: -E D(G(z))."""

    def discriminator_loss(self, real, fake):
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def generator_loss(self, fake):
        return -fake.mean()


class LeastSquaresLoss(GanLoss):
    """Mao et al. 2017 with targets a=0 (fake), b=1 (real), c=1 (what the generator aims for)."""

    def discriminator_loss(self, real, fake):
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean()

    def generator_loss(self, fake):
        return 0.5 * ((fake - 1) ** 2).mean()


class WassersteinLoss(GanLoss):
    """Critic: E D(G(z)) - E D(x), with every critic weight clipped to [-c, c] after each step."""

    optimizer = "rmsprop"

    def discriminator_loss(self, real, fake):
        return fake.mean() - real.mean()

    def generator_loss(self, fake):
        return -fake.mean()

    def penalty(self, discriminator, real, fake, conditions=None):
        return None

    def after_discriminator_step(self, bundle: ModelBundle) -> None:
        with torch.no_grad():
            for parameter in bundle.networks["discriminator"].parameters():
                parameter.clamp_(-self.options.clip, self.options.clip)


class WassersteinGpLoss(WassersteinLoss):
    """The Wasserstein critic loss plus lambda times the gradient penalty; no clipping."""

    optimizer = "adam"
    after_discriminator_step = None

    def penalty(self, discriminator, real, fake, conditions=None):
        if not self.options.gp_lambda:
            return None
        return self.options.gp_lambda * gradient_penalty(discriminator, real, fake, conditions)
