"""Metrics of an exported model's samples, drawn with onnxruntime: is the export as good as the checkpoint?

The dataset to compare with is rebuilt from the ``data`` section the export
recorded in its metadata. Samples pass through uint8 pixels when the graph
outputs them, as they would in production; a conditional model's samples come
with the labels they were drawn for, for the metrics that take them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aigc_kit.core.errors import UserError
from aigc_kit.core.evaluation import build_metrics, evaluate
from aigc_kit.core.guidance import check_guidance
from aigc_kit.core.registry import Registry


def evaluate_onnx(path: str | Path, registry: Registry, requested: list[tuple[str, dict[str, Any]]], count: int,
                  *, seed: int = 0, batch_size: int = 500, guidance: float | None = None,
                  progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Metrics of ``count`` samples of the exported model at ``path`` (at guidance scale ``guidance``, for a guided
    sampler); a JSON-able report."""
    import torch

    from .pixels import from_pixels
    from .runtime import OnnxGenerator

    generator = OnnxGenerator(path, providers="auto")
    section = dict(generator.metadata.get("data") or {})
    if "name" not in section:
        raise UserError("this model's metadata does not say which dataset it was trained on", file=str(path),
                        hint="export it again with this aigc-kit (exports record their data section), "
                             "or evaluate the run directory")
    name = section.pop("name")
    data = registry.build("dataset", name, registry.options("dataset", name, section, field_prefix="data"),
                          field="data")
    check_guidance(guidance, generator.guidance_scale is not None, file=str(path))
    metrics = build_metrics(registry, requested, data)
    low, high = tuple(generator.output["value_range"])
    rng = np.random.default_rng(seed)

    def draw(n: int) -> Any:
        labels = generator.labels(None, n, rng)  # random classes for a conditional model, None otherwise
        output = generator.session.run([generator.output["name"]], generator.feeds(n, rng, labels=labels,
                                                                                     guidance=guidance))[0]
        if generator.output["dtype"] == "uint8":
            output = from_pixels(output, (low, high))
        samples = torch.from_numpy(np.ascontiguousarray(output, dtype=np.float32))
        return samples if labels is None else (samples, {"label": torch.from_numpy(labels)})

    values = evaluate(metrics, draw, count, batch_size, progress)
    return {"source": str(path), "provider": generator.provider, "samples": count, "seed": seed,
            **({"guidance_scale": guidance} if guidance is not None else {}), "values": values}
