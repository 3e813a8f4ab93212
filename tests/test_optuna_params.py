"""Every trial's method, variant and hyperparameters are real Optuna params, for grid, random and TPE."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from test_engine import inputs, run, write_recipe  # noqa: F401  (the module-scoped tiny inputs)

from sweep.engine.folder import open_sweep
from sweep.engine.queue import claim, close, reconcile, spec_for
from sweep.spec.methods import REGISTRY
from sweep.spec.validate import load_recipe


def study_of(folder):
    """The sweep's study, loaded the way a user would: plain optuna over the journal file."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    return optuna.load_study(study_name=folder.name, storage=storage)


def drain(sweep, objective) -> list:
    """Claim every queued trial, record it and close it complete with `objective(spec)`; return the specs."""
    specs = []
    reconcile(sweep)
    while (trial := claim(sweep)) is not None:
        spec, attrs = spec_for(sweep, trial)
        close(sweep, trial, attrs, "complete", None, objective(spec))
        specs.append(spec)
    return specs


def test_grid_points_are_recorded_with_their_distributions_and_importance_finds_the_planted_one(
    inputs,  # noqa: F811
    tmp_path,
):
    methods = {
        "dpo": {"beta": [0.02, 0.05, 0.1, 0.2, 0.5], "learning_rate": [1e-4, 1e-3]},
        "tr-dpo": {"beta": [0.1], "tau": [2, 8]},
    }
    data = {
        "train": {"a": {"path": str(inputs / "train.jsonl")}, "b": {"path": str(inputs / "train.jsonl")}},
        "eval": {"path": str(inputs / "eval.jsonl"), "columns": {"prompt": "q", "reference": "a"}},
    }
    recipe = load_recipe(write_recipe(inputs, "gridparams", methods, data=data))
    sweep = open_sweep(recipe, tmp_path)
    # planted: the objective depends on beta only (peak at 0.1), never on the learning rate
    specs = drain(sweep, lambda spec: -abs(math.log(spec.params["beta"] / 0.1)))
    assert len(specs) == len(sweep.plan.trials) == 2 * (10 + 2)
    by_id = {spec.trial_id: spec for spec in specs}
    trials = study_of(sweep.dir).trials
    assert len(trials) == len(specs)
    for trial in trials:
        spec = by_id[trial.user_attrs["posweep"]["trial_id"]]
        assert trial.params["method"] == spec.method and trial.params["variant"] == spec.variant
        assert trial.distributions["method"] == CategoricalDistribution(list(REGISTRY))
        assert trial.distributions["variant"] == CategoricalDistribution(["a", "b"])
        for name, value in spec.params.items():
            assert trial.params[f"{spec.method}.{name}"] == value, (spec.trial_id, name)
        assert not any(key.startswith("tr-dpo.") for key in trial.params) or spec.method == "tr-dpo"
        if spec.method == "dpo":
            assert trial.distributions["dpo.beta"] == FloatDistribution(0.02, 0.5, log=True)
            assert trial.distributions["dpo.learning_rate"] == FloatDistribution(1e-4, 1e-3, log=True)
        else:
            assert trial.distributions["tr-dpo.tau"] == IntDistribution(2, 8, log=True)
            assert isinstance(trial.params["tr-dpo.tau"], int)
    dpo = optuna.create_study(direction="maximize")
    dpo.add_trials([t for t in trials if t.params["method"] == "dpo"])
    importance = optuna.importance.get_param_importances(dpo, params=["dpo.beta", "dpo.learning_rate"])
    assert importance["dpo.beta"] > 0.9 > importance["dpo.learning_rate"]


def test_sampled_slots_record_the_variant_and_a_retry_keeps_its_sample(inputs, tmp_path):  # noqa: F811
    methods = {"dpo": {"beta": {"low": 0.05, "high": 0.5, "log": True}, "learning_rate": [1e-4, 1e-3]}}
    data = {
        "train": {"a": {"path": str(inputs / "train.jsonl")}, "b": {"path": str(inputs / "train.jsonl")}},
        "eval": {"path": str(inputs / "eval.jsonl"), "columns": {"prompt": "q", "reference": "a"}},
    }
    search = {"strategy": "tpe", "n_trials": 2, "seeds": [0]}
    sweep = open_sweep(
        load_recipe(write_recipe(inputs, "tpeparams", methods, data=data, search=search)), tmp_path
    )
    reconcile(sweep)
    trial = claim(sweep)
    spec, attrs = spec_for(sweep, trial)
    close(sweep, trial, attrs, "failed", "error")
    ids = [s.trial_id for s in drain(sweep, lambda s: s.params["beta"])]
    assert len(ids) == len(set(ids)) == 4 and spec.trial_id in ids, "the retry resampled its hyperparameters"
    trials = study_of(sweep.dir).trials
    assert len(trials) == 5 and all(t.params for t in trials)
    for trial in trials:
        attrs = trial.user_attrs["posweep"]
        assert trial.params["variant"] == attrs["variant"] and trial.params["method"] == "dpo"
        assert trial.params["dpo.beta"] == attrs["params"]["beta"]
        assert trial.distributions["dpo.beta"] == FloatDistribution(0.05, 0.5, log=True)
        assert trial.distributions["dpo.learning_rate"] == CategoricalDistribution([1e-4, 1e-3])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["grid", "tpe"])
def test_a_finished_sweep_loads_in_optuna_with_params_on_every_trial(inputs, tmp_path, strategy):  # noqa: F811
    space = {"low": 0.05, "high": 0.5, "log": True} if strategy == "tpe" else [0.1, 0.3]
    methods = {
        "dpo": {"beta": space, "learning_rate": [1e-3]},
        "simpo": {"beta": [2.0], "learning_rate": [1e-3]},
    }
    recipe = write_recipe(
        inputs,
        f"optuna-{strategy}",
        methods,
        search={"strategy": strategy, "n_trials": 2} if strategy == "tpe" else {"strategy": "grid"},
        train={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 48},
    )
    assert run("run", recipe, "--results", tmp_path, "--quiet").exit_code == 0
    trials = study_of(tmp_path / f"optuna-{strategy}").trials
    assert len(trials) == (4 if strategy == "tpe" else 3)
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.params for t in trials)
    for trial in trials:
        method = trial.params["method"]
        assert set(trial.params) == {"method", f"{method}.beta", f"{method}.learning_rate"}
        assert trial.params[f"{method}.beta"] == trial.user_attrs["posweep"]["params"]["beta"]
    dpo = optuna.create_study(direction="maximize")
    dpo.add_trials([t for t in trials if t.params["method"] == "dpo"])
    importance = optuna.importance.get_param_importances(dpo)
    assert "dpo.beta" in importance and all(v >= 0 for v in importance.values())


def test_dashboard_serves_the_study_and_its_trial_params_on_loopback(inputs, tmp_path):  # noqa: F811
    pytest.importorskip("optuna_dashboard", reason="the dashboard extra is not installed")
    import json
    import threading
    import urllib.request

    from sweep.tools.dashboard import dashboard_server

    methods = {"dpo": {"beta": [0.1, 0.5], "learning_rate": [1e-3]}}
    sweep = open_sweep(load_recipe(write_recipe(inputs, "dash", methods)), tmp_path)
    specs = drain(sweep, lambda spec: spec.params["beta"])
    server = dashboard_server(sweep.dir, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"

        def get(path: str) -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
                return json.loads(response.read())

        (study,) = [s for s in get("/api/studies")["study_summaries"] if s["study_name"] == "dash"]
        trials = get(f"/api/studies/{study['study_id']}")["trials"]
        shown = sorted(
            {p["name"]: p["param_external_value"] for p in t["params"]}["dpo.beta"] for t in trials
        )
        assert shown == sorted(str(s.params["beta"]) for s in specs) == ["0.1", "0.5"]
        assert all(
            {p["name"] for p in t["params"]} == {"method", "dpo.beta", "dpo.learning_rate"} for t in trials
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
