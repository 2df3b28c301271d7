"""Points from 2-D Gaussian mixtures, and how well generated points cover their modes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from aigc_kit.core.errors import UserError
from aigc_kit.core.plugin_api import SAMPLE_KEY, Condition, DatasetBundle, DatasetInfo

DEFAULT_STD = {"ring": 0.02, "grid": 0.05}


def mixture_centres(layout: str, radius: float = 2.0, spacing: float = 2.0) -> np.ndarray:
    """The mode centres: 8 on a circle, or 25 on a 5x5 grid centred at the origin."""
    if layout == "ring":
        angles = 2 * math.pi * np.arange(8) / 8
        return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    steps = (np.arange(5) - 2) * spacing
    return np.array([(x, y) for x in steps for y in steps], dtype=np.float64)


class MixtureDataset(torch.utils.data.Dataset):
    """``size`` points drawn once from the mixture (equal weights); ``centres`` and ``std`` describe it.

    With ``labels``, each item is ``{"sample": point, "label": its mode}``.
    """

    def __init__(self, centres: np.ndarray, std: float, size: int, seed: int, labels: bool = False) -> None:
        self.centres = centres
        self.std = std
        rng = np.random.default_rng(seed)
        modes = rng.integers(len(centres), size=size)
        self.points = torch.from_numpy((centres[modes] + std * rng.standard_normal((size, 2))).astype(np.float32))
        self.modes = torch.from_numpy(modes) if labels else None

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, Any]:
        if self.modes is not None:
            return {SAMPLE_KEY: self.points[index], "label": int(self.modes[index])}
        return self.points[index]

    def __getitems__(self, indices: list[int]) -> torch.Tensor | dict[str, torch.Tensor]:
        """A whole batch at once: the DataLoader calls this instead of one __getitem__ per point."""
        if self.modes is not None:
            return {SAMPLE_KEY: self.points[indices], "label": self.modes[indices]}
        return self.points[indices]


def mixture_dataset(options: Any) -> DatasetBundle:
    std = (options.std or DEFAULT_STD[options.layout]) * options.scale
    centres = mixture_centres(options.layout, options.radius, options.spacing) * options.scale
    dataset = MixtureDataset(centres, std, options.size, options.seed, options.labels)
    extent = float(np.abs(centres).max() + 6 * std) * 1.3
    landmarks = tuple((float(x), float(y)) for x, y in centres)
    conditions = {"label": Condition(classes=tuple(f"mode-{index}" for index in range(len(centres))))} \
        if options.labels else {}
    return DatasetBundle(dataset, DatasetInfo(shape=(2,), value_range=(-extent, extent), preview="scatter",
                                              landmarks=landmarks, conditions=conditions))


class ModeCoverage:
    """Modes captured and the share of high-quality samples, against the dataset's ``centres`` and ``std``."""

    def __init__(self, options: Any, data: Any) -> None:
        dataset = getattr(data, "dataset", None)
        if not hasattr(dataset, "centres") or not hasattr(dataset, "std"):
            raise UserError("the mode-coverage metric needs data with known modes", field="train.eval.metrics",
                            hint="use it with the gaussian-mixture dataset")
        self.centres = torch.as_tensor(dataset.centres, dtype=torch.float32)
        self.radius = options.threshold * dataset.std
        self.min_count = options.min_count
        self.samples: list[torch.Tensor] = []

    def update(self, samples: torch.Tensor) -> None:
        self.samples.append(samples.detach().float().cpu().reshape(samples.shape[0], -1))

    def compute(self) -> dict[str, float]:
        samples = torch.cat(self.samples)
        self.samples = []
        distances = torch.cdist(samples, self.centres)
        nearest, mode = distances.min(dim=1)
        high_quality = nearest <= self.radius
        counts = torch.bincount(mode[high_quality], minlength=len(self.centres))
        return {
            "modes": float((counts >= self.min_count).sum()),
            "high_quality": 100.0 * float(high_quality.float().mean()),
        }
