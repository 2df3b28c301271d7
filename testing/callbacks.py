"""The conformance kit's check of a callback: a tiny run with it, then a resume of that run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aigc_kit.core.callbacks import EVENTS, check_events
from aigc_kit.core.errors import UserError
from aigc_kit.core.registry import Registry


def tiny_run_config(name: str, options: dict[str, Any] | None, steps: int) -> dict[str, Any]:
    """A run of a 16x16 DCGAN on shapes that takes seconds, evaluated (so that metric callbacks get values),
    with the callback under test listed."""
    return {
        "seed": 0, "device": "cpu",
        "data": {"name": "shapes", "resolution": 16, "channels": 3, "size": 64},
        "model": {"name": "dcgan", "latent_dim": 8, "width": 8},
        "loss": {"name": "gan-bce"}, "sampler": {"name": "normal"},
        "train": {"steps": steps, "batch_size": 8, "log_every": 1, "sample_every": 2, "sample_count": 4,
                  "checkpoint_every": 2, "eval_every": 2, "progress": False, "precision": "fp32",
                  "eval": {"samples": 16, "metrics": [{"name": "fid", "real_samples": 32}]}},
        "callbacks": [{"name": name, **(options or {})}],
    }


class Recording:
    """Forwards each event to the callback under test and notes it: ``(event, step)``."""

    def __init__(self, inner: Any, seen: list[tuple[str, int]]) -> None:
        self.inner, self.seen = inner, seen
        for event in EVENTS:
            if hasattr(inner, event):
                setattr(self, event, self._forward(event))
        for optional in ("state", "load_state"):
            if hasattr(inner, optional):
                setattr(self, optional, getattr(inner, optional))

    def _forward(self, event: str) -> Any:
        def forward(run: Any, *arguments: Any) -> None:
            self.seen.append((event, run.step))
            getattr(self.inner, event)(run, *arguments)

        return forward


def check_callback(registry: Registry, name: str, folder: str | Path, *, options: dict[str, Any] | None = None,
                   steps: int = 4) -> list[tuple[str, int]]:
    """Train a tiny run for ``steps`` steps with the callback ``name``, then resume it for two more; return the
    events it answered, as ``(event, step)``.

    Checks that the callback builds from ``options``, answers at least one event
    and no misspelt one, never raises, that what ``state()`` returns is plain
    data that a checkpoint keeps and ``load_state`` takes back on resume, and
    that a run it stops (``run.request_stop``) still ends with a checkpoint and
    ``on_end``.
    """
    import torch

    from aigc_kit.core.checkpoint import load_checkpoint
    from aigc_kit.core.components import build_components
    from aigc_kit.core.config import parse_config
    from aigc_kit.core.loop import Trainer

    run_dir = Path(folder) / f"{name}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    seen: list[tuple[str, int]] = []
    result = None
    for stage, total in enumerate((steps, steps + 2)):
        loaded = parse_config(tiny_run_config(name, options, total), registry)
        components = build_components(loaded, registry)
        position = [index for index, (listed, _) in enumerate(components.callbacks) if listed == name][-1]
        callback = components.callbacks[position][1]
        try:
            check_events(name, callback)
        except UserError as error:
            raise AssertionError(str(error)) from None
        answered = [event for event in EVENTS if callable(getattr(callback, event, None))]
        assert answered, f"the callback {name!r} answers none of the events {', '.join(EVENTS)}"
        components.callbacks[position] = (name, Recording(callback, seen))
        trainer = Trainer(components, loaded.config, loaded.resolved(), run_dir, torch.device("cpu"))
        checkpoint = load_checkpoint(run_dir) if stage else None
        if stage and hasattr(callback, "load_state"):
            saved = (checkpoint.state.get("callbacks") or {}).get(name)
            assert saved is not None, f"the checkpoint kept no state of {name!r}, whose state() should be saved"
        try:
            result = trainer.fit(resume=checkpoint)
        except UserError as error:
            raise AssertionError(f"the run with the callback {name!r} failed: {error}") from error
        events = [event for event, _ in seen]
        assert events.count("on_end") == stage + 1, f"{name!r}: on_end came {events.count('on_end')} times"
        if hasattr(callback, "state"):
            state = callback.state()
            try:
                assert json.loads(json.dumps(state)) == state
            except (TypeError, ValueError, AssertionError):
                raise AssertionError(f"{name!r}'s state() must be plain data (numbers, strings, lists, dicts), "
                                     f"got {state!r}") from None
        if result.stop_reason is not None:
            assert result.checkpoint is not None and result.checkpoint.name == f"step-{result.steps:06d}", (
                f"the run {name!r} stopped at step {result.steps} left no checkpoint of that step")
            break
    return seen
