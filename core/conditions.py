"""Conditions at sampling time: drawing them, laying them out for a sample grid, and handing them to a sampler.

A model's conditions (``ModelBundle.conditions``, e.g. ``{"label": Condition(classes=...)}``) are what
its networks take as keyword arguments; the loop, ``aigc-kit eval`` and the exporter draw them here, so
that every stage samples conditional models the same way.
"""

from __future__ import annotations

from typing import Any

import torch

from .plugin_api import Condition, accepts


def draw(conditions: dict[str, Condition], n: int, generator: torch.Generator | None = None,
         device: Any = None) -> dict[str, torch.Tensor]:
    """``n`` values of each condition, uniform over its classes (drawn on the CPU: the same on every device)."""
    drawn = {name: torch.randint(0, condition.count, (n,), generator=generator)
             for name, condition in conditions.items()}
    return {name: value.to(device) for name, value in drawn.items()} if device is not None else drawn


def by_class(conditions: dict[str, Condition], count: int) -> tuple[dict[str, torch.Tensor], int, int]:
    """Labels for a sample grid with one row per class: (labels, samples in all, samples per row).

    Without a label condition: no labels, ``count`` samples, a square-ish grid (columns 0: the grid decides).
    """
    label = conditions.get("label")
    if label is None or label.count == 0:
        return {}, count, 0
    per_row = max(1, count // label.count)
    return {"label": torch.arange(label.count).repeat_interleave(per_row)}, per_row * label.count, per_row


def sample(sampler: Any, network: Any, noise: torch.Tensor, conditions: dict[str, torch.Tensor] | None = None,
           **options: Any) -> torch.Tensor:
    """``sampler.sample(network, noise, ...)``, with ``conditions=`` only when there are any (a sampler written
    before conditions existed keeps working for unconditional models; a conditional model needs a sampler
    that takes them, which :func:`aigc_kit.core.loop.check_components` checks)."""
    if conditions:
        options["conditions"] = conditions
    return sampler.sample(network, noise, **options)


def takes_conditions(sampler: Any) -> bool:
    return accepts(sampler.sample, "conditions")
