"""Stops: Ctrl-C, SIGTERM (SLURM preemption, time limit, scancel) end the running trial as interrupted.

A stop signal raises KeyboardInterrupt (Ctrl-C) or `Terminated` (any other stop signal) in the main
thread. `Terminated` is a KeyboardInterrupt, so every layer that records a Ctrl-C as `interrupted` (the
trial, the queue) records a SIGTERM the same way, and the process exits 143 (128 + 15) where a Ctrl-C
exits 130. A second SIGTERM during that cleanup is ignored.

A stop is also remembered until the block that installed the handlers ends, because a library may swallow
the exception where it lands: `datasets` fingerprints every `map` (TRL's tokenization) under a bare
`except:`, so a Ctrl-C during data preparation used to vanish and the sweep ran on. The checkpoints of a
run (`raise_if_stopped`: before each claim, after a trainer is built, at every training step) raise a
swallowed stop again.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 130, 143

_requested: list[KeyboardInterrupt] = []
"""The stop received since the handlers were installed (at most one; empty when none arrived)."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal other than Ctrl-C."""

    exit_code = EXIT_TERMINATED


def stop_now(signum: int, frame=None) -> None:
    """A stop signal's handler: remember the stop and raise it (a repeated SIGTERM is ignored from now on)."""
    if signum == signal.SIGINT:
        error: KeyboardInterrupt = KeyboardInterrupt()
    else:
        signal.signal(signum, signal.SIG_IGN)
        error = Terminated(signal.Signals(signum).name)
    if not _requested:
        _requested.append(error)
    raise error


def raise_if_stopped() -> None:
    """Raise again a stop that arrived and was swallowed on its way; nothing when none arrived."""
    if _requested:
        first = _requested[0]
        raise type(first)(*first.args)


def as_stop(error: BaseException) -> KeyboardInterrupt | None:
    """The stop that `error` is or stands for, None for a real error: an error raised after a stop arrived
    is the stop's doing (a library the stop landed in raised an error of its own instead)."""
    if isinstance(error, KeyboardInterrupt):
        return error
    if _requested:
        first = _requested[0]
        return type(first)(*first.args)
    return None


def _handlers() -> dict[int, object]:
    """Ctrl-C (unless this process was started with SIGINT ignored, as nohup does) and SIGTERM."""
    signums = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signums.append(signal.SIGINT)
    return {signum: signal.signal(signum, stop_now) for signum in signums}


@contextlib.contextmanager
def graceful_stops() -> Iterator[None]:
    """Inside the block Ctrl-C and SIGTERM stop the run (remembered); afterwards the previous handlers are
    back and the stop is forgotten."""
    _requested.clear()
    previous = _handlers()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested.clear()


def stop_processes(processes) -> None:
    """Pass a SIGTERM on to every child process (multiprocessing.Process) still running."""
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)


def exit_code(error: KeyboardInterrupt) -> int:
    """143 for a SIGTERM, 130 for a Ctrl-C."""
    return getattr(error, "exit_code", EXIT_INTERRUPTED)
