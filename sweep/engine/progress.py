"""What a person sees while a sweep runs: a progress bar with ETA and a line per finished trial."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Event:
    """A finished trial, as the progress display sees it."""

    trial_id: str
    state: str
    objective: float | None
    seconds: float
    reason: str | None = None
    attempt: int = 1
    trial_s: float = 0.0
    setup_s: float = 0.0


class Progress:
    """A progress bar over trials with ETA, a line per finished trial, and the final summary."""

    def __init__(self, total: int, done: int, quiet: bool, running: Callable[[], str] | None = None):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet or not self.console.is_terminal
        self.total, self.done = total, done
        self.seen: set[str] = set()
        self.trial_s = self.setup_s = 0.0
        self.failed = 0
        self._bar = None
        if not self.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                RenderableColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                "failed {task.fields[failed]}",
                TimeElapsedColumn(),
                "ETA",
                TimeRemainingColumn(),
                RenderableColumn(_Live(running)) if running else "",
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task("trials", total=total, completed=done, failed=0)
            self._bar.start()

    def log(self, line: str) -> None:
        """Print a message above the bar."""
        self.console.print(line, markup=False, soft_wrap=True)

    def __call__(self, event: Event) -> None:
        self.trial_s += event.trial_s
        self.setup_s += event.setup_s
        if event.trial_id not in self.seen:
            self.seen.add(event.trial_id)
            self.done += 1
        self.failed += event.state in ("failed", "diverged")
        value = "-" if event.objective is None else f"{event.objective:.4f}"
        why = f" ({event.reason})" if event.reason and event.state != "complete" else ""
        why += f" [attempt {event.attempt}]" if event.attempt > 1 else ""
        self.log(
            f"[{self.done}/{self.total}] {event.trial_id}  {event.state}{why}  objective={value}  "
            f"{event.seconds:.1f}s"
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, failed=self.failed)

    def close(self) -> None:
        """Stop the bar."""
        if self._bar is not None:
            self._bar.stop()


class _Live:
    """A rich renderable whose text is re-read on every refresh."""

    def __init__(self, text: Callable[[], str]):
        self.text = text

    def __rich__(self) -> str:
        return self.text()
