"""The trackers' options (no torch, no tracker package: read when plugins are listed)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc_kit.core.plugin_api import Options


class TrackerOptions(Options):
    """What every tracker takes."""

    log_samples: bool = Field(True, description="Send each sample picture.")
    log_export: bool = Field(True, description="Send the run's export (the ONNX file) at the end.")
    queue: int = Field(1000, gt=0, le=10**6, description="Calls waiting for the tracker at most; beyond, the "
                                                         "oldest are dropped (with one warning) so training never waits.")
    flush_seconds: float = Field(60.0, ge=0, description="At the end, wait this long at most for the calls still "
                                                         "waiting to reach the tracker.")


class MlflowOptions(TrackerOptions):
    tracking_uri: str | None = Field(None, description="The tracking store: a server (http://HOST:PORT), or "
                                                       "sqlite:///PATH.db. Default: MLFLOW_TRACKING_URI if set, else "
                                                       "sqlite:///RUN_DIR/mlflow.db, with artifacts in RUN_DIR/mlartifacts.")
    experiment: str = Field("aigc-kit", min_length=1, description="The experiment's name (created if missing).")
    run_name: str | None = Field(None, description="The MLflow run's name; default: the run directory's name.")
    tags: dict[str, str] = Field(default_factory=dict, description="More tags for the MLflow run.")


class WandbOptions(TrackerOptions):
    project: str = Field("aigc-kit", min_length=1, description="The W&B project.")
    entity: str | None = Field(None, description="The W&B team or user; default: your default entity.")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline (files in RUN_DIR/wandb, for `wandb sync` later) or disabled; "
                          "default: W&B's own setting (WANDB_MODE, else online).")
    run_name: str | None = Field(None, description="The W&B run's display name; default: the run directory's name.")
    tags: list[str] = Field(default_factory=list, description="More tags for the W&B run.")
