"""``class-agreement``: how often a classifier sees the class a conditional model was asked for.

Each generated sample comes with the label it was generated for; a classifier
(the built-in shapes classifier's shape-kind head, or the user's TorchScript or
ONNX network) names the class it sees, and the metric is the share that agree,
overall and per class. It measures what FID cannot: a conditional model that
draws perfect shapes of the wrong kind has a good FID and an agreement near
chance (1 / classes).
"""

from __future__ import annotations

from typing import Any

import torch

from aigc_kit.core.errors import UserError

from .features import Extractor, load_extractor


class ClassAgreement:
    """``update(samples, conditions)`` classifies each sample; ``compute()`` compares with its label and resets."""

    def __init__(self, options: Any, data: Any) -> None:
        label = data.info.conditions.get("label") if data is not None else None
        if label is None or not label.classes:
            raise UserError("class-agreement compares samples with the classes they were generated for, and this "
                            "run's data has no class labels", field="metric",
                            hint="train on labelled data (e.g. shapes with labels: true) with a conditional model")
        self.classes = label.classes
        self.classifier, self.to_classifier = _classifier(options, self.classes)
        self._seen: list[torch.Tensor] = []
        self._wanted: list[torch.Tensor] = []

    def update(self, samples: torch.Tensor, conditions: dict[str, torch.Tensor] | None = None) -> None:
        if not conditions or "label" not in conditions:
            raise UserError("class-agreement needs samples generated for a class, and this model was sampled "
                            "without labels", field="metric",
                            hint="evaluate a conditional model (model option conditional: auto or true)")
        scores = self.classifier(samples.detach())
        expected = len(self.classes) if self.to_classifier is None else None
        if scores.dim() != 2 or (expected is not None and scores.shape[1] != expected):
            raise UserError(f"the classifier gave scores of shape {tuple(scores.shape)}", field="classifier",
                            expected=f"(N, {expected}): one score per class of the data, in its class order "
                                     f"({', '.join(self.classes)})")
        self._seen.append(scores.argmax(1))
        self._wanted.append(conditions["label"].detach().cpu().long())

    def compute(self) -> dict[str, float]:
        if not self._seen:
            raise UserError("the class-agreement metric was given no samples")
        seen, wanted = torch.cat(self._seen), torch.cat(self._wanted)
        self._seen, self._wanted = [], []
        target = wanted if self.to_classifier is None else self.to_classifier[wanted]
        agree = (seen == target).float()
        values = {"agreement": agree.mean().item()}
        for index, name in enumerate(self.classes):
            chosen = wanted == index
            if chosen.any():
                values[f"agreement/{name}"] = agree[chosen].mean().item()
        return values


def _classifier(options: Any, classes: tuple[str, ...]) -> tuple[Extractor, torch.Tensor | None]:
    """The classifier and, for the built-in one, each data class's index among its outputs (None: the same)."""
    if options.classifier != "shapes":
        return load_extractor(options.classifier, options.input_size, tuple(options.input_range),
                              field="classifier"), None
    from aigc_kit.plugins.drawing import KINDS

    from .classifier import load_classifier

    unknown = [name for name in classes if name not in KINDS]
    if unknown:
        raise UserError(f"the built-in shapes classifier knows {', '.join(KINDS)}, not {', '.join(unknown)}",
                        field="classifier", given="shapes",
                        hint="point classifier at a TorchScript (.pt) or ONNX (.onnx) network for these classes")
    network = load_classifier()
    return (Extractor("shapes-kind", "shapes-kind", lambda images: network(images)[0]),
            torch.tensor([KINDS.index(name) for name in classes]))
