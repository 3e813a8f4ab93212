"""A results folder filling up mid-sweep: the trial fails with reason `disk`, the run stops, JSON whole."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_engine import inputs, run, trial_files, write_recipe  # noqa: F401 (the module-scoped fixture)
from test_preflight import mounted

pytestmark = pytest.mark.slow


def fill(folder: Path) -> Path:
    """Write zeros into `folder` until its filesystem has no byte left; return the filler file."""
    filler = folder / "filler.bin"
    with filler.open("wb", buffering=0) as handle:
        chunk = b"\0" * (64 << 10)
        while True:
            try:
                handle.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]


def every_json_parses(folder: Path) -> int:
    """Parse every .json and .jsonl file under `folder` whole; return how many there are."""
    files = [*folder.rglob("*.json"), *folder.rglob("*.jsonl")]
    for path in files:
        text = path.read_text()
        if path.suffix == ".json":
            json.loads(text)
        else:
            assert text == "" or text.endswith("\n"), path
            [json.loads(line) for line in text.splitlines()]
    return len(files)


def test_a_results_folder_filling_up_mid_trial_fails_it_with_reason_disk_and_stops(inputs, tmp_path):  # noqa: F811
    import optuna

    from sweep.engine.queue import ATTR

    methods = {"dpo": {"beta": [0.1, 0.2], "learning_rate": [1e-3]}}
    recipe = write_recipe(
        inputs, "disk", methods, train={"max_steps": 40, "max_length": 48}, execution={"max_retries": 0}
    )
    storage = f"sqlite:///{tmp_path / 'study.db'}"  # the study on another disk, so its record survives
    with mounted(tmp_path / "disk", "size=16m") as disk:
        sweep = disk / "results" / "disk"
        command = [sys.executable, "-m", "sweep", "run", str(recipe), "--results", str(disk / "results")]
        process = subprocess.Popen(
            [*command, "--storage", storage, "-q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 120
        while not list(sweep.glob("trials/*/params.json")):
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
            time.sleep(0.02)
        filler = fill(disk)
        code = process.wait(timeout=120)
        output = process.stdout.read().decode()
        assert code == 1, output
        assert "stopped: the results folder is full or not writable" in output.strip().splitlines()[-1]
        assert "Traceback" not in output
        study = optuna.load_study(study_name="disk", storage=storage)
        records = [
            (t.state.name, t.user_attrs[ATTR]) for t in study.get_trials() if t.state.name != "WAITING"
        ]
        assert [(state, attrs["state"], attrs["reason"]) for state, attrs in records] == [
            ("FAIL", "failed", "disk")
        ], "one trial failed for the disk and the worker stopped (no retry, no next trial)"
        victim = records[0][1]["trial_id"]
        assert every_json_parses(sweep) >= 3
        assert not list(sweep.rglob("*.tmp")), "an atomic write left its temporary file"
        filler.unlink()
        again = run("run", recipe, "--results", disk / "results", "--storage", storage, "-q")  # in-process
        assert again.exit_code == 0, again.output
        metrics = trial_files(sweep)
        assert all(m["state"] == "complete" for m in metrics.values()) and len(metrics) == 2
        assert metrics[victim]["attempt"] == 2, "a disk failure does not use up the trial's retries"
        every_json_parses(sweep)
