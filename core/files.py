"""Writing files so that nobody sees half of one, and no temporary file outlives the write.

This module does not import torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block ends without an error.

    The temporary name is unique to this call (two processes writing the same
    file never share one), and the temporary file is removed on every other
    exit: an exception, Ctrl-C, or SIGTERM (which the CLI raises as an
    exception). A block may also move the temporary file elsewhere itself.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        if temporary.exists():
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str, *, durable: bool = False) -> None:
    """Write ``text`` to ``path`` all at once: a reader sees the old file or the new one, never a part.

    ``durable`` also flushes it to the disk before the rename (checkpoint pointers).
    """
    with replacing(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full, in any of the forms the writers raise it.

    ``OSError`` with ENOSPC or EDQUOT; safetensors' ``SafetensorError`` and
    torch.save's ``RuntimeError`` ("file write failed" from its zip writer)
    carry it only in their messages.
    """
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return "No space left" in text or "Disk quota exceeded" in text or (
        isinstance(exc, RuntimeError) and "inline_container" in text and "file write failed" in text)


@contextlib.contextmanager
def disk_full_is_a_user_error(folder: Path, hint: str) -> Iterator[None]:
    """Within the block, a full disk becomes one :class:`UserError` naming the file (or ``folder``) and ``hint``."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        where = getattr(exc, "filename", None) or folder
        raise UserError("no space left on the device", file=str(where), hint=hint) from None
