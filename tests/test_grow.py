"""A sweep grown in place: only new trials train; a meaning change is refused; removed values are left out."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from test_engine import claims, inputs, run, trial_files, write_recipe  # noqa: F401  (the module-scoped tiny inputs)
from typer.testing import CliRunner

from sweep.cli import app

pytestmark = pytest.mark.slow
TRAIN = {"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 48}
OLD = ["dpo-b0.1-lr0.001-s0", "dpo-b0.1-lr0.002-s0"]
NEW = ["dpo-b0.1-lr0.003-s0", "ln-dpo-b1-lr0.001-s0"]


def _grid(folder: Path, lrs: list[float], ln_dpo: bool, **train) -> Path:
    methods = {"dpo": {"beta": [0.1], "learning_rate": lrs}}
    if ln_dpo:
        methods["ln-dpo"] = {"beta": [1.0], "learning_rate": [1e-3]}
    return write_recipe(folder, "grow", methods, train={**TRAIN, **train})


def _stamps(sweep: Path, trial_ids) -> dict[str, int]:
    return {t: (sweep / "trials" / t / "metrics.json").stat().st_mtime_ns for t in trial_ids}


def _best_of(sweep: Path, trial_ids) -> str:
    """The best trial by the selection part's objective, ties to the smaller id, computed here."""
    metrics = trial_files(sweep)
    return max(sorted(trial_ids), key=lambda t: metrics[t]["selection"]["win_rate_vs_sft"])


def test_a_grid_grows_by_a_value_and_a_method_then_shrinks(inputs, tmp_path):  # noqa: F811
    sweep = tmp_path / "grow"
    assert run("run", _grid(inputs, [1e-3, 2e-3], False), "--results", tmp_path, "-q").exit_code == 0
    assert sorted(trial_files(sweep)) == OLD
    before, attempts = _stamps(sweep, OLD), claims(sweep)
    meta = json.loads((sweep / "sweep.json").read_text())
    del meta["revisions"]  # as a posweep from before revisions wrote it
    (sweep / "sweep.json").write_text(json.dumps(meta))

    grown = run("run", _grid(inputs, [1e-3, 2e-3, 3e-3], True), "--results", tmp_path, "-q")
    assert grown.exit_code == 0, grown.output
    assert "(4 trials: 2 done, 2 to run)" in grown.output  # 2 old + 1 lr value + 1 method
    metrics = trial_files(sweep)
    assert sorted(metrics) == sorted(OLD + NEW) and all(m["state"] == "complete" for m in metrics.values())
    assert _stamps(sweep, OLD) == before
    assert claims(sweep) == {**attempts, **dict.fromkeys(NEW, 1)}
    meta = json.loads((sweep / "sweep.json").read_text())
    first, second = meta["revisions"]
    assert (first["revision"], first["planned_total"], sorted(first["slots"])) == (1, 2, OLD)
    assert (second["revision"], second["planned_total"], sorted(second["slots"])) == (2, 4, sorted(OLD + NEW))
    assert second["methods"] == {"added": ["ln-dpo"]}
    assert second["values"] == {"dpo.learning_rate": {"added": [0.003]}}
    assert "seeds" not in second and "n_trials" not in second and first["when"] <= second["when"]

    shrunk = run("run", _grid(inputs, [1e-3, 3e-3], False), "--results", tmp_path, "-q")
    assert shrunk.exit_code == 0 and "(2 trials: 2 done, 0 to run)" in shrunk.output
    assert len(trial_files(sweep)) == 4, "removed values' trials stay in the folder"
    third = json.loads((sweep / "sweep.json").read_text())["revisions"][2]
    assert third["methods"] == {"removed": ["ln-dpo"]}
    assert third["values"] == {"dpo.learning_rate": {"removed": [0.002]}}
    planned = ["dpo-b0.1-lr0.001-s0", "dpo-b0.1-lr0.003-s0"]

    status = run("status", sweep)
    assert status.exit_code == 0
    assert f"2 complete of 2 planned; best {_best_of(sweep, planned)} " in status.output
    assert "2 trial(s) outside the current plan" in status.output
    for line in ("revision 1 (", "): 2 planned, 2 complete"), ("revision 2 (", "): 4 planned, 4 complete"):
        assert any(row.startswith(line[0]) and line[1] in row for row in status.output.splitlines()), line
    assert any(
        r.startswith("revision 3 (") and "): 2 planned, 2 complete;" in r for r in status.output.splitlines()
    )
    assert not any(t in status.output for t in ("dpo-b0.1-lr0.002-s0", "ln-dpo-b1-lr0.001-s0"))

    report = run("report", sweep, "--out", tmp_path / "report")
    assert "2 trial(s) outside the current plan left out" in report.output
    assert sorted(pd.read_csv(tmp_path / "report" / "trials.csv")["trial_id"]) == planned
    everything = run("report", sweep, "--out", tmp_path / "all", "--all-trials")
    assert "outside the current plan" not in everything.output
    assert sorted(pd.read_csv(tmp_path / "all" / "trials.csv")["trial_id"]) == sorted(OLD + NEW)

    exported = run("export", sweep, "--best", "--out", tmp_path / "model")
    assert f"exported {_best_of(sweep, planned)} (rank 1 of 2, retrained)" in exported.output


def test_a_change_of_what_a_trial_means_is_refused_naming_the_section(inputs, tmp_path):  # noqa: F811
    sweep = tmp_path / "grow"
    assert run("run", _grid(inputs, [1e-3], False), "--results", tmp_path, "-q").exit_code == 0
    files = {p: p.read_bytes() for p in (sweep / "sweep.json", sweep / "recipe.yaml")}
    changed = _grid(inputs, [1e-3, 2e-3], False, max_length=40)
    refused = CliRunner().invoke(app, ["run", str(changed), "--results", str(tmp_path), "-q"])
    assert refused.exit_code == 2
    line = refused.output.strip().splitlines()[-1]
    assert "holds a sweep of a different plan (changed: train)" in line and "--new" in line
    assert {p: p.read_bytes() for p in files} == files and sorted(trial_files(sweep)) == OLD[:1]
    assert run("run", changed, "--results", tmp_path, "-q", "--new").exit_code == 0
    assert sorted(trial_files(tmp_path / "grow-2")) == OLD


@pytest.mark.parametrize("strategy", ["tpe", "random"])
def test_n_trials_grows_by_one_trial_continuing_the_study(inputs, tmp_path, strategy):  # noqa: F811
    import optuna

    from sweep.engine.storage import open_storage

    def recipe(n_trials: int) -> Path:
        space = {"dpo": {"beta": {"low": 0.05, "high": 0.5, "log": True}, "learning_rate": [1e-3]}}
        search = {"strategy": strategy, "n_trials": n_trials}
        return write_recipe(inputs, strategy, space, search=search, train=TRAIN)

    sweep = tmp_path / strategy
    assert run("run", recipe(2), "--results", tmp_path, "-q").exit_code == 0
    old = sorted(trial_files(sweep))
    before, attempts = _stamps(sweep, old), claims(sweep)
    grown = run("run", recipe(3), "--results", tmp_path, "-q")
    assert "(3 trials: 2 done, 1 to run)" in grown.output, grown.output
    metrics = trial_files(sweep)
    assert len(metrics) == 3, grown.output
    assert set(old) < set(metrics) and _stamps(sweep, old) == before
    new = (set(metrics) - set(old)).pop()
    assert claims(sweep) == {**attempts, new: 1}
    study = optuna.load_study(study_name=strategy, storage=open_storage(None, sweep))
    slots = sorted(t.user_attrs["posweep"]["slot"] for t in study.get_trials() if t.state.name == "COMPLETE")
    assert slots == ["dpo/s0/0", "dpo/s0/1", "dpo/s0/2"], "one study: the new slot continues its history"
    meta = json.loads((sweep / "sweep.json").read_text())
    assert meta["revisions"][1]["n_trials"] == {"from": 2, "to": 3}
    assert sorted(meta["planned_trials"]) == sorted(metrics)
    params = json.loads((sweep / "trials" / new / "params.json").read_text())
    assert params["slot"] == "dpo/s0/2"


def test_a_point_drawn_twice_is_a_trial_per_slot_so_the_plan_completes(inputs, tmp_path):  # noqa: F811
    """A random search over a one-point space draws the same point for every slot: each slot still gets a
    trial of its own (one folder had stood for both, and status said 1 complete of 2 planned)."""
    space = {"dpo": {"beta": [0.1], "learning_rate": [1e-3]}}
    recipe = write_recipe(inputs, "drawn", space, search={"strategy": "random", "n_trials": 2}, train=TRAIN)
    assert run("run", recipe, "--results", tmp_path, "-q").exit_code == 0
    sweep = tmp_path / "drawn"
    metrics = trial_files(sweep)
    first = min(metrics)
    assert sorted(metrics) == [first, f"{first}-slot1"]
    slots = {json.loads((sweep / "trials" / t / "params.json").read_text())["slot"] for t in metrics}
    assert slots == {"dpo/s0/0", "dpo/s0/1"}
    assert metrics[first]["objective"] == metrics[f"{first}-slot1"]["objective"]  # same point, same seed
    status = run("status", sweep)
    assert status.exit_code == 0 and "2 complete of 2 planned" in status.output, status.output
