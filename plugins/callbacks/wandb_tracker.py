"""The ``wandb`` callback: a run's config, metrics, sample pictures and export in Weights & Biases.

The same mapping as the ``mlflow`` callback: the resolved config (nested, as
W&B shows it) as the run's config; each logged value at its step; sample
pictures as the ``samples`` image; the export as a ``model`` artifact; tags
for versions and plugins. W&B's files go to RUN_DIR/trackers/wandb; in
offline mode that is all it writes, for ``wandb sync`` to send later.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from aigc_kit.core.callbacks import Run

from .options import WandbOptions
from .trackers import Identity, Tracker, run_tags


class WandbIdentity(Identity):
    run_id: str


class WandbTracker(Tracker):
    name = package = "wandb"
    identity_model = WandbIdentity

    def __init__(self, options: WandbOptions) -> None:
        super().__init__(options)
        self.wandb: Any = None
        self.run: Any = None

    def logs_to(self, run_dir: Path) -> str:
        entity = f"{self.options.entity}/" if self.options.entity else ""
        mode = self.options.mode or os.environ.get("WANDB_MODE") or "online"
        return f"W&B project {entity}{self.options.project} ({mode}; files in {run_dir / 'trackers' / 'wandb'})"

    def open(self, run: Run, previous: WandbIdentity | None) -> WandbIdentity:
        import wandb

        folder = run.run_dir / "trackers"
        folder.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        tags = [*(f"{key}={value}"[:64] for key, value in run_tags(run).items()), *self.options.tags]
        self.run = wandb.init(
            project=self.options.project, entity=self.options.entity, mode=self.options.mode,
            name=self.options.run_name or run.run_dir.resolve().name, dir=str(folder.resolve()), config=run.config,
            tags=tags, id=previous.run_id if previous is not None else None,
            resume="allow" if previous is not None else None, reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        return WandbIdentity(run_id=self.run.id)

    def log_metrics(self, step: int, values: dict[str, float], timestamp: float) -> None:
        self.run.log(dict(values), step=step)

    def log_picture(self, step: int, path: Path) -> None:
        self.run.log({"samples": self.wandb.Image(str(path))}, step=step)

    def log_export(self, path: Path) -> None:
        artifact = self.wandb.Artifact(_artifact_name(f"{self.run.id}-{path.stem}"), type="model")
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, outcome: str) -> None:
        self.run.finish(exit_code=0 if outcome in ("finished", "stopped") else 1)


def _artifact_name(text: str) -> str:
    """W&B artifact names take letters, digits, dashes, underscores and dots."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)
