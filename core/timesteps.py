"""The timesteps a diffusion sampler visits, shared by the samplers and the torch-free runtime (NumPy only)."""

from __future__ import annotations

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
