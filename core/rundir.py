"""The run directory as a whole: which files a run writes there, one writer at a time, a place one can write to.

- :func:`foreign_files` and :func:`clear_run` know what a run writes (``output.overwrite`` removes only that,
  and refuses a folder holding anything else);
- :func:`hold` takes the run directory's lock for as long as a run writes there (a second ``aigc-kit run``
  or ``resume`` of the same folder is refused, naming the holder; the operating system releases the lock
  when its process dies, so a stale lock never blocks);
- :func:`check_writable` and :func:`check_output_file` refuse, before any work, a place that cannot be written to.

This module does not import torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

LOCK_FILE = ".aigc-kit.lock"
_TEMPORARY = r"\..+\.tmp"
_OWN = {  # folder inside the run directory -> the names a run (or aigc-kit eval / report) writes there
    "": [r"config\.yaml", r"environment\.json", r"metrics\.jsonl", r"eval\.json", re.escape(LOCK_FILE), _TEMPORARY],
    "checkpoints": [r"step-\d{6,}", r"latest", r"best", r"\.step-\d{6,}\..*", r"\.(latest|best)\..+\.tmp"],
    "samples": [r"step-\d{6,}\.png", _TEMPORARY],
    "tensorboard": [r"events\.out\.tfevents\..+"],
    "report": [r"report\.html", r"(losses|speed|metrics)\.png", _TEMPORARY],
}
_WHOLE = {"trackers"}
"""Folders inside the run directory that belong to the run whole: the trackers' local files (docs/hooks.md)."""
_CHECKPOINT_FILES = [r"weights\.safetensors", r"state\.pt", r"config\.yaml"]


def foreign_files(run_dir: Path, export_file: str | None = None) -> list[Path]:
    """Files and folders under ``run_dir`` that no run writes (the end-of-run export, and a failed one, count)."""
    if not run_dir.is_dir():
        return []
    exported = Path(export_file) if export_file else None
    top_level = [*_OWN[""], r".+\.failed\.onnx"]
    export_folder = exported.parts[0] if exported is not None and len(exported.parts) > 1 else None
    if exported is not None and export_folder is None:
        top_level.append(re.escape(exported.name))
    foreign: list[Path] = []
    for entry in sorted(run_dir.iterdir()):
        if entry.is_symlink():
            foreign.append(entry)
        elif entry.is_dir() and entry.name in _WHOLE:
            continue
        elif entry.is_dir() and entry.name in _OWN and entry.name:
            foreign += _foreign_in(entry, _OWN[entry.name])
        elif entry.is_dir() and entry.name == export_folder:
            allowed = {exported.as_posix(), exported.with_name(exported.stem + ".failed.onnx").as_posix()}
            foreign += [path for path in sorted(entry.rglob("*"))
                        if path.is_file() and path.relative_to(run_dir).as_posix() not in allowed]
        elif entry.is_dir() or not _matches(entry.name, top_level):
            foreign.append(entry)
    return foreign


def _foreign_in(folder: Path, allowed: list[str]) -> list[Path]:
    foreign = []
    for entry in sorted(folder.iterdir()):
        if not _matches(entry.name, allowed) or entry.is_symlink():
            foreign.append(entry)
        elif entry.is_dir() and folder.name == "checkpoints" and not entry.name.startswith("."):
            foreign += [inner for inner in sorted(entry.iterdir()) if not _matches(inner.name, _CHECKPOINT_FILES)
                        or not inner.is_file()]
        elif entry.is_dir() and folder.name != "checkpoints":
            foreign.append(entry)
    return foreign


def _matches(name: str, patterns: list[str]) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in patterns)


def clear_run(run_dir: Path, export_file: str | None = None) -> None:
    """Remove what an earlier run wrote in ``run_dir``; refuse, removing nothing, if it holds anything else."""
    foreign = foreign_files(run_dir, export_file)
    if foreign:
        raise UserError(
            f"output.overwrite removes only what a run writes, and this folder holds {len(foreign)} other "
            f"file(s) or folder(s), e.g. {foreign[0]}",
            file=str(run_dir), hint="move them away, or choose another run directory with --output DIR",
        )
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue  # held by this very run
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


_HELD: set[Path] = set()
"""Run directories this process holds (POSIX locks do not exclude a second holder in the same process)."""


@contextlib.contextmanager
def hold(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block: no other aigc-kit process writes a run there meanwhile.

    The lock is a POSIX record lock (``fcntl.lockf``; ``msvcrt`` on Windows) on
    ``RUN_DIR/.aigc-kit.lock``, which the operating system releases when the
    holding process ends, however it ends, and which DataLoader workers forked
    meanwhile do not inherit. The file says who holds it (PID and host), for the
    message a second process gets; it stays in the run directory. A folder the
    block created and left empty is removed.
    """
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    path = run_dir / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole block
    try:
        if key in _HELD or not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"another aigc-kit process is writing this run ({holder})", file=str(run_dir),
                            hint="wait for it to finish, or stop it (its checkpoints stay), then resume")
        _HELD.add(key)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            yield
        finally:
            _HELD.discard(key)
    finally:
        handle.close()  # closing releases the lock
        if created and [entry.name for entry in run_dir.iterdir()] == [LOCK_FILE]:
            path.unlink()  # a run that stopped before writing anything leaves no folder behind
            run_dir.rmdir()


def _try_lock(handle: object) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def check_writable(folder: Path, what: str = "the run directory", option: str = "--output DIR") -> None:
    """Refuse, before any work, a ``folder`` that cannot be created or written to (exit 2, not a crash later).

    Nothing is created: the folder itself when it exists, else its nearest
    existing parent, is tried with a temporary file, removed at once.
    """
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} cannot be created: {existing} is a file, not a folder", file=str(folder),
                        hint=f"choose another place ({option})")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"{what} cannot be written: creating a file in {existing} failed ({exc.strerror or exc})",
                        file=str(folder),
                        hint=f"choose a folder you can write to ({option})") from None


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, a file path that cannot be written: a folder, under a file, or unwritable."""
    if path.is_dir():
        raise UserError(f"{option} names a folder; a file is expected", file=str(path),
                        hint=f"add a file name ({option} FOLDER/NAME)")
    try:
        check_writable(path.parent, "its folder", option)
    except UserError as error:
        error.file, error.message = str(path), f"cannot write here: {error.message}"
        raise
