"""The ``mlflow`` callback: a run's config, metrics, sample pictures and export in an MLflow tracking store.

The mapping: the resolved config, flattened (``train.batch_size``), as params;
each logged value as a metric at its step (``generator/loss``, ``fid/fid``);
sample pictures under the artifact folder ``samples``, the export under
``export``; tags for versions, device, precision and each plugin. Talks to
MLflow through ``MlflowClient`` only (no global active run), from a thread of
its own (:class:`~.trackers.Worker`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from aigc_kit.core.callbacks import Run

from .options import MlflowOptions
from .trackers import Identity, Tracker, flatten, run_tags

PARAM_LIMIT = 6000
"""The longest param value MLflow stores (longer ones are cut, with an ellipsis)."""


class MlflowIdentity(Identity):
    tracking_uri: str
    run_id: str


class MlflowTracker(Tracker):
    name = package = "mlflow"
    identity_model = MlflowIdentity
    install_hint = "pip install 'aigc-kit[mlflow]' (or mlflow-skinny, to log to a server only)"

    def __init__(self, options: MlflowOptions) -> None:
        super().__init__(options)
        self.client: Any = None
        self.run_id = ""

    def logs_to(self, run_dir: Path) -> str:
        """The tracking store: the option, else MLFLOW_TRACKING_URI, else a SQLite store in RUN_DIR/trackers."""
        if self.options.tracking_uri:
            return self.options.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{(run_dir / 'trackers' / 'mlflow.db').resolve()}"

    def open(self, run: Run, previous: MlflowIdentity | None) -> MlflowIdentity:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.logs_to(run.run_dir)
        (run.run_dir / "trackers").mkdir(parents=True, exist_ok=True)
        if uri.startswith("sqlite:"):  # a new store's table creation is not news on a training run's console
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.client = client = MlflowClient(tracking_uri=uri)
        if previous is not None and previous.tracking_uri == uri:
            self.run_id = previous.run_id
            client.update_run(self.run_id, status="RUNNING")
            return MlflowIdentity(tracking_uri=uri, run_id=self.run_id)
        experiment = client.get_experiment_by_name(self.options.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        elif uri.startswith("sqlite:") and not self.options.tracking_uri and "MLFLOW_TRACKING_URI" not in os.environ:
            artifacts = (run.run_dir / "trackers" / "mlartifacts").resolve().as_uri()
            experiment_id = client.create_experiment(self.options.experiment, artifact_location=artifacts)
        else:
            experiment_id = client.create_experiment(self.options.experiment)
        tags = {**run_tags(run), **self.options.tags}
        created = client.create_run(experiment_id, run_name=self.options.run_name or run.run_dir.resolve().name,
                                    tags=tags)
        self.run_id = created.info.run_id
        params = [Param(key, _param_value(value)) for key, value in flatten(run.config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self.run_id, params=params[start:start + 100])
        return MlflowIdentity(tracking_uri=uri, run_id=self.run_id)

    def log_metrics(self, step: int, values: dict[str, float], timestamp: float) -> None:
        from mlflow.entities import Metric

        milliseconds = int(timestamp * 1000)
        metrics = [Metric(key, float(value), milliseconds, step) for key, value in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def log_picture(self, step: int, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "samples")

    def log_export(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "export")

    def finish(self, outcome: str) -> None:
        status = {"finished": "FINISHED", "stopped": "FINISHED", "interrupted": "KILLED"}.get(outcome, "FAILED")
        self.client.set_terminated(self.run_id, status=status)


def _param_value(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= PARAM_LIMIT else text[:PARAM_LIMIT - 3] + "..."
