"""The trainer callback of a trial: its log file, divergence on a non-finite loss, pruning reports, stops."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from sweep.signals import raise_if_stopped


class TrialCallback(TrainerCallback):
    """Sends TRL's log records to `log` (train_log.jsonl), stops on a non-finite loss, reports for pruning.

    The pruning value is `quick(model)` every `every_steps` steps, or the last logged loss without `quick`.
    """

    def __init__(
        self,
        log: Callable[[dict], None],
        every_steps: int | None,
        quick: Callable[[Any], float] | None,
        report: Callable[[int, float], bool] | None,
    ):
        self.log = log
        self.every_steps = every_steps if report is not None else None
        self.quick = quick
        self.report = report
        self.last_loss: float | None = None
        self.diverged_at: int | None = None
        self.quick_value: float | None = None
        self.pruned_at: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.log({"step": state.global_step, "epoch": state.epoch, **(logs or {})})
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])
            if not math.isfinite(self.last_loss):
                self.diverged_at = state.global_step
                control.should_training_stop = True

    def on_step_end(self, args, state, control, model=None, **kwargs):
        raise_if_stopped()  # a Ctrl-C or SIGTERM that a library swallowed ends the trial here
        if self.every_steps is None or state.global_step % self.every_steps:
            return
        if self.quick is None:
            value = self.last_loss
        else:
            was_training = model.training
            value = self.quick(model)
            model.train(was_training)
        if value is None or not math.isfinite(value):
            return
        self.quick_value = value
        if self.report(state.global_step, value):
            self.pruned_at = state.global_step
            control.should_training_stop = True
