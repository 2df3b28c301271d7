"""Callbacks: the loop's own side work, and experiment trackers.

The built-in ones a run's ``train`` section turns on (``metrics-file``,
``progress``, ``tensorboard``, ``sample-grid``, ``evaluation``,
``best-checkpoint``) and the trackers a config lists under ``callbacks:``
(``mlflow``, ``wandb``; each needs its extra). The events are in
:mod:`aigc_kit.core.callbacks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aigc_kit.core.plugin_api import ComponentSpec, hookimpl

from .options import MlflowOptions, WandbOptions


def _builtin(name: str) -> Callable[[Any], Any]:
    """The factory of a built-in callback (its module imports torch, so only when a run builds one)."""

    def factory(options: Any) -> Any:
        from . import builtin

        return builtin.BUILT_IN[name]()

    return factory


def _mlflow(options: MlflowOptions) -> Any:
    from .mlflow_tracker import MlflowTracker

    return MlflowTracker(options)


def _wandb(options: WandbOptions) -> Any:
    from .wandb_tracker import WandbTracker

    return WandbTracker(options)


@hookimpl
def aigc_register_callbacks() -> list[ComponentSpec]:
    return [
        ComponentSpec("metrics-file", _builtin("metrics-file"), "Append each step's logs and each evaluation to "
                      "RUN_DIR/metrics.jsonl (always on)."),
        ComponentSpec("progress", _builtin("progress"), "A progress bar on stderr (train.progress)."),
        ComponentSpec("tensorboard", _builtin("tensorboard"), "Logs and sample pictures for TensorBoard, in "
                      "RUN_DIR/tensorboard (train.tensorboard; the tensorboard extra)."),
        ComponentSpec("sample-grid", _builtin("sample-grid"), "A sample picture from fixed noise every "
                      "train.sample_every steps, in RUN_DIR/samples (always on)."),
        ComponentSpec("evaluation", _builtin("evaluation"), "The train.eval metrics every train.eval_every steps."),
        ComponentSpec("best-checkpoint", _builtin("best-checkpoint"), "Keep the checkpoint with the best "
                      "train.eval.best as checkpoints/best."),
        ComponentSpec("mlflow", _mlflow, "Log the config, metrics, sample pictures and export to an MLflow "
                      "tracking store (the mlflow extra).", MlflowOptions),
        ComponentSpec("wandb", _wandb, "Log the config, metrics, sample pictures and export to Weights & Biases, "
                      "online or offline (the wandb extra).", WandbOptions),
    ]
