"""The growth rules (spec/growth.py): which recipe changes grow a sweep in place, and what each adds."""

from __future__ import annotations

import pytest

from sweep.spec.growth import growth, meaning_changes
from sweep.spec.plan import plan_recipe
from sweep.spec.validate import load_recipe

SAMPLED = {"beta": {"low": 0.05, "high": 0.5, "log": True}, "learning_rate": [1e-3]}


@pytest.fixture
def changes(base_recipe, recipe_file):
    """(sections whose change alters a trial's meaning, what grew) from base_recipe to it with `new`."""

    def compare(old: dict, new: dict):
        before = load_recipe(recipe_file({**base_recipe, **old}, "old.yaml"))
        after = load_recipe(recipe_file({**base_recipe, **old, **new}, "new.yaml"))
        sections = plan_recipe(before).section_hashes, plan_recipe(after).section_hashes
        changed = meaning_changes(before, sections[0], after, sections[1])
        return changed, (growth(before, after) if not changed else None)

    return compare


def test_values_methods_and_seeds_grow_and_shrink(changes):
    old = {"methods": {"dpo": {"beta": [0.1, 0.2], "learning_rate": [5e-7]}}, "search": {"seeds": [0, 1]}}
    new = {
        "methods": {"dpo": {"beta": [0.1, 0.3, 0.4], "learning_rate": [5e-7]}, "ipo": None},
        "search": {"seeds": [1, 2]},
    }
    assert changes(old, new) == (
        [],
        {
            "methods": {"added": ["ipo"]},
            "values": {"dpo.beta": {"added": [0.3, 0.4], "removed": [0.2]}},
            "seeds": {"added": [2], "removed": [0]},
        },
    )
    assert changes(old, {"execution": {"workers": 2, "max_retries": 3}}) == ([], {})


@pytest.mark.parametrize(
    ("new", "named"),
    [
        ({"train": {"max_length": 512}}, ["train"]),
        ({"eval": {"max_new_tokens": 64}}, ["eval"]),
        ({"judge": {"reward_model": "builtin:toy-rm", "max_length": 256}}, ["judge"]),
        ({"model": {"path": "builtin:toy", "dtype": "float32"}}, ["model"]),
        (
            {
                "data": {
                    "train": {"path": "builtin:toy/train", "max_samples": 8},
                    "eval": {"path": "builtin:toy/eval"},
                }
            },
            ["data"],
        ),
        ({"search": {"pruner": "median"}}, ["search"]),
        ({"methods": {"dpo": {"beta": [0.1]}}}, ["methods.dpo"]),
        (
            {"methods": {"dpo": {"beta": [0.1], "learning_rate": [5e-7]}}, "train": {"max_steps": 2}},
            ["train"],
        ),
    ],
)
def test_a_change_of_what_a_trial_means_is_named(changes, new, named):
    """A kept method that drops (or adds) an axis changes what its other trials mean: the default fills it."""
    assert changes({}, new) == (named, None)


def test_a_sampled_search_grows_by_n_trials_and_methods_but_keeps_each_space(changes):
    old = {"methods": {"dpo": SAMPLED}, "search": {"strategy": "tpe", "n_trials": 5}}
    grown = {"methods": {"dpo": SAMPLED, "simpo": None}, "search": {"strategy": "tpe", "n_trials": 8}}
    assert changes(old, grown) == (
        [],
        {"methods": {"added": ["simpo"]}, "n_trials": {"from": 5, "to": 8}},
    )
    wider = {"methods": {"dpo": {**SAMPLED, "beta": {"low": 0.01, "high": 0.5, "log": True}}}}
    assert changes(old, wider) == (["methods.dpo"], None)
    assert changes(old, {"search": {"strategy": "random", "n_trials": 5}}) == (["search"], None)


def test_slots_of_a_sampled_plan_keep_their_keys_when_n_trials_grows(base_recipe, recipe_file):
    def slots(n_trials: int) -> list[str]:
        search = {"strategy": "random", "n_trials": n_trials, "seeds": [0, 3]}
        recipe = {**base_recipe, "methods": {"dpo": SAMPLED}, "search": search}
        return plan_recipe(load_recipe(recipe_file(recipe))).slots

    assert slots(2) == ["dpo/s0/0", "dpo/s0/1", "dpo/s3/0", "dpo/s3/1"]
    assert set(slots(2)) < set(slots(3)) and len(slots(3)) == 6
