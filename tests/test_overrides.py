"""`--set PATH=VALUE` overrides: YAML-typed values, dotted paths with list indices, one-line errors naming
the `--set`, and the plan they give (counted by hand)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweep.cli import app
from sweep.spec import overrides
from sweep.spec.plan import plan_recipe
from sweep.spec.validate import RecipeError, load_recipe

TINY = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    return result


def test_values_are_yaml_typed_and_paths_take_list_indices():
    raw = {"train": {"max_steps": 40}, "judge": [{"batch_size": 64}, {"batch_size": 8}], "search": {}}
    sets = ["train.max_steps=2", "judge.1.batch_size=4", "search.seeds=[0, 1]", "train.bf16=false"]
    result, applied = overrides.apply(raw, sets)
    assert result["train"] == {"max_steps": 2, "bf16": False}
    assert result["judge"] == [{"batch_size": 64}, {"batch_size": 4}]
    assert result["search"]["seeds"] == [0, 1]
    assert raw["train"]["max_steps"] == 40 and raw["judge"][1]["batch_size"] == 8  # the input is untouched
    assert [arg for _, arg in applied] == sets


def test_a_later_set_wins_and_a_value_may_hold_an_equals_sign():
    result, _ = overrides.apply({}, ["name=a", "name=b=c"])
    assert result["name"] == "b=c"


def test_loaded_recipe_carries_the_overrides():
    recipe = load_recipe(TINY, ["train.max_steps=2", "methods.dpo.beta=[0.1]", "judge.0.batch_size=4"])
    assert recipe.train.max_steps == 2
    assert recipe.space("dpo")["beta"] == [0.1]
    assert recipe.judges[0].batch_size == 4 and recipe.judges[1].name == "gold"


def test_plan_counts_with_overrides_by_hand():
    # tiny.yaml: dpo 3x3, ln-dpo 3x3, simpo 2x2x3 = 30; dpo beta cut to one value: 3 + 9 + 12 = 24
    assert plan_recipe(load_recipe(TINY)).total == 30
    assert plan_recipe(load_recipe(TINY, ["methods.dpo.beta=[0.1]"])).total == 24
    # two seeds double it; dropping simpo leaves 3 + 9 per seed
    sets = [
        "methods.dpo.beta=[0.1]",
        "search.seeds=[0, 1]",
        "methods={dpo: {beta: [0.1], learning_rate: [1.0e-4, 3.0e-4, 1.0e-3]}, "
        "ln-dpo: {beta: [0.3, 1.0, 3.0], learning_rate: [1.0e-4, 3.0e-4, 1.0e-3]}}",
    ]
    assert plan_recipe(load_recipe(TINY, sets)).total == (3 + 9) * 2
    result = invoke("plan", TINY, "--set", "methods.dpo.beta=[0.1]", "--set", "search.seeds=[0, 1]")
    assert result.exit_code == 0
    assert "total: 48 trials" in result.output  # (3 + 9 + 12) x 2 seeds


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("trian.max_steps=2", "trian (from --set trian.max_steps=2): unknown key"),
        ("train.max_step=2", "train.max_step (from --set train.max_step=2): unknown key"),
        ("train.max_steps=-1", "train.max_steps (from --set train.max_steps=-1): "),
        ("train.max_steps=two", "train.max_steps (from --set train.max_steps=two): "),
        ("judge.5.batch_size=4", "--set judge.5.batch_size=4: 5 is not an index of a list of 2"),
        ("name.x=1", "--set name.x=1: 'x' is inside a value, not a section"),
        ("train.max_steps", "--set train.max_steps: expected PATH=VALUE"),
        ("train.max_steps=[1", "--set train.max_steps=[1: VALUE is not YAML"),
    ],
)
def test_a_bad_set_is_one_line_exit_2_naming_it(arg, message, tmp_path):
    for command in (["validate"], ["plan"], ["run", "--results", tmp_path]):
        result = invoke(
            *command[:1], TINY, *command[1:], "--set", "train.per_device_train_batch_size=4", "--set", arg
        )
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{TINY}: ") and message in lines[0], lines
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_problem_outside_every_set_is_not_blamed_on_one():
    with pytest.raises(RecipeError) as error:
        load_recipe(TINY, ["train.max_steps=2", "eval.max_new_tokens=0"])
    assert error.value.problems == [
        ("eval.max_new_tokens (from --set eval.max_new_tokens=0)", "Input should be greater than 0")
    ]
    found = [("train.max_length", "bad"), ("train", "worse"), ("trainer", "unknown")]
    problems = overrides.blame(found, {"train.max_steps": "a"})
    assert problems == [
        ("train.max_length", "bad"),
        ("train (from --set a)", "worse"),
        ("trainer", "unknown"),
    ]
