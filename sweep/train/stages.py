"""Where a trial's wall time goes: a lap timer whose stages cover the trial from start to metrics.json."""

from __future__ import annotations

import time

import torch

from sweep.spec.metrics import in_stage_order


class Stages:
    """Laps over one trial: `enter(name)` ends the running stage and starts `name`, so the stages add up to
    the wall time from construction to `close()` by construction; `carve` moves seconds a callee timed
    itself (the evaluator's generate/judge/kl) out of the running stage; `claim_s` is the wait that came
    before `start` (the trial's wall time counts it). On a GPU each stage also keeps its peak memory
    (`peak_mb`: torch.cuda.max_memory_allocated, reset as each stage starts)."""

    def __init__(self, start: float | None = None, claim_s: float = 0.0):
        self._seconds: dict[str, float] = {"claim": claim_s} if claim_s else {}
        self.peak_mb: dict[str, float] = {}
        self._cuda = torch.cuda.is_available()  # the caller reset the peak counter as the trial began
        self._current = "setup"
        self._since = time.perf_counter() if start is None else start

    def enter(self, name: str, now: float | None = None) -> None:
        """End the running stage now (or at `now`) and start `name`."""
        now = time.perf_counter() if now is None else now
        self._seconds[self._current] = self._seconds.get(self._current, 0.0) + now - self._since
        if self._cuda:
            peak = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            self.peak_mb[self._current] = max(self.peak_mb.get(self._current, 0.0), peak)
            torch.cuda.reset_peak_memory_stats()
        self._current, self._since = name, now

    def carve(self, parts: dict[str, float]) -> None:
        """Move `parts` (seconds timed inside the running stage) out of it into their own stages."""
        for name, seconds in parts.items():
            self._seconds[name] = self._seconds.get(name, 0.0) + seconds
            self._since += seconds

    def skip(self, seconds: float) -> None:
        """Leave `seconds` just spent out of every stage (work the trial's wall time does not count)."""
        self._since += seconds

    def close(self, now: float | None = None) -> dict[str, float]:
        """End the running stage (at `now`); the seconds per stage, to 0.1 ms, in stage order."""
        self.enter(self._current, now)
        return {name: round(self._seconds[name], 4) for name in in_stage_order(self._seconds)}
