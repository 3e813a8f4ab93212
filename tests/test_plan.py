"""The planner: grid sizes, stable and unique trial ids, sampled-search totals, and the plan hash."""

import json
import os
import re
import subprocess
import sys

import pytest

from sweep.spec.plan import format_value, plan_recipe, sampled_trial_id, trial_id
from sweep.spec.validate import load_recipe


@pytest.fixture
def plan_of(base_recipe, recipe_file):
    """Plan `base_recipe` updated with top-level sections."""

    def plan(**sections):
        return plan_recipe(load_recipe(recipe_file({**base_recipe, **sections})))

    return plan


@pytest.mark.parametrize(
    ("methods", "seeds", "total"),
    [
        ({"dpo": {"beta": [0.01, 0.1, 0.5], "learning_rate": [1e-6, 5e-7]}}, [0], 6),
        ({"dpo": {"beta": [0.01, 0.1, 0.5], "learning_rate": [1e-6, 5e-7]}}, [0, 1], 12),
        ({"dpo": None}, [0], 4 * 3),
        (
            {"simpo": {"beta": [2.0, 2.5], "gamma_beta_ratio": [0.3, 0.5, 1.0], "learning_rate": [5e-7]}},
            [0],
            6,
        ),
        ({"simpo": {"beta": [2.0], "gamma": [0.5, 1.0]}}, [0, 1, 2], 6),
        ({"tr-dpo": {"beta": [0.1, 0.5], "alpha": [0.3, 0.6], "tau": [8, 16, 32]}}, [0], 2 * 2 * 3),
        ({"tr-dpo": {"beta": [0.1, 0.5], "alpha": [0.3, 0.6]}}, [0], 4),
        ({"tr-kto": {"tau": [8]}}, [0, 1], 2),
        ({"tr-ipo": None}, [0], 2 * 3 * 2 * 4),
        ({"dpo": {"beta": [0.1]}, "ln-dpo": {"beta": [1.0, 2.0]}, "kto": {"beta": [0.1]}}, [0], 4),
    ],
)
def test_grid_counts(plan_of, methods, seeds, total):
    plan = plan_of(methods=methods, search={"seeds": seeds})
    assert plan.total == len(plan.trials) == total
    assert len({t.trial_id for t in plan.trials}) == total


def test_tr_alpha_and_tau_act_together(plan_of):
    plan = plan_of(methods={"tr-dpo": {"beta": [0.1], "alpha": [0.3], "tau": [8, 16]}})
    assert [dict(t.params) for t in plan.trials] == [
        {"beta": 0.1, "alpha": 0.3, "tau": 8.0},
        {"beta": 0.1, "alpha": 0.3, "tau": 16.0},
    ]
    assert [t.trial_id for t in plan.trials] == ["tr-dpo-b0.1-a0.3-t8-s0", "tr-dpo-b0.1-a0.3-t16-s0"]


def test_golden_ids(plan_of):
    plan = plan_of(
        methods={
            "dpo": {"beta": [0.1], "learning_rate": [5e-7]},
            "simpo": {"beta": [2.0], "gamma_beta_ratio": [0.5], "learning_rate": [1e-4]},
            "cdpo": {"label_smoothing": [0.2]},
        }
    )
    assert [t.trial_id for t in plan.trials] == [
        "dpo-b0.1-lr5e-07-s0",
        "simpo-b2-lr0.0001-gbr0.5-s0",
        "cdpo-ls0.2-s0",
    ]


def test_two_seeds_give_two_trials_with_the_same_params(plan_of):
    plan = plan_of(search={"seeds": [0, 7]})
    first, second = plan.trials
    assert (first.trial_id, second.trial_id) == ("dpo-b0.1-lr5e-07-s0", "dpo-b0.1-lr5e-07-s7")
    assert first.params == second.params
    assert (first.seed, second.seed) == (0, 7)
    assert first.to_json() == {
        "trial_id": "dpo-b0.1-lr5e-07-s0",
        "method": "dpo",
        "params": {"beta": 0.1, "learning_rate": 5e-7},
        "seed": 0,
        "variant": None,
    }


def test_ids_stable_across_plans_and_processes(base_recipe, recipe_file):
    base_recipe["methods"] = {"dpo": None, "tr-dpo": None, "simpo": None}
    base_recipe["search"] = {"seeds": [0, 1]}
    path = recipe_file(base_recipe)
    ids = [t.trial_id for t in plan_recipe(load_recipe(path)).trials]
    assert ids == [t.trial_id for t in plan_recipe(load_recipe(path)).trials]
    script = (
        "import json, sys; from sweep.spec.plan import plan_recipe; "
        "from sweep.spec.validate import load_recipe; "
        "plan = plan_recipe(load_recipe(sys.argv[1])); "
        "print(json.dumps([plan.hash, [t.trial_id for t in plan.trials]]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert json.loads(out.stdout) == [plan_recipe(load_recipe(path)).hash, ids]
    assert len(set(ids)) == len(ids)


def test_ids_unique_when_values_round_alike(plan_of):
    plan = plan_of(methods={"dpo": {"beta": [0.12345, 0.12346]}})
    ids = [t.trial_id for t in plan.trials]
    assert len(set(ids)) == 2
    assert all(re.fullmatch(r"dpo-b0\.1235-s0-[0-9a-f]{6}", i) for i in ids)


def test_sampled_trial_id_depends_on_exact_values():
    a = sampled_trial_id("dpo", {"beta": 0.123451}, 0)
    b = sampled_trial_id("dpo", {"beta": 0.123452}, 0)
    assert a != b
    assert a.startswith(trial_id("dpo", {"beta": 0.123451}, 0) + "-")
    assert a == sampled_trial_id("dpo", {"beta": 0.123451}, 0)


def test_variant_prefix():
    assert trial_id("kto", {"beta": 0.5}, 3, variant="filtered") == "filtered-kto-b0.5-s3"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.1, "0.1"), (5e-7, "5e-07"), (2.0, "2"), (128, "128"), (1e-4, "0.0001"), (0.33333, "0.3333")],
)
def test_format_value(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_sampled_total(plan_of, strategy):
    plan = plan_of(
        methods={
            "dpo": {"beta": {"low": 0.01, "high": 1, "log": True}},
            "simpo": {"beta": {"low": 1, "high": 10}, "gamma_beta_ratio": [0.3, 0.5]},
            "tr-dpo": None,
        },
        search={"strategy": strategy, "n_trials": 5, "seeds": [0, 1]},
    )
    assert plan.strategy == strategy
    assert plan.total == 5 * 3 * 2
    assert plan.trials == ()
    assert plan.spaces["dpo"]["beta"].log is True


def test_plan_hash_tracks_what_trials_mean(base_recipe, recipe_file):
    def hash_of(**sections):
        return plan_recipe(load_recipe(recipe_file({**base_recipe, **sections}))).hash

    base = hash_of()
    assert base == hash_of()
    assert (
        hash_of(execution={"workers": 4, "results_dir": "elsewhere", "slurm": {"partition": "gpu"}}) == base
    )
    assert hash_of(description="same sweep, new words") == base
    assert hash_of(methods={"dpo": {"beta": [0.1, 0.2], "learning_rate": [5e-7]}}) != base
    assert hash_of(train={"max_steps": 10}) != base
    assert hash_of(eval={"max_new_tokens": 16}) != base
    assert hash_of(search={"seeds": [0, 1]}) != base
    assert re.fullmatch(r"[0-9a-f]{16}", base)
