"""The command line through its real entry point: shipped recipes, plan output, methods, light start-up."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweep.cli import app
from sweep.spec.methods import REGISTRY
from sweep.spec.plan import plan_recipe
from sweep.spec.validate import load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
REQUIRED_METHODS = (
    "dpo",
    "ipo",
    "ln-dpo",
    "simpo",
    "cpo",
    "orpo",
    "kto",
    "tr-dpo",
    "tr-ipo",
    "tr-kto",
    "cdpo",
    "hinge",
)
HEAVY = ("torch", "trl", "transformers")


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    return result


def test_recipes_folder_is_not_empty():
    assert len(RECIPES) >= 3


TOTALS = {  # counted by hand from each recipe's grid (methods x values x seeds x data variants)
    "hitchhiker-ood.yaml": 5 * 3
    + 5 * 3
    + 4 * 3 * 3,  # dpo beta x lr, ln-dpo beta x lr, simpo beta x g/b x lr
    "smoke.yaml": 13,  # one point of each registry method
    "tiny.yaml": 3 * 3 + 3 * 3 + 2 * 2 * 3,  # dpo, ln-dpo: beta x lr; simpo: beta x gamma/beta x lr
    "tr-dpo.yaml": 1 + 2 * 2 + 2 + 1,  # dpo; tr-dpo alpha x tau; tr-ipo tau; tr-kto
    "variants.yaml": (2 * 2 + 2 * 2) * 2,  # dpo and ln-dpo beta x lr, on two data variants
}


def test_every_shipped_recipe_has_a_hand_counted_total():
    assert sorted(path.name for path in RECIPES) == sorted(TOTALS)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_shipped_recipe_validates_and_plans(recipe):
    planned = plan_recipe(load_recipe(recipe))
    assert planned.total == len(planned.trials) == TOTALS[recipe.name]
    validated = invoke("validate", recipe)
    assert validated.exit_code == 0, validated.output
    assert validated.stdout == f"{recipe}: ok ({planned.total} trials, {planned.strategy})\n"
    shown = invoke("plan", recipe)
    assert shown.exit_code == 0, shown.output
    assert f"total: {planned.total} trials" in shown.stdout
    assert all(trial.trial_id in shown.stdout for trial in planned.trials)


def test_validate_all_shipped_recipes_at_once():
    result = invoke("validate", *RECIPES)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(RECIPES)


def test_plan_tiny_lists_every_trial_and_the_total():
    result = invoke("plan", ROOT / "recipes" / "tiny.yaml")
    assert result.exit_code == 0
    ids = re.findall(r"^((?:dpo|ln-dpo|simpo)-\S+-s0)\s", result.stdout, flags=re.MULTILINE)
    assert len(ids) == len(set(ids)) == 3 * 3 + 3 * 3 + 2 * 2 * 3
    assert "dpo-b0.03-lr0.0001-s0" in ids
    assert "simpo-b5-lr0.001-gbr1-s0" in ids
    assert re.search(r"^total: 30 trials; plan hash [0-9a-f]{16}$", result.stdout, flags=re.MULTILINE)


def test_plan_sampled_search_shows_spaces_and_total(base_recipe, recipe_file):
    base_recipe["methods"] = {"dpo": {"beta": {"low": 0.01, "high": 1.0, "log": True}}, "ipo": None}
    base_recipe["search"] = {"strategy": "tpe", "n_trials": 5, "seeds": [0, 1]}
    result = invoke("plan", recipe_file(base_recipe))
    assert result.exit_code == 0, result.output
    assert "beta~[0.01, 1] log" in result.stdout
    assert "beta in {0.01, 0.1, 0.5, 1}" in result.stdout
    assert "total: 20 trials (5 per method and seed, tpe)" in result.stdout


def test_plan_bad_recipe_exits_2_with_the_field(base_recipe, recipe_file):
    base_recipe["methods"] = {"simpo": {"gama": [1.0]}}
    path = recipe_file(base_recipe)
    result = invoke("plan", path)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"{path}: methods.simpo.gama: simpo does not take 'gama' (did you mean 'gamma'"
    )
    assert result.stdout == ""


def test_user_error_in_a_real_process_has_no_traceback(base_recipe, recipe_file):
    base_recipe["methods"] = {"dpo": {"beta": [-1]}}
    path = recipe_file(base_recipe)
    process = subprocess.run(
        [sys.executable, "-m", "sweep", "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 2
    assert process.stderr == f"{path}: methods.dpo.beta[0]: beta must be > 0, got -1\n"
    assert process.stdout == ""


def test_plan_missing_file_exits_2(tmp_path):
    result = invoke("plan", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_methods_lists_the_registry():
    result = invoke("methods")
    assert result.exit_code == 0
    listed = set(re.findall(r"^│ ([a-z][\w-]*) +│", result.stdout, flags=re.MULTILINE))
    assert listed == set(REGISTRY)
    assert set(REQUIRED_METHODS) <= listed
    assert "trl.experimental.cpo.CPOTrainer" in result.stdout


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("validate", "plan", "methods", "run", "status", "report", "rm"):
        assert re.search(rf"^  {command}\s", result.stdout, flags=re.MULTILINE), command


def _imported_modules(*args: str) -> set[str]:
    """Modules imported by `python -X importtime -m sweep ARGS` (which must succeed)."""
    process = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sweep", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in process.stderr.splitlines()
        if line.startswith("import time:")
    }


@pytest.mark.parametrize(
    "args", [("--help",), ("plan", "recipes/tiny.yaml"), ("validate", "recipes/tr-dpo.yaml")], ids=" ".join
)
def test_light_commands_do_not_import_torch_or_trl(args):
    modules = _imported_modules(*args)
    assert "sweep.cli" in modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []
