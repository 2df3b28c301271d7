"""Checkpoints: weights in safetensors, training state in a weights-only torch file, written atomically.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding

* ``weights.safetensors``: every network (``networks/NAME/...``) and the EMA copy (``ema/NAME/...``);
* ``state.pt``: optimizer and scaler states, the step, RNG states; read back with ``weights_only=True``;
* ``config.yaml``: the resolved run config, so a checkpoint can be exported on its own.

The folder is written under a temporary name, flushed to disk and renamed, and
``checkpoints/latest`` (a one-line text file naming the newest folder) is
replaced atomically afterwards: a crash at any moment leaves ``latest``
pointing at a complete checkpoint.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import safe_yaml
from .errors import UserError
from .files import is_disk_full, write_text

WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
LATEST = "latest"
BEST = "best"
CHECKPOINT_FILES = (WEIGHTS_FILE, STATE_FILE, CONFIG_FILE)
_STEP_NAME = re.compile(r"step-\d{6,}")


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    networks: dict[str, dict[str, torch.Tensor]]
    ema: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]
    config: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state.get("step", 0))


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(
    folder: Path,
    step: int,
    networks: dict[str, torch.nn.Module],
    ema: dict[str, torch.nn.Module],
    state: dict[str, Any],
    config: dict[str, Any],
    keep: int,
) -> Path:
    """Write the checkpoint for ``step`` atomically, point ``latest`` at it and prune old ones."""
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".step-*"):  # staging folders of a process killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    final = folder / step_name(step)
    staging = Path(tempfile.mkdtemp(prefix=f".{step_name(step)}.", dir=folder))
    try:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, modules in (("networks", networks), ("ema", ema)):
            for name, module in modules.items():
                for key, value in module.state_dict().items():
                    tensors[f"{prefix}/{name}/{key}"] = value.detach().to("cpu").contiguous()
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"step": str(step)})
        torch.save(dict(state, step=step), staging / STATE_FILE)
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        for file in staging.iterdir():
            _fsync_file(file)
        _fsync_dir(staging)
        if final.exists():  # moved aside first, so no name ever points at a half-deleted checkpoint
            replaced = final.with_name(f".{final.name}.replaced")
            os.replace(final, replaced)
            shutil.rmtree(replaced)
        os.replace(staging, final)
        _fsync_dir(folder)
        _write_atomically(folder / LATEST, final.name + "\n")
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if is_disk_full(exc):
            previous = folder / LATEST
            kept = previous.read_text().strip() if previous.is_file() else "none yet"
            raise UserError(
                f"no space left on the device while writing the checkpoint of step {step}; the last complete "
                f"checkpoint ({kept}) is intact",
                file=str(staging.with_name(final.name)),
                hint=f"free some space, then continue with: aigc-kit resume {folder.parent}",
            ) from None
        raise
    _prune(folder, keep, protect=final.name)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for a run directory, a ``checkpoints/`` folder or a checkpoint folder.

    ``latest`` and ``best`` must name a ``step-NNNNNN`` folder beside them, itself
    a real folder there: a pointer that leads anywhere else (an absolute path,
    ``..``, a symbolic link) is refused, so that a run directory cannot make
    aigc-kit read a model from outside it.
    """
    path = Path(path)
    if not path.exists():
        raise UserError("no such run directory or checkpoint", file=str(path))
    if (path / WEIGHTS_FILE).is_file():
        return path
    if path.is_file() and path.name in (LATEST, BEST):  # checkpoints/best or checkpoints/latest itself
        return _pointed_checkpoint(path)
    for folder in (path / "checkpoints", path):
        latest = folder / LATEST
        if latest.is_file():
            return _pointed_checkpoint(latest)
    raise UserError(
        "expected a run directory (with checkpoints/) or a checkpoint folder (with weights.safetensors)",
        file=str(path),
        hint="run `aigc-kit run CONFIG` first, or pass runs/NAME",
    )


def _pointed_checkpoint(pointer: Path) -> Path:
    """The checkpoint ``checkpoints/latest`` (or ``best``) names, checked to be one of its own folder's."""
    try:
        name = pointer.read_bytes()[:256].decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise UserError(f"{pointer.name} is not a checkpoint pointer (expected one line of UTF-8 text)",
                        file=str(pointer), hint="pass one of the step-NNNNNN folders explicitly") from None
    if not _STEP_NAME.fullmatch(name):
        raise UserError(f"{pointer.name} must name a step-NNNNNN folder beside it", file=str(pointer),
                        given=name, hint="pass one of the step-NNNNNN folders explicitly")
    folder = pointer.parent
    target = folder / name
    inside = target.resolve().parent == folder.resolve()
    if target.is_symlink() or not inside or any((target / file).is_symlink() for file in CHECKPOINT_FILES):
        raise UserError(f"{pointer.name} names {name}, which leads outside {folder} (a symbolic link)",
                        file=str(pointer), hint="pass the checkpoint folder itself if you trust where it leads")
    if not (target / WEIGHTS_FILE).is_file():
        raise UserError(f"{pointer} names {name}, which is not a complete checkpoint", file=str(pointer),
                        hint="pass one of the step-NNNNNN folders explicitly")
    return target


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; foreign or damaged files give a :class:`UserError`, never run code."""
    folder = find_checkpoint(path)
    try:
        flat = load_file(folder / WEIGHTS_FILE)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read the weights: {exc}", file=str(folder / WEIGHTS_FILE)) from None
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        state = {}
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged or foreign pickles
        raise UserError(
            f"cannot read the training state: {type(exc).__name__}"
            + (f": {str(exc).splitlines()[0]}" if str(exc).strip() else " (an empty or cut-off file)"),
            file=str(folder / STATE_FILE),
        ) from None
    config_path = folder / CONFIG_FILE
    config = safe_yaml.read(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict | None):
        raise UserError(f"expected the run's config (a mapping), found {type(config).__name__}", file=str(config_path))
    networks: dict[str, dict[str, torch.Tensor]] = {}
    ema: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        prefix, _, rest = key.partition("/")
        name, _, parameter = rest.partition("/")
        target = networks if prefix == "networks" else ema if prefix == "ema" else None
        if target is None or not parameter:
            raise UserError(f"unexpected tensor {key!r} in the weights", file=str(folder / WEIGHTS_FILE))
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"the weights hold NaN or infinite values ({key})", file=str(folder / WEIGHTS_FILE),
                            hint="the file is damaged, or training diverged before it was written: use an earlier "
                                 "checkpoint (checkpoints/step-NNNNNN)")
        target.setdefault(name, {})[parameter] = value
    if not isinstance(state, dict):
        raise UserError(f"expected the training state (a mapping), found {type(state).__name__}",
                        file=str(folder / STATE_FILE))
    return Checkpoint(path=folder, networks=networks, ema=ema, state=state, config=config or {})


RESUME_STATE = {"step": int, "optimizers": dict, "schedules": dict, "rng": dict, "data": dict}
"""What a checkpoint's training state must hold to be resumed from, and the type of each."""


def check_resumable_state(checkpoint: Checkpoint) -> None:
    """Refuse to resume from a checkpoint whose training state is missing or incomplete, naming what lacks."""
    path = checkpoint.path / STATE_FILE
    if not checkpoint.state:
        raise UserError("there is no training state to resume from (state.pt is missing or empty)", file=str(path),
                        hint="export it still works (aigc-kit export); to train on, resume an earlier checkpoint "
                             "or start a new run")
    for key, kind in RESUME_STATE.items():
        if not isinstance(checkpoint.state.get(key), kind):
            raise UserError(f"the training state lacks {key!r} (expected a {kind.__name__})", file=str(path),
                            given=type(checkpoint.state.get(key)).__name__,
                            hint="resume an earlier checkpoint, or start a new run")


def rng_state() -> dict[str, Any]:
    """The state of this process's random generators (Python, NumPy, torch's CPU one and its CUDA device's),
    in types ``torch.load(weights_only=True)`` accepts."""
    _, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's own device only: with one process per GPU, each checkpoints and restores its own
        # (reading every device's state would also start a CUDA context on each of them).
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(_as_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
         numpy_state["has_gauss"], numpy_state["cached"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, list | tuple):  # every device's state, as earlier checkpoints kept it
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(item) for item in value)
    return value


def _write_atomically(path: Path, text: str) -> None:
    write_text(path, text, durable=True)
    _fsync_dir(path.parent)


def mark_best(folder: Path, checkpoint: Path) -> None:
    """Point ``best`` at ``checkpoint`` (atomically); pruning keeps it from then on."""
    _write_atomically(folder / BEST, checkpoint.name + "\n")


def _prune(folder: Path, keep: int, protect: str) -> None:
    best = folder / BEST
    kept = {protect, best.read_text().strip() if best.is_file() else ""}
    steps = sorted(p for p in folder.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
