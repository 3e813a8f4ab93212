"""What a trial produced: its outcome as it goes, the failure it met, and the record it leaves."""

from __future__ import annotations

import copy
import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from sweep.hf.loading import cuda_memory
from sweep.hf.quiet import no_progress_bars
from sweep.io import utc_now
from sweep.results import TrialMetrics
from sweep.train.stages import Stages

EVALUATION_TIMES = ("generate", "judge", "kl")
TIME_KEYS = ("load", "train", *EVALUATION_TIMES, "total")


@dataclass
class TrialResult:
    """The outcome of one trial, as recorded in its metrics.json."""

    trial_id: str
    state: str
    objective: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None


@dataclass
class Outcome:
    """What a trial has produced so far; filled in as it goes, so a failure keeps what came before."""

    state: str = "complete"
    objective: float | None = None
    error: dict[str, str] | None = None
    train: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TIME_KEYS, 0.0))
    stages: Stages | None = None


def metrics_record(
    trial_id: str, outcome: Outcome, started: str, clock: float, attempt: int, worker: dict
) -> TrialMetrics:
    """The trial's metrics.json record (its total time counted from `clock`)."""
    now = time.perf_counter()
    outcome.times["total"] = now - clock
    stages = outcome.stages.close(now) if outcome.stages is not None else {}
    if stages and outcome.stages.peak_mb:  # the trial's peak is its stages' (each stage resets the counter)
        peaks = outcome.stages.peak_mb
        worker = {**worker, "cuda_peak_mb": max(peaks.values()), "cuda_peak_mb_by_stage": peaks}
    return TrialMetrics(
        trial_id=trial_id,
        state=outcome.state,
        objective=outcome.objective,
        error=outcome.error,
        time_s=outcome.times,
        stages_s=stages,
        started=started,
        finished=utc_now(),
        attempt=attempt,
        train=outcome.train,
        worker=worker,
        extra=outcome.metrics,
    )


def result_from(record: TrialMetrics) -> TrialResult:
    top = ("trial_id", "state", "objective", "error")
    metrics = {key: value for key, value in record.to_json().items() if key not in (*top, "schema_version")}
    return TrialResult(record.trial_id, record.state, record.objective, metrics, record.error)


def describe(error: BaseException, reason: str) -> dict[str, str]:
    message = str(error).strip() or repr(error)
    return {"type": type(error).__name__, "message": message[:2000], "reason": reason}


def is_oom(error: BaseException) -> bool:
    """Whether an exception means the accelerator (or host) ran out of memory."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory(freeze: bool = False) -> None:
    """Free a finished trial's trainer, optimizer and activations; `freeze` what survives.

    What survives a full collection after a worker's first trial lives as long as the worker (modules, the
    shared model and caches); freezing it once keeps every later full collection (here and in accelerate, two
    per trial) from walking those hundreds of thousands of objects again. (`gc.get_objects` leaves frozen
    objects out until `gc.unfreeze`.)
    """
    gc.collect()
    if freeze:
        gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_weights(policy, tokenizer, folder: Path, merged: bool) -> None:
    """Save a trained policy and its tokenizer into `folder` (a LoRA policy's adapters, and with `merged` also
    the merged model in fp32, so no update is rounded away, under `folder/merged`)."""
    with no_progress_bars():
        policy.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if merged:
            full = copy.deepcopy(policy).float().merge_and_unload()
            full.save_pretrained(folder / "merged")
            tokenizer.save_pretrained(folder / "merged")


def worker_block(trial: int, setup_s: float) -> dict[str, Any]:
    """metrics.json's `worker` block: the process, its trial count and one-off setup seconds, its resident
    memory in MiB and, on a GPU, what it holds."""
    return {
        "pid": os.getpid(),
        "trial": trial,
        "setup_s": round(setup_s, 3),
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        **cuda_memory(),
    }
