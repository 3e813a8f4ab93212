"""Quiet libraries: no progress bars or chatty logs from transformers, datasets, TRL and accelerate."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import datasets
from transformers import PrinterCallback, TrainerCallback
from transformers.utils import logging as transformers_logging


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Hide the progress bars of `datasets` (TRL's data preparation) and transformers (loading, saving)."""
    datasets_bars, transformers_bars = (
        datasets.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
    )
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers_logging.enable_progress_bar()


def quiet_process() -> None:
    """Quiet this process for good: no progress bars, warnings or library info logs (a sweep worker)."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    for name in ("trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)


QUIET_ARGS = {"logging_steps": 0.2, "save_strategy": "no", "report_to": "none", "disable_tqdm": True}
"""TRL arguments for a training run that logs through `quiet_trainer` and saves nothing on its own."""


class ProgressLog(TrainerCallback):
    """Sends each of a trainer's loss logs to a `log` callable as one line."""

    def __init__(self, label: str, log: Callable[[str], None]):
        self.label, self.log = label, log

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.log(f"{self.label}: step {state.global_step}/{state.max_steps}, loss {logs['loss']:.4f}")


def quiet_trainer(trainer, label: str, log: Callable[[str], None]):
    """Make a trainer report its losses through `log` instead of printing them; return it."""
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressLog(label, log))
    return trainer
