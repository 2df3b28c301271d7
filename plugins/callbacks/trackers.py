"""What every experiment tracker shares: calls on a thread of their own, one warning per failure, the tracker's
run identity kept in the run directory so that a resumed run goes on in the same tracker run."""

from __future__ import annotations

import collections
import importlib.util
import json
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from aigc_kit.core.callbacks import Run
from aigc_kit.core.errors import UserError
from aigc_kit.core.files import write_text


class Worker:
    """Runs calls in order on a daemon thread: training never waits for a tracker, a slow or dead one included.

    At most ``limit`` calls wait; beyond, the oldest is dropped. A call that
    raises is reported once per kind of failure (:meth:`warn`), and the calls
    after it are still tried (a server may come back).
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.waiting: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = collections.deque()
        self.ready = threading.Condition()
        self.closing = False
        self.warned: set[str] = set()
        self.thread = threading.Thread(target=self._work, name=f"aigc-kit {name}", daemon=True)
        self.thread.start()

    def submit(self, function: Callable[..., Any], *arguments: Any) -> None:
        with self.ready:
            if len(self.waiting) >= self.limit:
                self.waiting.popleft()
                self.warn("dropped", f"the {self.name} tracker is behind by {self.limit} calls: dropping the oldest "
                                     "(raise its queue option, or check the tracker)")
            self.waiting.append((function, arguments))
            self.ready.notify()

    def close(self, seconds: float) -> None:
        """Let the waiting calls finish, for ``seconds`` at most; then leave them (the thread is a daemon)."""
        with self.ready:
            self.closing = True
            self.ready.notify()
        self.thread.join(seconds)
        if self.thread.is_alive():
            with self.ready:
                left = len(self.waiting) + 1
            self.warn("unsent", f"the {self.name} tracker did not take the last {left} call(s) within "
                                f"{seconds:g} s (its flush_seconds option); they are not sent")

    def warn(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def _work(self) -> None:
        while True:
            with self.ready:
                while not self.waiting and not self.closing:
                    self.ready.wait()
                if not self.waiting:
                    return
                function, arguments = self.waiting.popleft()
            try:
                function(*arguments)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure must never stop training
                called = getattr(function, "__name__", "a call").lstrip("_")
                self.warn("failed", f"the {self.name} tracker failed ({called}): "
                                    f"{type(exc).__name__}: {exc}; training goes on without it (this warning "
                                    "comes once; later calls are still tried)")


class Tracker:
    """A callback that sends a run to an experiment tracker, from process 0, through a :class:`Worker`.

    A subclass opens (or reopens) its tracker run in :meth:`open` and returns
    what identifies it, kept in RUN_DIR/trackers/NAME.json; and says how to
    log metrics, a picture, a file, and the end.
    """

    name = "tracker"
    identity_model: type[BaseModel]
    package: str | None = None
    """The Python package the tracker talks through, checked for when the run is built (before any step)."""
    install_hint = ""
    """How to install it, for the message when it is missing."""

    def __init__(self, options: Any) -> None:
        if self.package is not None and importlib.util.find_spec(self.package) is None:
            raise UserError(f"the {self.name} callback needs the {self.package} package", field="callbacks",
                            hint=self.install_hint or f"pip install 'aigc-kit[{self.name}]'")
        self.options = options
        self.worker: Worker | None = None
        self.opened = False

    # -- events -------------------------------------------------------------

    def on_start(self, run: Run) -> None:
        if not run.is_main:
            return
        self.worker = Worker(self.name, self.options.queue)
        previous = self._identity(run) if run.resumed_from else None
        self.worker.submit(self._open, run, previous)

    def on_log(self, run: Run, step: int, logs: dict[str, float]) -> None:
        self._submit(self.log_metrics, step, dict(logs), time.time())

    def on_evaluate(self, run: Run, step: int, values: dict[str, float]) -> None:
        self.on_log(run, step, values)

    def on_samples(self, run: Run, step: int, path: Path) -> None:
        if self.options.log_samples:
            self._submit(self.log_picture, step, Path(path))

    def on_export(self, run: Run, path: Path, report: Any) -> None:
        if self.options.log_export:
            self._submit(self.log_export, Path(path))

    def on_end(self, run: Run, outcome: str) -> None:
        if self.worker is None:
            return
        self._submit(self.finish, outcome)
        self.worker.close(self.options.flush_seconds)
        self.worker = None

    def _submit(self, function: Callable[..., Any], *arguments: Any) -> None:
        """Queue a call for the tracker run (skipped when the run could not be opened: that was warned of)."""
        if self.worker is None:
            return

        def call() -> None:
            if self.opened:
                function(*arguments)

        call.__name__ = function.__name__
        self.worker.submit(call)

    # -- what a tracker implements -------------------------------------------

    def logs_to(self, run_dir: Path) -> str:
        """Where the tracker sends the run, for the run's opening lines ("" to say nothing)."""
        return ""

    def open(self, run: Run, previous: BaseModel | None) -> BaseModel:
        raise NotImplementedError

    def log_metrics(self, step: int, values: dict[str, float], timestamp: float) -> None:
        raise NotImplementedError

    def log_picture(self, step: int, path: Path) -> None:
        raise NotImplementedError

    def log_export(self, path: Path) -> None:
        raise NotImplementedError

    def finish(self, outcome: str) -> None:
        raise NotImplementedError

    # -- the tracker run's identity ------------------------------------------

    def _open(self, run: Run, previous: BaseModel | None) -> None:
        identity = self.open(run, previous)
        self.opened = True
        write_text(self._identity_file(run), json.dumps(identity.model_dump(mode="json"), indent=2))

    def _identity_file(self, run: Run) -> Path:
        return run.run_dir / "trackers" / f"{self.name}.json"

    def _identity(self, run: Run) -> BaseModel | None:
        """The tracker run this run used before it was resumed, if its file holds one (checked, never trusted)."""
        path = self._identity_file(run)
        if not path.is_file() or path.stat().st_size > 64 * 1024:
            return None
        try:
            return self.identity_model.model_validate_json(path.read_text(encoding="utf-8"))
        except (ValidationError, OSError, UnicodeDecodeError) as exc:
            warnings.warn(f"{path} is not a {self.name} run identity ({type(exc).__name__}); starting a new "
                          f"{self.name} run", RuntimeWarning, stacklevel=2)
            return None


class Identity(BaseModel):
    """The base of a tracker run's identity file: strict, small."""

    model_config = ConfigDict(extra="forbid")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.eval.samples": 2500, ...}`` (lists keep their index: ``callbacks.0.name``)."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((str(index), value) for index, value in enumerate(data))
    else:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def run_tags(run: Run) -> dict[str, str]:
    """What a tracker run is tagged with: versions, device, precision and each plugin loaded."""
    environment = run.environment
    names = {"aigc-kit": "aigc-kit.version", "torch": "aigc-kit.torch", "python": "aigc-kit.python",
             "device": "aigc-kit.device"}
    tags = {tag: str(environment[key]) for key, tag in names.items() if key in environment}
    precision = environment.get("precision") or {}
    if "precision" in precision:
        tags["aigc-kit.precision"] = str(precision["precision"])
    for name, version in (environment.get("plugins") or {}).items():
        tags[f"aigc-kit.plugin.{name}"] = str(version)
    return tags
