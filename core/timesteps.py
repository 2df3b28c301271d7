"""The timesteps a diffusion sampler visits, shared by the samplers and the torch-free runtime (NumPy only).

Also the beta schedules (so that the runtime can compute a Karras sequence
without torch) and Karras et al.'s noise levels snapped to training timesteps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def sampling_timesteps(num_train_timesteps: int, steps: int, spacing: str = "trailing",
                       offset: int = 0) -> list[int]:
    """The timesteps a sampler visits, from the noisiest down, for ``steps`` of ``num_train_timesteps``.

    leading: multiples of T // S, plus ``offset`` (the DDIM paper's sequence);
    trailing: T - 1 down in strides of T / S, so the first step starts where the noise is purest
    (recommended by Lin et al. 2023 for few steps); linspace: S evenly spaced points of [0, T - 1].
    """
    total = num_train_timesteps
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    if spacing == "leading":
        timesteps = [i * (total // steps) + offset for i in range(steps)]
    elif spacing == "trailing":
        timesteps = [round(total - i * total / steps) - 1 for i in range(steps)]
    elif spacing == "linspace":
        # NumPy's linspace and round (half to even), as diffusers computes it: ties fall the same way.
        timesteps = [int(v) for v in np.linspace(0, total - 1, steps).round()]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}")
    timesteps = sorted(set(timesteps), reverse=True)
    if timesteps[0] >= total or timesteps[-1] < 0:
        raise ValueError(f"timesteps {timesteps[-1]}..{timesteps[0]} fall outside 0..{total - 1} (offset {offset})")
    return timesteps


def betas(schedule: str, num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """The betas of a named schedule, in float64."""
    steps = num_train_timesteps
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, steps, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=np.float64) ** 2
    if schedule == "cosine":
        # squaredcos_cap_v2: alpha-bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2) for s in [0, 1]
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
                        dtype=np.float64)
    raise ValueError(f"unknown beta schedule {schedule!r}")


def _sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sigma(t) = sqrt((1 - alpha-bar_t) / alpha-bar_t), the noise level of each training timestep."""
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


KARRAS_RHO = 7.0
"""Karras et al. 2022's rho: the noise levels are evenly spaced in sigma^(1 / rho) (their eq. 5)."""


def karras_timesteps(alphas_cumprod: np.ndarray, steps: int) -> list[int]:
    """The training timesteps nearest to Karras et al.'s ``steps`` noise levels, noisiest first (duplicates dropped).

    sigma_i = (sigma_max^(1/rho) + i / (S - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (eq. 5), with
    sigma(t) = sqrt((1 - alpha-bar_t) / alpha-bar_t) at the first and last training timesteps as the ends;
    each sigma_i goes to a timestep by interpolating log sigma(t) linearly, as diffusers does, then to the
    nearest integer. The samplers then use sigma(t) of that timestep, the noise level the network was trained
    at for the timestep it is told; diffusers keeps the unrounded sigma_i (docs/diffusion.md).
    """
    if not 1 <= steps <= len(alphas_cumprod):
        raise ValueError(f"steps must be between 1 and {len(alphas_cumprod)}, got {steps}")
    sigmas = _sigmas(alphas_cumprod)
    log_sigmas = np.log(sigmas)
    ramp = np.linspace(0, 1, steps)
    low, high = sigmas[0] ** (1 / KARRAS_RHO), sigmas[-1] ** (1 / KARRAS_RHO)
    levels = (high + ramp * (low - high)) ** KARRAS_RHO
    # log sigma(t) increases with t: np.interp maps each level's log onto fractional timesteps
    continuous = np.interp(np.log(levels), log_sigmas, np.arange(len(sigmas), dtype=np.float64))
    return sorted({int(t) for t in np.round(continuous)}, reverse=True)


def sequence(alphas_cumprod: np.ndarray, steps: int, spacing: str = "trailing", offset: int = 0,
             karras: bool = False, sigma_max: float | None = None) -> list[int]:
    """The timesteps a sampler visits: the spacing's, or Karras levels (``karras``), over the training timesteps
    whose sigma = sqrt((1 - alpha-bar) / alpha-bar) is at most ``sigma_max`` (default: all of them)."""
    total = len(alphas_cumprod)
    if sigma_max is not None:
        sigmas = _sigmas(alphas_cumprod)
        below = np.nonzero(sigmas <= sigma_max)[0]
        if not len(below):
            raise ValueError(f"no timestep has sigma at most sigma_max {sigma_max:g} (the least is {sigmas[0]:.3g})")
        total = int(below[-1]) + 1
    if karras:
        return karras_timesteps(alphas_cumprod[:total], steps)
    return sampling_timesteps(total, steps, spacing, offset)


MAX_TRAIN_TIMESTEPS = 100_000
"""The most diffusion steps a schedule may have: ScheduleOptions' bound (written there too, so that listing the
options imports no NumPy), checked here on a file's metadata."""


def timesteps_for(options: Mapping[str, Any], steps: int) -> list[int]:
    """The timesteps of ``steps`` steps for a sampler's options (its schedule, spacing, Karras choice, sigma_max).

    The options may come from a downloaded file's metadata: anything out of bounds is a ValueError, never a
    schedule of a billion steps.
    """
    try:
        total = int(options["num_train_timesteps"])
        starts = float(options.get("beta_start", 1e-4)), float(options.get("beta_end", 0.02))
    except (TypeError, ValueError):
        raise ValueError("num_train_timesteps, beta_start and beta_end must be numbers") from None
    if not 2 <= total <= MAX_TRAIN_TIMESTEPS or not all(0 < beta < 1 for beta in starts):
        raise ValueError(f"expected 2 to {MAX_TRAIN_TIMESTEPS:,} training timesteps and betas in (0, 1)")
    karras, sigma_max = bool(options.get("use_karras_sigmas")), options.get("sigma_max")
    if not karras and sigma_max is None:  # no need for the schedule itself
        return sampling_timesteps(total, steps, options.get("timestep_spacing", "trailing"),
                                  int(options.get("steps_offset", 0)))
    table = np.cumprod(1.0 - betas(str(options.get("beta_schedule", "linear")), total, *starts))
    try:
        limit = None if sigma_max is None else float(sigma_max)
    except (TypeError, ValueError):
        raise ValueError("sigma_max must be a number") from None
    return sequence(table, steps, options.get("timestep_spacing", "trailing"), int(options.get("steps_offset", 0)),
                    karras, limit)
