"""SIGINT and SIGTERM: during training, finish the step, checkpoint, then stop; elsewhere, unwind.

During training the first signal only sets a flag that the loop reads after each
step; a second SIGINT (the user pressing Ctrl-C again) stops at once with
``KeyboardInterrupt``. Outside training, SIGTERM is raised as :class:`Terminated`,
as Python raises SIGINT as ``KeyboardInterrupt``, so that every ``finally`` runs
(temporary files are removed) instead of the process vanishing mid-write.
Exit statuses follow the shell's convention: 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class StopRequest:
    """The signal that asked training to stop, or 0."""

    signal: int = 0


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set ``request.signal`` instead of killing the process."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # handlers can only be set there
        yield request
        return

    def handle(number: int, frame: object) -> None:
        if request.signal and number == signal.SIGINT:
            raise KeyboardInterrupt
        request.signal = number

    previous = {number: signal.signal(number, handle) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: ``except Exception`` does not swallow it)."""

    signal_number = signal.SIGTERM


_terminating = threading.Event()


def terminating() -> bool:
    """Whether SIGTERM arrived within :func:`termination_raises`: native code may have turned :class:`Terminated`
    into another exception (pybind11 reports any error while a module initialises as ``ImportError``)."""
    return _terminating.is_set()


@contextlib.contextmanager
def termination_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(number: int, frame: object) -> None:
        _terminating.set()
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(signal_number: int) -> int:
    """130 for SIGINT, 143 for SIGTERM."""
    return 128 + signal_number
