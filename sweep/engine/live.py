"""The trials a sweep is running now and their training step, for the live progress display."""

from __future__ import annotations

import contextlib
import time

from sweep.engine.queue import ATTR, Sweep


class RunningTrials:
    """A one-line description of what runs now: each running trial and its last logged training step.

    Read from the study (which trials are RUNNING, on any worker) and each trial's train_log.jsonl, at
    most every `every_s` seconds, so a display may call it on every refresh; a read that fails (a
    storage hiccup) keeps the last text rather than stopping the display or the sweep.
    """

    def __init__(self, sweep: Sweep, every_s: float = 2.0):
        self.sweep, self.every_s = sweep, every_s
        self._read_at = -float("inf")
        self._text = ""

    def running_ids(self) -> list[str]:
        """Ids of the trials a live worker holds now (claimed and stamped with their id)."""
        from optuna.trial import TrialState

        trials = self.sweep.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return sorted(
            t.user_attrs[ATTR]["trial_id"] for t in trials if "trial_id" in t.user_attrs.get(ATTR, {})
        )

    def describe(self) -> str:
        """E.g. "running dpo-b0.1-lr1e-06-s0 step 12/40"; empty when nothing runs."""
        planned = self.sweep.recipe.train.max_steps
        parts = []
        for trial_id in self.running_ids():
            step = self.sweep.folder.trial(trial_id).last_step()
            shown = "starting" if step is None else f"step {step}" + (f"/{planned}" if planned else "")
            parts.append(f"{trial_id} {shown}")
        return f"running {', '.join(parts)}" if parts else ""

    def __call__(self) -> str:
        now = time.monotonic()
        if now - self._read_at >= self.every_s:
            self._read_at = now
            with contextlib.suppress(Exception):
                self._text = self.describe()
        return self._text
