"""Graceful stops: SIGTERM (SLURM preemption, time limit, scancel) ends the running trial as interrupted.

SIGTERM raises `Terminated` in the main thread. It is a KeyboardInterrupt, so every layer that records a
Ctrl-C as `interrupted` (the trial, the queue) records a SIGTERM the same way, and the process exits 143
(128 + 15) where a Ctrl-C exits 130. A second SIGTERM during that cleanup is ignored.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 130, 143


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal other than Ctrl-C."""

    exit_code = EXIT_TERMINATED


def _raise_terminated(signum: int, frame) -> None:
    signal.signal(signum, signal.SIG_IGN)
    raise Terminated(signal.Signals(signum).name)


def stop_on(signum: int) -> None:
    """From now on, `signum` raises Terminated in the main thread (once)."""
    signal.signal(signum, _raise_terminated)


@contextlib.contextmanager
def graceful_sigterm() -> Iterator[None]:
    """SIGTERM raises Terminated inside the block; the previous handler is restored afterwards."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(error: KeyboardInterrupt) -> int:
    """143 for a SIGTERM, 130 for a Ctrl-C."""
    return getattr(error, "exit_code", EXIT_INTERRUPTED)
