"""The feature-space metric component: collects generated samples' features, compares them with the real ones."""

from __future__ import annotations

from typing import Any

import torch

from aigc_kit.core.errors import UserError

from . import distances
from .features import load_extractor, real_features_and_labels


class FeatureMetric:
    """``update(samples)`` extracts features; ``compute()`` compares them with the real data's and resets."""

    def __init__(self, kind: str, options: Any, data: Any) -> None:
        if data is None:
            raise UserError(f"the {kind} metric compares with real data, and none was given",
                            hint="evaluate a run (its dataset is used) rather than a bare network")
        self.kind, self.options, self.data = kind, options, data
        self.extractor = load_extractor(options.extractor, options.input_size, tuple(options.input_range))
        self.per_class = getattr(options, "per_class", False)
        label = data.info.conditions.get("label") if self.per_class else None
        if self.per_class and (label is None or not label.classes):
            raise UserError("per-class FID compares each class's samples with its real ones, and this run's data "
                            "has no class labels", field="per_class", hint="drop per_class, or train on labelled data")
        self.classes = label.classes if label is not None else ()
        self._fake: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, samples: torch.Tensor, conditions: dict[str, torch.Tensor] | None = None) -> None:
        self._fake.append(self.extractor(samples.detach()))
        if self.per_class:
            if not conditions or "label" not in conditions:
                raise UserError("per-class FID needs samples generated for a class, and this model was sampled "
                                "without labels", field="per_class", hint="drop per_class, or evaluate a "
                                "conditional model")
            self._labels.append(conditions["label"].detach().cpu().long())

    def compute(self) -> dict[str, float]:
        if not self._fake:
            raise UserError(f"the {self.kind} metric was given no samples")
        fake, self._fake = torch.cat(self._fake), []
        real, real_labels = real_features_and_labels(self.data, self.extractor, self.options.real_samples)
        if self.kind == "fid":
            values = {"fid": distances.fid(real, fake)}
            if self.per_class:
                values.update(self._per_class(real, real_labels, fake))
            return values
        if self.kind == "kid":
            mean, spread = distances.kid(real, fake, self.options.subsets, self.options.subset_size)
            return {"kid": mean, "kid_std": spread}
        if self.kind == "precision-recall":
            precision, recall = distances.precision_recall(real, fake, self.options.k)
            return {"precision": precision, "recall": recall}
        density, coverage = distances.density_coverage(real, fake, self.options.k)
        return {"density": density, "coverage": coverage}

    def _per_class(self, real: torch.Tensor, real_labels: torch.Tensor | None, fake: torch.Tensor) -> dict[str, float]:
        """FID within each class and their mean, intra-FID (Miyato & Koyama 2018)."""
        fake_labels, self._labels = torch.cat(self._labels), []
        if real_labels is None:
            raise UserError("per-class FID needs the real samples' labels, and the dataset's items carry none",
                            field="per_class", hint="give the dataset its labels (e.g. labels: true)")
        values = {}
        for index, name in enumerate(self.classes):
            real_class, fake_class = real[real_labels == index], fake[fake_labels == index]
            if len(real_class) < 2 or len(fake_class) < 2:
                raise UserError(f"class {name!r} has {len(real_class)} real and {len(fake_class)} generated samples, "
                                "too few for a covariance", field="per_class",
                                hint="evaluate more samples (-n), or raise real_samples")
            values[f"fid/{name}"] = distances.fid(real_class, fake_class)
        values["intra_fid"] = sum(values.values()) / len(values)
        return values
