"""The DDPM objective: noise a sample to a random timestep, regress the denoiser's prediction on its target."""

from __future__ import annotations

from typing import Any

import torch

from aigc_kit.core.plugin_api import ModelBundle, OptimizerSettings, Phase

from .schedule import NoiseSchedule


class DiffusionLoss:
    """One ``denoiser`` phase: E_t,x0,eps || target - denoiser(x_t, t) ||^2, optionally Min-SNR weighted.

    With ``min_snr_gamma`` (Hang et al. 2023) each timestep's loss is weighted
    so that it equals min(SNR(t), gamma) times the x_0 error: weight
    min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v,
    and min(SNR, gamma) for sample prediction.
    """

    def __init__(self, schedule: NoiseSchedule, min_snr_gamma: float | None, optimizer: OptimizerSettings,
                 network: str = "denoiser") -> None:
        self.schedule = schedule
        self.min_snr_gamma = min_snr_gamma
        self.network = network
        self.phases = [Phase(network, trains=(network,), optimizer=optimizer)]

    def compute(self, phase: Phase, batch: torch.Tensor, bundle: ModelBundle, step: int,
                conditions: dict[str, torch.Tensor] | None = None) -> tuple[Any, dict]:
        denoiser = bundle.networks[self.network]
        x0 = batch.float()
        timesteps = torch.randint(0, self.schedule.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        x_t = self.schedule.add_noise(x0, noise, timesteps)
        prediction = denoiser(x_t, timesteps, **(conditions or {})).float()
        target = self.schedule.target(x0, noise, timesteps)
        per_sample = (prediction - target).pow(2).flatten(1).mean(dim=1)
        logs = {}
        if self.min_snr_gamma is not None:
            weights = self.weights(timesteps).to(per_sample)
            logs["unweighted"] = per_sample.mean().detach()
            per_sample = per_sample * weights
        return per_sample.mean(), logs

    def weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The Min-SNR-gamma weight of each sample's loss."""
        snr = self.schedule.signal_to_noise(timesteps)
        clipped = snr.clamp(max=self.min_snr_gamma)
        if self.schedule.prediction_type == "epsilon":
            return clipped / snr
        if self.schedule.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped
