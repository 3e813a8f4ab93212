"""A sweep grown while a worker runs: the worker takes the grown plan's trials, none is claimed twice.

A `posweep worker` on a PostgreSQL study joins with the plan of its time; the plan then grows by grid
values and a method it has never seen. It must pick up the new trials (re-reading the folder's recipe)
and share them with a second worker started after the growth, each trial trained once.
"""

from __future__ import annotations

import json

import pytest
from test_distributed import (
    EVAL,
    PG_VARIABLE,
    TRAIN,
    assert_ran_once,
    history,
    inputs,
    pg_url,
    postgres,
    procs,
    study_of,
    wait_for,
)
from test_engine import write_recipe

from sweep.spec.validate import load_recipe

__all__ = ["inputs", "pg_url", "postgres", "procs"]  # fixtures of the engine and distributed tests


def _recipe(inputs, betas: list[float], ln_dpo: bool, storage: str | None = f"env:{PG_VARIABLE}"):
    methods = {"dpo": {"beta": betas, "learning_rate": [1e-3]}}
    if ln_dpo:
        methods["ln-dpo"] = {"beta": [1.0], "learning_rate": [1e-3]}
    execution = {"devices": "cpu", "storage": storage}
    train = {**TRAIN, "max_steps": 4}
    return write_recipe(inputs, "pg-grow", methods, train=train, eval=EVAL, execution=execution)


@pytest.mark.slow
def test_a_worker_started_before_the_plan_grew_runs_its_new_trials(inputs, tmp_path, pg_url, procs):
    from optuna.trial import TrialState

    from sweep.engine.folder import open_sweep
    from sweep.engine.queue import ATTR, reconcile

    results, env = tmp_path / "results", {PG_VARIABLE: pg_url}
    reconcile(open_sweep(load_recipe(_recipe(inputs, [0.1, 0.2, 0.3], False)), results, pg_url))
    sweep = results / "pg-grow"
    early = procs.start("worker", sweep, "--storage", f"env:{PG_VARIABLE}", "-q", env=env)
    study = study_of(sweep, pg_url)

    def early_worker_holds(trial_ids=None):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
            attrs = trial.user_attrs.get(ATTR, {})
            if attrs.get("pid") == early.pid and (trial_ids is None or attrs.get("trial_id") in trial_ids):
                return attrs["trial_id"]
        return None

    wait_for(early_worker_holds, 180, "the early worker to start a trial", [early])
    grown = _recipe(inputs, [0.1, 0.2, 0.3, 0.4], True)
    assert reconcile(open_sweep(load_recipe(grown), results, pg_url))["queued"] >= 2
    new = {"dpo-b0.4-lr0.001-s0", "ln-dpo-b1-lr0.001-s0"}
    taken = wait_for(lambda: early_worker_holds(new), 180, "the early worker to take a new trial", [early])
    late = procs.start("worker", sweep, "--storage", f"env:{PG_VARIABLE}", "-q", env=env)
    for process in (early, late):
        procs.finish(process, timeout=240)
    assert_ran_once(sweep, pg_url, grown, procs.outputs())
    runs = history(sweep, pg_url)
    assert runs[taken][0][1]["pid"] == early.pid and len(runs) == 5


@pytest.mark.slow
def test_a_run_started_before_the_plan_grew_finishes_the_grown_plan_and_records_it(inputs, tmp_path, procs):
    """`posweep run` of the old recipe (journal storage) while the plan grows: it trains the new trials too,
    and the sweep.json it writes at its end keeps the grown plan (not its own, older one)."""
    from sweep.engine.folder import open_sweep
    from sweep.engine.queue import reconcile
    from sweep.spec.plan import plan_recipe

    old, grown = tmp_path / "old.yaml", tmp_path / "grown.yaml"
    old.write_text(_recipe(inputs, [0.1, 0.2, 0.3], False, storage=None).read_text())
    grown.write_text(_recipe(inputs, [0.1, 0.2, 0.3, 0.4], True, storage=None).read_text())
    results = tmp_path / "results"
    sweep = results / "pg-grow"
    runner = procs.start("run", old, "--results", results, "-q")
    wait_for(lambda: list(sweep.glob("trials/*/params.json")), 180, "the run to start a trial", [runner])
    reconcile(open_sweep(load_recipe(grown), results))
    procs.finish(runner, timeout=240)
    assert_ran_once(sweep, None, grown, procs.outputs())
    meta = json.loads((sweep / "sweep.json").read_text())
    assert meta["plan_hash"] == plan_recipe(load_recipe(grown)).hash and len(meta["revisions"]) == 2
    assert meta["planned_total"] == 5 and "wall_s" in meta
