"""Callbacks: side work on a run's events, and the run as a callback sees it.

A callback is any object with some of these methods. Each is optional; each
takes the :class:`Run` first. Within a run they come in this order:

- ``on_start(run)``: once, before the first step (after a resume restored its state).
- ``on_log(run, step, logs)``: at each log step (``train.log_every``), the
  interval's mean losses and logs (the same in every process), its
  ``steps_per_second`` and the ``seconds`` since the start.
- ``on_step(run, step)``: after every step. The built-in ``sample-grid`` and
  ``evaluation`` callbacks do their work here, at the steps ``run.due`` says.
- ``on_samples(run, step, path)``: a sample picture was written (process 0).
- ``on_evaluate(run, step, values)``: the metrics were computed (every process gets the values).
- ``on_checkpoint(run, step, path)``: a checkpoint was written (every process; process 0 wrote it).
- ``on_interrupt(run, step, signal)``: SIGINT or SIGTERM stopped the run, after its checkpoint.
- ``on_export(run, path, report)``: the run's export was written (process 0; a run that was not interrupted).
- ``on_end(run, outcome)``: always, last; ``outcome`` is ``finished``, ``stopped``
  (a callback asked, with ``run.request_stop(reason)``), ``interrupted`` or ``failed``.

Within a step: ``on_log``, then ``on_step``, then the checkpoint and
``on_checkpoint``, then ``on_interrupt``. The built-in ``sample-grid`` and
``evaluation`` come before the config's callbacks, so a listed callback hears
that step's ``on_samples`` and ``on_evaluate`` before its own ``on_step``.

The ``run`` a callback gets: ``run.step`` (the last finished step),
``run.config`` (the resolved config, plain data), ``run.train`` (the
validated ``train`` section), ``run.components`` (``data``, ``model``,
``loss``, ``sampler``, ``metrics``), ``run.networks``,
``run.sampling_network()`` (the EMA copy when there is one), ``run.run_dir``,
``run.environment`` (what environment.json holds), ``run.is_main``,
``run.due`` (what the ``train`` section schedules after this step: ``log``,
``samples``, ``evaluate``, ``checkpoint``), ``run.samples`` and
``run.last_eval``. It may ask ``run.request_stop(reason)`` (the run ends
after this step with a checkpoint, and exports as a finished run would) and
``run.request_checkpoint()``.

Callbacks are called in every process of a job, in the order a run lists them:
the built-in ones first (``metrics-file``, ``progress``, ``tensorboard``,
``sample-grid``, ``evaluation``, ``best-checkpoint``, each when the ``train``
section asks for it), then the config's ``callbacks:`` list. ``logs`` and
``values`` are the same in every process; work that writes files or talks to
a server belongs in process 0 (``run.is_main``).

A callback may keep state across a resume: ``state() -> dict`` (plain values:
numbers, strings, lists, dicts) is saved in each checkpoint and handed back to
``load_state(state)`` when the run resumes. A callback that raises stops the run
with a message naming it; ``on_end`` after a failure only warns.

This module does not import torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, did_you_mean
from .files import is_disk_full

EVENTS = ("on_start", "on_log", "on_step", "on_samples", "on_evaluate", "on_checkpoint", "on_interrupt",
          "on_export", "on_end")
"""Every event a callback may answer, in the order they come within a run."""

@dataclass(frozen=True)
class Due:
    """What the ``train`` section schedules at this step: the loop reads the device's checks first when any is due."""

    log: bool = False
    samples: bool = False
    evaluate: bool = False
    checkpoint: bool = False

    def any(self) -> bool:
        return self.log or self.samples or self.evaluate or self.checkpoint


@dataclass
class Run:
    """What a callback sees of a run, and what it may ask of it.

    ``config`` is the resolved run config (plain data, every default filled
    in); ``train`` the validated ``train`` section; ``components`` the run's
    dataset, model, loss, sampler and metrics; ``environment`` what
    environment.json records (versions, device, plugins).
    """

    config: dict[str, Any]
    train: Any
    components: Any
    run_dir: Path
    device: Any
    place: Any
    environment: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    """The last finished step (the checkpoint's step before the first one, when resumed)."""
    resumed_from: int = 0
    """The step the run resumed from (0 for a fresh run)."""
    due: Due = field(default_factory=Due)
    samples: list[Path] = field(default_factory=list)
    """Every sample picture written so far by this run's process."""
    last_eval: dict[str, float] = field(default_factory=dict)
    stop_reason: str | None = None
    checkpoint_requested: bool = False
    trainer: Any = field(default=None, repr=False)
    callbacks: Callbacks | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Whether this is process 0, which writes the run directory."""
        return self.place.is_main

    @property
    def networks(self) -> dict[str, Any]:
        return self.trainer.networks

    def sampling_network(self) -> Any:
        """The network samples and exports use: the EMA copy when there is one."""
        return self.trainer.sampling_network()

    def request_stop(self, reason: str) -> None:
        """End the run after this step, with a checkpoint, as a finished run (``on_end`` says ``stopped``).

        A request from any process stops every process.
        """
        self.stop_reason = self.stop_reason or reason

    def request_checkpoint(self) -> None:
        """Write a checkpoint after this step (a request from any process: every process takes part in writing it)."""
        self.checkpoint_requested = True

    def emit(self, event: str, *arguments: Any) -> None:
        """Tell every callback of an event (the built-in callbacks announce samples and evaluations)."""
        if event == "on_samples":
            self.samples.append(arguments[1])
        elif event == "on_evaluate":
            self.last_eval = dict(arguments[1])
        if self.callbacks is not None:
            self.callbacks.emit(event, self, *arguments)


class Callbacks:
    """A run's callbacks, by name, in order; :meth:`emit` calls each one's method for an event."""

    def __init__(self, named: list[tuple[str, Any]]) -> None:
        for name, callback in named:
            check_events(name, callback)
        self.named = list(named)

    def emit(self, event: str, run: Run, *arguments: Any, warn_only: bool = False) -> None:
        """Call each callback's method for ``event``; with ``warn_only``, one that fails is reported as a warning."""
        for name, callback in self.named:
            method = getattr(callback, event, None)
            if method is None:
                continue
            try:
                method(run, *arguments)
            except Exception as exc:
                if warn_only:
                    warnings.warn(f"the callback {name!r} failed in {event}: {type(exc).__name__}: {exc}",
                                  stacklevel=2)
                    continue
                if isinstance(exc, UserError) or is_disk_full(exc):
                    raise  # a user error as it is, a full disk as such
                raise UserError(f"the callback {name!r} failed in {event}: {type(exc).__name__}: {exc}",
                                hint="--debug shows where it failed") from exc

    def end(self, run: Run, outcome: str) -> None:
        """``on_end`` for every callback; after a failure or an interrupt, a callback that fails too only warns
        (the run's own error is the one to report)."""
        self.emit("on_end", run, outcome, warn_only=outcome not in ("finished", "stopped"))

    def states(self) -> dict[str, Any]:
        """Each stateful callback's ``state()``, for the checkpoint."""
        return {name: callback.state() for name, callback in self.named if hasattr(callback, "state")}

    def load_states(self, states: dict[str, Any]) -> None:
        for name, callback in self.named:
            if name in states and hasattr(callback, "load_state"):
                callback.load_state(states[name])


def check_events(name: str, callback: Any) -> None:
    """Refuse a callback whose ``on_*`` method is no event (a misspelt one would never be called)."""
    for attribute in dir(callback):
        if attribute.startswith("on_") and attribute not in EVENTS and callable(getattr(callback, attribute)):
            raise UserError(f"the callback {name!r} has a method {attribute}, which is no event",
                            expected=", ".join(EVENTS),
                            hint=did_you_mean(attribute, EVENTS) or "rename it, or make it private (_on_...)")


def standard(train: Any, metrics: bool) -> list[str]:
    """The built-in callbacks the ``train`` section asks for, in their order (``metrics``: the run evaluates some)."""
    names = ["metrics-file"]
    if train.progress:
        names.append("progress")
    if train.tensorboard:
        names.append("tensorboard")
    names.append("sample-grid")
    if train.eval_every and metrics:
        names.append("evaluation")
        if train.eval.best is not None:
            names.append("best-checkpoint")
    return names
