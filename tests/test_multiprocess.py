"""Launched trials: one trial over 2 CPU processes (accelerate launch, torch.distributed with gloo), for real.

The trials train the tiny local model of test_engine with TRL's DPO trainer in a 2-rank process group; the
checks compare them with the same trial in one process, run two groups at once, kill a rank, and stop a
worker with SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_engine import inputs, run, trial_files, write_recipe

from sweep.engine.launch import descendants

__all__ = ["inputs"]  # the engine tests' module fixture (tiny model, reward model, data), used here too
pytestmark = pytest.mark.slow
EVAL = {"max_new_tokens": 4, "batch_size": 8, "bootstrap": 200}


def group_recipe(inputs: Path, name: str, betas: list[float], k: int = 2, batch: int = 2, **execution):
    """A CPU recipe of DPO trials (one per beta) over k processes with a per-process batch of `batch`."""
    return write_recipe(
        inputs,
        name,
        {"dpo": {"beta": betas, "learning_rate": [1e-3]}},
        train={"max_steps": 2, "per_device_train_batch_size": batch, "max_length": 48},
        eval=EVAL,
        execution={"devices": "cpu", "processes_per_trial": k, **execution},
    )


def losses(sweep: Path) -> list[float]:
    """The logged training loss of every step of the sweep's one trial."""
    (folder,) = sorted((sweep / "trials").iterdir())
    lines = (folder / "train_log.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def test_two_processes_train_the_same_trial_as_one(inputs, tmp_path):
    one = group_recipe(inputs, "one", [0.1], k=1, batch=4)
    two = group_recipe(inputs, "two", [0.1], k=2, batch=2)  # the same global batch of 4 pairs
    assert run("run", one, "--results", tmp_path, "--quiet").exit_code == 0
    result = run("run", two, "--results", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    (single,) = trial_files(tmp_path / "one").values()
    (double,) = trial_files(tmp_path / "two").values()
    assert single["state"] == double["state"] == "complete"
    assert single["train"]["world_size"] == 1 and double["train"]["world_size"] == 2
    first_one, first_two = losses(tmp_path / "one")[0], losses(tmp_path / "two")[0]
    assert abs(first_one - first_two) < 1e-5, (first_one, first_two)
    low, high = single["win_rate_vs_sft_ci"]
    assert low <= double["win_rate_vs_sft"] <= high
