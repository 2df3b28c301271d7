"""The training loop: phases, optimizers, precision, EMA, checkpoints, resume and signals; side work to callbacks.

The loop knows components, not model families: a loss declares its phases
(a GAN's ``discriminator`` phase repeated n times, then its ``generator``
phase; a diffusion model's single phase) and computes each phase's loss; the
loop keeps one optimizer per phase over the networks that phase trains::

    for step in range(start, steps):
        for phase in loss.phases:
            for _ in range(phase.repeat):
                for _ in range(train.accumulate):
                    loss_value, logs = loss.compute(phase, next(batches), bundle, step)
                    optimizers[phase.name].backward(loss_value / train.accumulate)
                optimizers[phase.name].step()   # averaged over processes, clipped, checked finite
        ema.update(sampling network)
        at log steps: callbacks.on_log(step, mean logs)
        callbacks.on_step(step)        # the built-in ones: progress, sample pictures, evaluation
        at intervals: checkpoint, then callbacks.on_checkpoint(step, path)

Everything else a run writes (metrics.jsonl, TensorBoard, sample pictures,
evaluations, the best checkpoint, trackers) is a callback: :mod:`.callbacks`.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as checkpoints
from . import distributed
from .callbacks import Callbacks, Due, Run
from .components import Components, check_components
from .config import RunConfig, fingerprint
from .data import Batch, BatchStream
from .device import SEED_STRIDE, autocast, make_grad_scaler, resolve_precision, seed_everything
from .ema import EMA
from .errors import TrainingError, UserError
from .interrupt import stop_signals
from .optimizers import PhaseOptimizer, merge_optimizer
from .plugin_api import Phase, accepts
from .tallies import Averages, FiniteWatch

TIMING = ("steps_per_second", "seconds")
"""The keys of the logs that time the run rather than measure the model."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training after a step; a checkpoint of that step was written."""

    def __init__(self, signal_number: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"stopped by signal {signal_number} after step {step}")
        self.signal_number, self.step, self.checkpoint = signal_number, step, checkpoint


@dataclass
class TrainResult:
    """What a finished run left behind."""

    steps: int
    checkpoint: Path | None
    samples: list[Path] = field(default_factory=list)
    last_logs: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    """Training time, from the first step to the last (the export and the callbacks' end not counted)."""
    resumed_from: int = 0
    """The checkpoint's step when the run was resumed (0 for a fresh run)."""
    stop_reason: str | None = None
    """Why a callback ended the run early (None when it ran to ``train.steps``)."""
    export: Any = None
    """The export's report, when the run exported."""


class Trainer:
    """Trains the components of one run and writes its run directory."""

    def __init__(self, components: Components, config: RunConfig, resolved_config: dict[str, Any],
                 run_dir: Path, device: torch.device,
                 place: distributed.ProcessPlace | None = None, environment: dict[str, Any] | None = None) -> None:
        self.components = components
        self.config = config
        self.train = config.train
        self.resolved_config = resolved_config
        self.run_dir = run_dir
        self.device = device
        self.bundle = components.model
        self.networks: dict[str, torch.nn.Module] = self.bundle.networks
        self.phases: list[Phase] = list(components.loss.phases)
        check_components(components, config)
        place = place if place is not None else distributed.ProcessPlace()
        self.place = place
        if place.enabled and self.train.sync_batchnorm:
            for name in list(self.networks):
                self.networks[name] = distributed.convert_batchnorm(self.networks[name], device)
        for network in self.networks.values():
            network.to(device).train()
        if place.enabled:
            distributed.broadcast_state(list(self.networks.values()))
        self.precision = resolve_precision(self.train.precision, device).precision  # a run passes it resolved
        self.optimizers = {
            phase.name: PhaseOptimizer(
                phase, self.bundle,
                merge_optimizer(phase.optimizer, self.train.optimizers.get(phase.name)),
                make_grad_scaler(self.precision, device), self.train.grad_clip, self.train.lr_decay,
                self.train.steps, place.world_size,
            )
            for phase in self.phases
        }
        if self.train.channels_last:
            for network in self.networks.values():
                network.to(memory_format=torch.channels_last)
        sampling = self.networks[self.bundle.sampling_network]
        ema = self.train.ema
        self.ema = EMA(sampling, ema.decay, ema.warmup, ema.power) if ema.enabled else None
        if self.train.compile and device.type == "cpu":
            warnings.warn("train.compile is ignored on the CPU: torch's CPU compiler computed the built-in GAN "
                          "networks wrongly on AVX2 CPUs (NaN losses from the first step) and has crashed on others; "
                          "training uncompiled", stacklevel=2)
        elif self.train.compile:  # in place, after the EMA copy: parameter names (and checkpoints) stay the same
            for network in self.networks.values():
                network.compile()
        self.config_fingerprint = fingerprint(resolved_config)
        self._averages = Averages()
        self._watch = FiniteWatch(self.train.nonfinite)
        self._loss_takes = {name: accepts(components.loss.compute, name) for name in ("conditions", "sampler")}
        self.skipped_steps = 0
        self.callbacks = Callbacks(components.callbacks)
        self.run = Run(config=resolved_config, train=self.train, components=components, run_dir=run_dir,
                       device=device, place=place, environment=environment or {}, trainer=self,
                       callbacks=self.callbacks)
        self._started = self._interval_start = 0.0

    # -- the loop ------------------------------------------------------------

    def fit(self, resume: checkpoints.Checkpoint | None = None,
            export: Callable[[Path], tuple[Path, Any]] | None = None) -> TrainResult:
        """Train up to ``train.steps``, telling the callbacks of each event; checkpoints at their intervals.

        With ``resume``, first restore everything the checkpoint holds and continue
        after its step exactly as if the run had not stopped. SIGINT or SIGTERM
        finish the current step, write a checkpoint and raise :class:`Interrupted`.
        ``export(checkpoint)``, called in process 0 when the run ends without an
        interrupt, writes the run's export and returns ``(path, report)``.
        """
        start, position = self.restore(resume) if resume is not None else (0, None)
        batches = self._batches(position)
        result = TrainResult(steps=start, checkpoint=resume.path if resume is not None else None, resumed_from=start)
        run, callbacks = self.run, self.callbacks
        run.step = run.resumed_from = start
        self._started = self._interval_start = time.perf_counter()
        outcome = "failed"
        try:
            callbacks.emit("on_start", run)
            with stop_signals() as stop:
                for step in range(start + 1, self.train.steps + 1):
                    self._step(step, batches, self._averages)
                    run.step = result.steps = step
                    run.due = self._due(step)
                    if run.due.any():
                        self._settle()  # the device's pending finite checks and counts, read once here
                    if run.due.log:
                        logs = self._logs(step)
                        callbacks.emit("on_log", run, step, logs)
                        result.last_logs = {key: value for key, value in logs.items() if key not in TIMING}
                    callbacks.emit("on_step", run, step)
                    asked = [stop.signal, int(run.stop_reason is not None), int(run.checkpoint_requested)]
                    if self.place.enabled:  # every process stops, or checkpoints, after the same step
                        asked = distributed.largest_of_each(asked)
                    signal, stop_asked, checkpoint_asked = asked
                    if run.due.checkpoint or checkpoint_asked or signal or stop_asked:
                        if not run.due.any():
                            self._settle()
                        run.checkpoint_requested = False
                        result.checkpoint = self.write_checkpoint(step, batches.position())
                        callbacks.emit("on_checkpoint", run, step, result.checkpoint)
                    if signal:
                        outcome = "interrupted"
                        callbacks.emit("on_interrupt", run, step, signal)
                        raise Interrupted(signal, step, result.checkpoint)
                    if stop_asked:
                        run.stop_reason = run.stop_reason or "a callback of another process asked to stop"
                        break
            result.seconds = time.perf_counter() - self._started
            if export is not None and self.place.is_main:
                path, result.export = export(result.checkpoint)
                callbacks.emit("on_export", run, path, result.export)
            outcome = "stopped" if run.stop_reason is not None else "finished"
        finally:
            callbacks.end(run, outcome)
            batches.close()
            for network in self.networks.values():
                network.requires_grad_(True)
        result.samples, result.last_eval, result.stop_reason = list(run.samples), dict(run.last_eval), run.stop_reason
        return result

    def _due(self, step: int) -> Due:
        """What the ``train`` section schedules after ``step`` (everything at the last one)."""
        train = self.train
        last = step == train.steps
        return Due(log=step % train.log_every == 0 or last,
                   samples=step % train.sample_every == 0 or last,
                   evaluate=bool(train.eval_every and self.components.metrics and (step % train.eval_every == 0 or last)),
                   checkpoint=step % train.checkpoint_every == 0 or last)

    def _logs(self, step: int) -> dict[str, float]:
        """The interval's mean losses and logs (over every process), its speed and the time since the start."""
        now = time.perf_counter()
        logs = self._averages.pop()
        if self.place.enabled:
            logs = distributed.mean_over_processes(logs)
        steps_done = (step - 1) % self.train.log_every + 1
        logs["steps_per_second"] = steps_done / max(now - self._interval_start, 1e-9)
        logs["seconds"] = now - self._started
        if self.skipped_steps:
            logs["skipped_updates"] = self.skipped_steps
        self._interval_start = now
        return logs

    def restore(self, checkpoint: checkpoints.Checkpoint) -> tuple[int, dict[str, int] | None]:
        """Load a checkpoint's weights, EMA, optimizers, schedules, scalers, RNG and log window.

        Returns (step, data position).
        """
        state = checkpoint.state
        for name, network in self.networks.items():
            if name not in checkpoint.networks:
                raise UserError(f"the checkpoint holds no weights for the network {name!r}", file=str(checkpoint.path))
            network.load_state_dict(checkpoint.networks[name])
        if self.ema is not None:
            averaged = checkpoint.ema.get(self.bundle.sampling_network)
            self.ema.averaged.load_state_dict(averaged if averaged is not None
                                              else self.networks[self.bundle.sampling_network].state_dict())
        for name, optimizer in self.optimizers.items():
            optimizer.optimizer.load_state_dict(state["optimizers"][name])
            optimizer.schedule.load_state_dict(state["schedules"][name])
        scalers = state.get("scalers") or {}
        for name, optimizer in self.optimizers.items():
            saved = scalers.get(name) or state.get("scaler")  # "scaler": one shared by every phase, before
            if optimizer.scaler is not None and saved:
                optimizer.scaler.load_state_dict(saved)
        self._restore_rng(state, checkpoint.step)
        self._averages.load(state.get("log_window", {}))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        # Before callbacks kept state, a checkpoint held the best value of train.eval.best as "best"
        self.callbacks.load_states(state.get("callbacks") or {"best-checkpoint": state.get("best") or {}})
        return checkpoint.step, state.get("data")

    def _batches(self, position: dict[str, int] | None) -> BatchStream:
        dataset = self.components.data.dataset
        if len(dataset) < self.train.batch_size * self.place.world_size:
            raise UserError(
                f"the dataset has {len(dataset)} samples, fewer than one batch in each process",
                field="train.batch_size",
                given=self.train.batch_size,
                hint="use a smaller batch or more data",
            )
        return BatchStream(dataset, self.train.batch_size, self.config.seed, self.device,
                           workers=self.train.data_workers, position=position,
                           rank=self.place.rank, world_size=self.place.world_size,
                           pin_memory=self.device.type == "cuda", channels_last=self.train.channels_last,
                           conditions=self.components.data.info.conditions, dataset_name=self.config.data.name)

    def _step(self, step: int, batches: Iterator[Batch], averages: Averages) -> None:
        """One training step: every phase of the loss, each repeated as it asks, then the EMA update.

        Finite checks stay on the device (read at the next log, evaluation, sample
        or checkpoint), except with ``train.nonfinite: skip``, which must know
        before each update whether to apply it.
        """
        batch = None
        skip = self.train.nonfinite == "skip"
        for phase in self.phases:
            self._only_train(phase)
            optimizer = self.optimizers[phase.name]
            for _ in range(phase.repeat):
                for micro in range(self.train.accumulate):
                    if phase.uses_data or batch is None:
                        batch = next(batches)
                    with autocast(self.precision, self.device):
                        loss, logs = self._compute(phase, batch, step)
                    if skip and not self._finite_everywhere(loss):
                        self.skipped_steps += 1
                        break
                    self._watch.loss(step, phase.name, loss)
                    optimizer.backward(loss / self.train.accumulate, first=micro == 0)
                    averages.add(phase.name, {"loss": loss.detach(), **logs})
                else:
                    finite = optimizer.step(skip_nonfinite=skip)
                    if optimizer.scaler is not None:
                        self._watch.skipped_by_scaler(finite)
                    elif skip:
                        self.skipped_steps += int(not finite)  # already read by the step
                    else:
                        self._watch.gradients(step, phase.name, finite)
        for optimizer in self.optimizers.values():
            if optimizer.scaler is None:
                optimizer.schedule.step()
                continue
            with warnings.catch_warnings():  # a scaler skipped the first update: the schedule still counts the step
                warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
                optimizer.schedule.step()
        if self.ema is not None:
            self.ema.update(self.networks[self.bundle.sampling_network], step)

    def _compute(self, phase: Phase, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of one phase for one batch, given the batch's conditions and the run's sampler if it takes them."""
        extras: dict[str, Any] = {}
        if self._loss_takes["conditions"]:
            extras["conditions"] = {name: value for name, value in batch.conditions.items()
                                    if name in self.bundle.conditions}
        if self._loss_takes["sampler"]:
            extras["sampler"] = self.components.sampler
        return self.components.loss.compute(phase, batch.samples, self.bundle, step, **extras)

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether ``loss`` is finite in every process (read on the host: all processes skip together)."""
        finite = bool(torch.isfinite(loss.detach()).item())
        return distributed.all_agree(finite) if self.place.enabled else finite

    def _settle(self) -> None:
        """Read the device's pending checks: stop on a non-finite loss or gradient (``stop``); count scaler skips."""
        checked, first_bad, skipped = self._watch.read()
        if self.place.enabled:  # the same checks ran in every process: stop at the first one any of them saw
            first_bad = distributed.smallest(first_bad)
        self.skipped_steps += skipped
        if first_bad >= len(checked):
            return
        step, phase, what = checked[first_bad]
        raise TrainingError(
            f"the {phase} phase's {what} was not finite at step {step}; stopped, leaving the last checkpoint intact. "
            "Lower the learning rate, set train.grad_clip, or set train.nonfinite=skip to skip such updates"
        )

    def _restore_rng(self, state: dict[str, Any], step: int) -> None:
        """Each process takes back its own random state; with another process count, fresh ones per process."""
        saved = state.get("rng_by_process") or [state["rng"]]
        if len(saved) == self.place.world_size:
            checkpoints.set_rng_state(saved[self.place.rank])
        else:
            seed_everything(self.config.seed + SEED_STRIDE * self.place.rank + step)

    def _only_train(self, phase: Phase) -> None:
        """Let gradients flow into the phase's networks only (the others are inputs to its loss)."""
        for name, network in self.networks.items():
            network.requires_grad_(name in phase.trains)

    # -- outputs -------------------------------------------------------------

    def sampling_network(self) -> torch.nn.Module:
        """The network samples and exports use: the EMA copy when there is one."""
        return self.ema.averaged if self.ema is not None else self.networks[self.bundle.sampling_network]

    def write_checkpoint(self, step: int, data_position: dict[str, int] | None = None) -> Path:
        """Write the checkpoint of ``step`` (process 0 writes; every process must call this)."""
        rng = checkpoints.rng_state()
        rng_by_process = distributed.gather(rng) if self.place.enabled else [rng]
        path = self.run_dir / "checkpoints" / checkpoints.step_name(step)
        if not self.place.is_main:
            return path
        state = {
            "rng_by_process": rng_by_process,
            "data": data_position or {"epoch": 0, "consumed": 0},
            "log_window": self._averages.state(),
            "skipped_steps": self.skipped_steps,
            "callbacks": self.callbacks.states(),
            "optimizers": {name: opt.optimizer.state_dict() for name, opt in self.optimizers.items()},
            "schedules": {name: opt.schedule.state_dict() for name, opt in self.optimizers.items()},
            "scalers": {name: opt.scaler.state_dict() for name, opt in self.optimizers.items()
                        if opt.scaler is not None},
            "rng": rng,
            "config_fingerprint": self.config_fingerprint,
        }
        ema = {self.bundle.sampling_network: self.ema.averaged} if self.ema is not None else {}
        return checkpoints.save_checkpoint(
            self.run_dir / "checkpoints", step, self.networks, ema, state, self.resolved_config,
            keep=self.train.keep_checkpoints,
        )
