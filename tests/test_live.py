"""The live progress display: done/planned, failed count, elapsed, ETA, the running trial and its step."""

from __future__ import annotations

import io
import os

from test_engine import inputs, write_recipe  # noqa: F401  (the module-scoped tiny inputs)

from sweep.engine.folder import open_sweep
from sweep.engine.live import RunningTrials
from sweep.engine.progress import Event, Progress
from sweep.engine.queue import claim, close, reconcile, spec_for, start
from sweep.spec.validate import load_recipe


def test_running_trials_names_the_held_trial_and_its_last_logged_step(inputs, tmp_path):  # noqa: F811
    methods = {"dpo": {"beta": [0.1, 0.5], "learning_rate": [1e-3]}}
    sweep = open_sweep(load_recipe(write_recipe(inputs, "live", methods)), tmp_path)
    running = RunningTrials(sweep, every_s=0.0)
    reconcile(sweep)
    assert running() == ""
    trial = claim(sweep)
    spec, attrs = spec_for(sweep, trial)
    attrs.update(pid=os.getpid(), state="running")
    start(sweep, trial, attrs)
    assert running() == f"running {spec.trial_id} starting"
    for step in (1, 2):
        sweep.folder.trial(spec.trial_id).log({"step": step, "loss": 0.5})
    assert running() == f"running {spec.trial_id} step 2/3"
    close(sweep, trial, attrs, "complete", None, 0.5)
    assert running() == ""


def test_progress_shows_failed_count_elapsed_eta_and_the_running_trial(monkeypatch, capsys):
    from rich.console import Console

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    progress = Progress(4, 1, quiet=False, running=lambda: "running dpo-b0.1-s0 step 5/40")
    assert not progress.quiet
    progress(Event("ipo-b0.1-s0", "failed", None, 1.0, "exception"))
    progress(Event("kto-b0.1-s0", "diverged", None, 1.0, "nan_loss"))
    screen = Console(file=io.StringIO(), width=200, color_system=None)
    screen.print(progress._bar.get_renderable())
    progress.close()
    line = screen.file.getvalue()
    assert "3/4" in line and "failed 2" in line and "0:00:0" in line and "ETA" in line
    assert "running dpo-b0.1-s0 step 5/40" in line
    assert "[2/4] ipo-b0.1-s0  failed (exception)" in capsys.readouterr().err
