"""`--smoke`: a real smoke sweep of a multi-method recipe on the built-in tiny model, checked from the
trial's files; and how it composes with `--set` (smoke first, then the overrides)."""

import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from sweep.cli import app
from sweep.spec.plan import plan_recipe
from sweep.spec.smoke import SMOKE_NEW_TOKENS, SMOKE_PAIRS, SMOKE_PROMPTS, SMOKE_STEPS, smoke_recipe
from sweep.spec.validate import load_recipe

TINY = Path(__file__).resolve().parent.parent / "recipes" / "tiny.yaml"


def test_smoke_keeps_the_middle_grid_point_and_set_applies_after_it(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    smoked = smoke_recipe(raw)
    assert smoked["methods"]["dpo"] == {"beta": [0.1], "learning_rate": [3.0e-4]}  # middle of 3
    assert smoked["methods"]["simpo"]["beta"] == [2.0]  # (n-1)//2 of 2 values: the lower middle
    assert raw["train"]["max_steps"] == 40  # the input is untouched
    recipe = load_recipe(TINY, ["train.max_steps=3"], smoke=True)
    assert recipe.name == "tiny-smoke" and recipe.train.max_steps == 3  # --set wins over --smoke
    assert plan_recipe(recipe).total == 3  # one trial per method
    after = load_recipe(TINY, ["methods={dpo: null}"], smoke=True)  # set after smoke: the full registry grid
    assert after.space("dpo") == {"beta": [0.01, 0.05, 0.1, 0.5], "learning_rate": [3e-7, 5e-7, 1e-6]}
    raw["methods"] = {"dpo": None}
    raw["search"]["seeds"] = [3, 4]
    file = tmp_path / "registry.yaml"
    file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    registry = load_recipe(file, smoke=True)
    assert registry.space("dpo") == {"beta": [0.05], "learning_rate": [5e-7]}  # the registry's middle
    assert plan_recipe(registry).seeds == (3,) and plan_recipe(registry).total == 1


def test_smoke_on_random_search_runs_one_trial_per_method(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["search"] = {"strategy": "random", "n_trials": 20, "seeds": [0, 1]}
    raw["methods"]["dpo"] = {"beta": {"low": 0.01, "high": 1.0, "log": True}}
    file = tmp_path / "random.yaml"
    file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert plan_recipe(load_recipe(file)).total == 20 * 2 * 3
    smoked = load_recipe(file, smoke=True)
    assert plan_recipe(smoked).total == 3 and smoked.search.n_trials == 1
    assert smoked.space("dpo")["beta"].low == 0.01  # a range is kept; the one trial samples it


def test_a_real_smoke_run_of_a_multi_method_recipe(tmp_path):
    recipe = {
        "name": "multi",
        "model": "builtin:toy",
        "data": {
            "train": {"path": "builtin:toy/train", "max_samples": 200},
            "eval": {"path": "builtin:toy/eval", "columns": {"prompt": "prompt", "reference": "chosen"}},
        },
        "judge": [{"name": "rm", "reward_model": "builtin:toy-rm"}],
        "methods": {
            "dpo": {"beta": [0.03, 0.1, 0.3], "learning_rate": [1e-4, 3e-4, 1e-3]},
            "simpo": {"beta": [2.0, 5.0, 8.0], "gamma_beta_ratio": [0.5], "learning_rate": [1e-4, 3e-4]},
        },
        "search": {"seeds": [0, 1]},
        "train": {"max_steps": 500, "per_device_train_batch_size": 4, "max_length": 96},
        "eval": {"max_new_tokens": 256, "batch_size": 16, "bootstrap": 50},
    }
    file = tmp_path / "multi.yaml"
    file.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    results = tmp_path / "results"
    result = CliRunner().invoke(
        app, ["run", str(file), "--smoke", "--set", "eval.bootstrap=20", "--results", str(results), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in results.iterdir()] == ["multi-smoke"]
    folder = results / "multi-smoke"
    written = yaml.safe_load((folder / "recipe.yaml").read_text())
    effective = yaml.safe_load(load_recipe(file, ["eval.bootstrap=20"], smoke=True).dump())
    assert {k: v for k, v in written.items() if k != "execution"} == {
        k: v for k, v in effective.items() if k != "execution"
    }
    assert written["eval"]["bootstrap"] == 20 and written["train"]["max_steps"] == SMOKE_STEPS == 2
    assert written["data"]["eval"]["max_prompts"] == SMOKE_PROMPTS == 4
    assert written["eval"]["max_new_tokens"] == SMOKE_NEW_TOKENS == 16
    trials = sorted((folder / "trials").iterdir())
    params = [json.loads((t / "params.json").read_text()) for t in trials]
    assert sorted((p["method"], p["seed"]) for p in params) == [("dpo", 0), ("simpo", 0)]
    points = {p["method"]: p["params"] for p in params}
    assert points["dpo"] == {"beta": 0.1, "learning_rate": 3e-4}
    assert points["simpo"] == {"beta": 5.0, "gamma_beta_ratio": 0.5, "learning_rate": 1e-4}
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["training_data"][""]["pairs"] + sweep["training_data"][""]["dropped"] == SMOKE_PAIRS == 8
    for trial in trials:
        metrics = json.loads((trial / "metrics.json").read_text())
        assert metrics["state"] == "complete"
        assert metrics["train"]["steps"] == SMOKE_STEPS
        assert metrics["train"]["pairs_seen"] == SMOKE_STEPS * 4
        assert metrics["train"]["length_policy"]["pairs"] == SMOKE_PAIRS
        samples = [json.loads(line) for line in (trial / "samples.jsonl").read_text().splitlines()]
        assert sorted({s["prompt_index"] for s in samples}) == list(range(SMOKE_PROMPTS))
        for sample in samples:  # a response cut at the token limit is marked truncated; none is longer
            assert sample["length"] <= SMOKE_NEW_TOKENS
            assert not sample["truncated"] or sample["length"] == SMOKE_NEW_TOKENS, sample
