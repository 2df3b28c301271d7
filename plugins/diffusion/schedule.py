"""The diffusion noise schedule: betas, alphas_cumprod, the forward process and the prediction conversions.

The loss and both samplers import this module and nothing else about the
schedule, so training and sampling use the same arithmetic. Notation follows
DDPM (Ho et al. 2020) and DDIM (Song et al. 2020): ``alphas_cumprod[t]`` is
alpha-bar_t = prod_{s <= t} (1 - beta_s), and

    x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) epsilon.

The arrays are computed in float64 and cast to the sample's dtype when used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aigc_kit.core.timesteps import betas

from .options import BetaSchedule, PredictionType, ScheduleOptions


def betas_for(schedule: BetaSchedule, num_train_timesteps: int, beta_start: float = 1e-4,
              beta_end: float = 0.02) -> torch.Tensor:
    """The betas of a named schedule, in float64 (:func:`aigc_kit.core.timesteps.betas`, as a tensor)."""
    return torch.from_numpy(betas(schedule, num_train_timesteps, beta_start, beta_end))


@dataclass(frozen=True)
class NoiseSchedule:
    """alpha-bar_t for t = 0 .. T-1, and the conversions between a denoiser's prediction, x_0 and epsilon."""

    alphas_cumprod: torch.Tensor
    prediction_type: PredictionType = "epsilon"

    @classmethod
    def from_options(cls, options: ScheduleOptions) -> NoiseSchedule:
        betas = betas_for(options.beta_schedule, options.num_train_timesteps, options.beta_start, options.beta_end)
        return cls(torch.cumprod(1.0 - betas, dim=0), options.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def betas(self) -> torch.Tensor:
        previous = torch.cat([torch.ones(1, dtype=self.alphas_cumprod.dtype), self.alphas_cumprod[:-1]])
        return 1.0 - self.alphas_cumprod / previous

    def signal_to_noise(self, timesteps: torch.Tensor) -> torch.Tensor:
        """SNR(t) = alpha-bar_t / (1 - alpha-bar_t), in float64."""
        alpha_bar = self.alphas_cumprod[timesteps.cpu()]
        return alpha_bar / (1.0 - alpha_bar)

    def alpha_bar(self, timesteps: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """alpha-bar at ``timesteps`` (an int or one per sample), shaped to broadcast against ``like``.

        A timestep of -1 stands for the clean end of the process, where alpha-bar is 1.
        """
        table = torch.cat([self.alphas_cumprod, torch.ones(1, dtype=self.alphas_cumprod.dtype)])
        index = torch.as_tensor(timesteps).cpu()
        values = table[index].to(device=like.device, dtype=like.dtype)
        return values.reshape(-1, *([1] * (like.dim() - 1))) if values.dim() else values

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) epsilon (DDPM eq. 4)."""
        alpha_bar = self.alpha_bar(timesteps, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser should output for ``x_t`` made from ``x0`` and ``noise``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        alpha_bar = self.alpha_bar(timesteps, x0)
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0

    def to_x0_and_epsilon(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor | int,
                          prediction_type: PredictionType | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The x_0 and epsilon a prediction at ``x_t`` implies, for this schedule's prediction type (or the given one)."""
        alpha_bar = self.alpha_bar(timesteps, x_t)
        signal, noise_level = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        prediction_type = prediction_type or self.prediction_type
        if prediction_type == "epsilon":
            return (x_t - noise_level * prediction) / signal, prediction
        if prediction_type == "sample":
            return prediction, (x_t - signal * prediction) / noise_level
        return signal * x_t - noise_level * prediction, signal * prediction + noise_level * x_t
