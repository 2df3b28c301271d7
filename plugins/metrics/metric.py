"""The feature-space metric component: collects generated samples' features, compares them with the real ones."""

from __future__ import annotations

from typing import Any

import torch

from aigc_kit.core.errors import UserError

from . import distances
from .features import load_extractor, real_features


class FeatureMetric:
    """``update(samples)`` extracts features; ``compute()`` compares them with the real data's and resets."""

    def __init__(self, kind: str, options: Any, data: Any) -> None:
        if data is None:
            raise UserError(f"the {kind} metric compares with real data, and none was given",
                            hint="evaluate a run (its dataset is used) rather than a bare network")
        self.kind, self.options, self.data = kind, options, data
        self.extractor = load_extractor(options.extractor, options.input_size, tuple(options.input_range))
        self._fake: list[torch.Tensor] = []

    def update(self, samples: torch.Tensor) -> None:
        self._fake.append(self.extractor(samples.detach()))

    def compute(self) -> dict[str, float]:
        if not self._fake:
            raise UserError(f"the {self.kind} metric was given no samples")
        fake, self._fake = torch.cat(self._fake), []
        real = real_features(self.data, self.extractor, self.options.real_samples)
        if self.kind == "fid":
            return {"fid": distances.fid(real, fake)}
        if self.kind == "kid":
            mean, spread = distances.kid(real, fake, self.options.subsets, self.options.subset_size)
            return {"kid": mean, "kid_std": spread}
        if self.kind == "precision-recall":
            precision, recall = distances.precision_recall(real, fake, self.options.k)
            return {"precision": precision, "recall": recall}
        density, coverage = distances.density_coverage(real, fake, self.options.k)
        return {"density": density, "coverage": coverage}
