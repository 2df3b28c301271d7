"""The loop's own side work, as callbacks: metrics.jsonl, the progress bar, TensorBoard, sample pictures,
evaluation and the best checkpoint. Each reads its settings from the run's ``train`` section."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from aigc_kit.core import checkpoint as checkpoints
from aigc_kit.core import conditions, distributed
from aigc_kit.core.callbacks import Run
from aigc_kit.core.device import eval_mode
from aigc_kit.core.errors import UserError
from aigc_kit.core.evaluation import evaluate
from aigc_kit.core.pictures import save_grid, save_scatter


class MetricsFile:
    """One JSON line per log step and per evaluation in RUN_DIR/metrics.jsonl, written by process 0."""

    def on_log(self, run: Run, step: int, logs: dict[str, float]) -> None:
        timing = {key: logs[key] for key in ("steps_per_second", "seconds") if key in logs}
        values = {key: value for key, value in logs.items() if key not in timing}
        self._write(run, {"step": step, **_rounded(values, 6), **_rounded(timing, 4)})

    def on_evaluate(self, run: Run, step: int, values: dict[str, float]) -> None:
        self._write(run, {"step": step, **_rounded(values, 6)})

    @staticmethod
    def _write(run: Run, record: dict[str, Any]) -> None:
        if not run.is_main:
            return
        with open(run.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _rounded(values: dict[str, float], digits: int) -> dict[str, float]:
    return {key: round(value, digits) if math.isfinite(value) else value for key, value in values.items()}


class Progress:
    """A progress bar on stderr, in process 0, with the latest losses beside it."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_start(self, run: Run) -> None:
        if not run.is_main:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=run.train.steps, initial=run.step, unit="step", dynamic_ncols=True, file=sys.stderr,
                        mininterval=1.0, disable=None if not sys.stderr.isatty() else False)

    def on_step(self, run: Run, step: int) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, run: Run, step: int, logs: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({key.removesuffix("/loss"): f"{value:.3f}" for key, value in logs.items()
                                  if key.endswith("/loss")}, refresh=False)

    def on_end(self, run: Run, outcome: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoard:
    """The logged values and sample pictures for TensorBoard, in RUN_DIR/tensorboard (process 0)."""

    def __init__(self) -> None:
        self.writer_class = _summary_writer_class()  # fail when the run is built, not after its first steps
        self.writer: Any = None

    def on_start(self, run: Run) -> None:
        if run.is_main:
            self.writer = self.writer_class(str(run.run_dir / "tensorboard"))

    def on_log(self, run: Run, step: int, logs: dict[str, float]) -> None:
        self.on_evaluate(run, step, logs)

    def on_evaluate(self, run: Run, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def on_samples(self, run: Run, step: int, path: Path) -> None:
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as picture:
            self.writer.add_image("samples", np.asarray(picture.convert("RGB")), step, dataformats="HWC")

    def on_end(self, run: Run, outcome: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _summary_writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("TensorBoard logging needs the tensorboard package", field="train.tensorboard",
                        hint="pip install 'aigc-kit[tensorboard]', or set train.tensorboard=false") from None
    return SummaryWriter


class SampleGrid:
    """A picture of ``train.sample_count`` samples from fixed noise at each ``train.sample_every`` step.

    One row per class for a conditional model, a scatter plot for 2-D data;
    written by process 0 to RUN_DIR/samples/step-NNNNNN.png and announced as ``on_samples``; also at
    the step a callback stopped the run.
    """

    def __init__(self) -> None:
        self.noise: torch.Tensor | None = None
        self.conditions: dict[str, torch.Tensor] = {}
        self.columns = 0

    def on_start(self, run: Run) -> None:
        bundle, train = run.components.model, run.train
        fixed, count, self.columns = conditions.by_class(bundle.conditions, train.sample_count)
        self.conditions = {name: value.to(run.device) for name, value in fixed.items()}
        generator = torch.Generator().manual_seed(run.config["seed"] + 1)  # the same noise in every grid of the run
        self.noise = run.components.sampler.noise(count, tuple(bundle.noise_shape), generator=generator).to(run.device)

    def on_step(self, run: Run, step: int) -> None:
        if run.due.samples and run.is_main:
            run.emit("on_samples", step, self.write(run, step))

    def on_end(self, run: Run, outcome: str) -> None:
        """A run a callback stopped early gets the picture of its last step too, as a run that ends does."""
        written = run.samples[-1].name if run.samples else None
        if outcome == "stopped" and run.is_main and written != f"step-{run.step:06d}.png":
            run.emit("on_samples", run.step, self.write(run, run.step))

    @torch.no_grad()
    def write(self, run: Run, step: int) -> Path:
        network = run.sampling_network()
        # A fresh generator each time: a stochastic sampler (DDIM with eta > 0) draws the same step noise for
        # every grid, so grids stay comparable, and training's random stream is left alone.
        generator = torch.Generator().manual_seed(run.config["seed"] + 3)
        with eval_mode(network):
            samples = conditions.sample(run.components.sampler, network, self.noise, self.conditions,
                                        generator=generator)
        info = run.components.data.info
        path = run.run_dir / "samples" / f"step-{step:06d}.png"
        if info.preview == "scatter":
            save_scatter(samples, path, info.value_range, landmarks=info.landmarks)
        else:
            save_grid(samples, path, info.value_range, columns=self.columns or None)
        return path


class Evaluation:
    """The ``train.eval`` metrics on ``train.eval.samples`` samples from fixed noise, at each ``train.eval_every``
    step; process 0 computes them, and every process is told the values (``on_evaluate``)."""

    def __init__(self, batch_size: int = 500) -> None:
        self.batch_size = batch_size

    def on_step(self, run: Run, step: int) -> None:
        if run.due.evaluate:
            # the other processes wait here (within train.process_timeout) while process 0 evaluates
            run.emit("on_evaluate", step, distributed.from_process_zero(lambda: self.values(run), run.place))

    @torch.no_grad()
    def values(self, run: Run) -> dict[str, float]:
        network = run.sampling_network()
        components = run.components
        bundle = components.model
        generator = torch.Generator().manual_seed(run.config["seed"] + 2)

        def draw(count: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            noise = components.sampler.noise(count, tuple(bundle.noise_shape), generator=generator)
            drawn = conditions.draw(bundle.conditions, count, generator, run.device)
            samples = conditions.sample(components.sampler, network, noise.to(run.device), drawn, generator=generator)
            return samples.float(), drawn

        with eval_mode(network):
            return evaluate(components.metrics, draw, run.train.eval.samples, self.batch_size)


class BestCheckpoint:
    """Keeps the checkpoint with the best ``train.eval.best`` so far as checkpoints/best (never pruned).

    An evaluation that improves on it asks for a checkpoint of its step; the
    best value so far is kept in every checkpoint, for a resumed run to go on from.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.mode = "min"
        self.value: float | None = None
        self.saved: dict[str, Any] = {}
        self.pending = False

    def load_state(self, state: dict[str, Any]) -> None:
        self.saved = dict(state)

    def on_start(self, run: Run) -> None:
        self.key, self.mode = run.train.eval.best, run.train.eval.best_mode
        if (self.saved.get("key"), self.saved.get("mode")) == (self.key, self.mode):  # train.eval may change
            self.value = self.saved.get("value")

    def state(self) -> dict[str, Any]:
        return {"key": self.key, "mode": self.mode, "value": self.value}

    def on_evaluate(self, run: Run, step: int, values: dict[str, float]) -> None:
        if self.key is None:
            return
        if self.key not in values:
            raise UserError(f"the evaluation logged no {self.key!r}", field="train.eval.best", given=self.key,
                            expected=", ".join(sorted(values)))
        value = values[self.key]
        better = self.value is None or (value < self.value if self.mode == "min" else value > self.value)
        if better and math.isfinite(value):
            self.value, self.pending = value, True
            run.request_checkpoint()

    def on_checkpoint(self, run: Run, step: int, path: Path) -> None:
        if self.pending and run.is_main:
            checkpoints.mark_best(run.run_dir / "checkpoints", path)
        self.pending = False


BUILT_IN = {
    "metrics-file": MetricsFile,
    "progress": Progress,
    "tensorboard": TensorBoard,
    "sample-grid": SampleGrid,
    "evaluation": Evaluation,
    "best-checkpoint": BestCheckpoint,
}
"""Each built-in callback's class, by name (each is built with no options)."""
