"""Recipe loading and validation: every problem names its file and dotted path, exit code 2, no traceback."""

import copy
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweep.cli import app
from sweep.spec.methods import REGISTRY
from sweep.spec.plan import plan_recipe
from sweep.spec.validate import RecipeError, load_recipe

DELETE = object()
RANDOM = {"search": {"strategy": "random", "n_trials": 2}}


def _patched(base: dict, patch: dict) -> dict:
    """`base` with dotted keys set (or removed, for DELETE)."""
    recipe = copy.deepcopy(base)
    for dotted, value in patch.items():
        *parents, last = dotted.split(".")
        node = recipe
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return recipe


def _validate(path: Path):
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.output
    return result


MALFORMED = [
    # unknown keys, at every level
    ({"bogus": 1}, "bogus", "unknown key; expected one of: name, description, model, data"),
    ({"model": {"path": "builtin:toy", "pth": "x"}}, "model.pth", "unknown key (did you mean 'path'?)"),
    ({"model": {"path": "x", "lora": {"rank": 8}}}, "model.lora.rank", "expected one of: r, alpha, dropout"),
    ({"data.validation": {"path": "x"}}, "data.validation", "unknown key; expected one of: train, eval"),
    ({"data.train.colums": {}}, "data.train.colums", "unknown key (did you mean 'columns'?)"),
    ({"data.train.columns": {"promt": "q"}}, "data.train.columns.promt", "(did you mean 'prompt'?)"),
    ({"data.eval.max_prompt": 3}, "data.eval.max_prompt", "unknown key (did you mean 'max_prompts'?)"),
    ({"data.eval.columns": {"ref": "chosen"}}, "data.eval.columns.ref", "expected one of: prompt, reference"),
    (
        {"judge": [{"reward_model": "builtin:toy-rm"}, {"name": "g", "callable": "m:f", "batchsize": 2}]},
        "judge[1].batchsize",
        "unknown key (did you mean 'batch_size'?)",
    ),
    ({"search": {"stratgy": "grid"}}, "search.stratgy", "unknown key (did you mean 'strategy'?)"),
    ({"train": {"max_step": 5}}, "train.max_step", "unknown key (did you mean 'max_steps'?)"),
    ({"eval": {"max_new_token": 5}}, "eval.max_new_token", "unknown key (did you mean 'max_new_tokens'?)"),
    ({"execution": {"worker": 2}}, "execution.worker", "unknown key (did you mean 'workers'?)"),
    ({"execution.slurm": {"partion": "gpu"}}, "execution.slurm.partion", "(did you mean 'partition'?)"),
    (
        {**RANDOM, "methods.dpo.beta": {"low": 0.1, "high": 1, "lg": True}},
        "methods.dpo.beta.lg",
        "unknown key (did you mean 'log'?); expected one of: low, high, log",
    ),
    # wrong types
    ({"train": {"max_steps": "many"}}, "train.max_steps", "valid integer"),
    ({"eval": {"do_sample": "maybe"}}, "eval.do_sample", "valid boolean"),
    ({"methods.dpo.beta": ["x"]}, "methods.dpo.beta[0]", "expected a number, got 'x'"),
    ({"methods.dpo.beta": [True]}, "methods.dpo.beta[0]", "expected a number, got True"),
    ({"methods.dpo": [0.1]}, "methods.dpo", "expected a mapping of hyperparameter -> values"),
    ({"execution": {"devices": [-1]}}, "execution.devices[0]", "greater than or equal to 0"),
    (
        {"execution.slurm": {"additional": {"gres": [1]}}},
        "execution.slurm.additional.gres",
        "Input should be a valid string; Input should be a valid integer",
    ),
    (
        {"execution": {"devices": "gpu"}},
        "execution.devices",
        "should be 'auto' or 'cpu'; Input should be a valid list",
    ),
    ({"model": {"path": "x", "lora": {"r": "big"}}}, "model.lora.r", "valid integer"),
    ({"judge": [{"reward_model": "builtin:toy-rm"}, 3]}, "judge[1]", "valid dictionary"),
    # out-of-range values
    ({"methods.dpo.beta": [0.1, -0.1]}, "methods.dpo.beta[1]", "beta must be > 0, got -0.1"),
    ({"methods.dpo.beta": 0}, "methods.dpo.beta", "beta must be > 0, got 0"),
    (
        {"methods": {"tr-dpo": {"alpha": [0.5, 1.5]}}},
        "methods.tr-dpo.alpha[1]",
        "alpha must be <= 1, got 1.5",
    ),
    ({"methods": {"tr-dpo": {"tau": [1.5]}}}, "methods.tr-dpo.tau[0]", "tau must be a whole number, got 1.5"),
    ({"train": {"max_length": 8}}, "train", "min_completion_tokens (8) must be below max_length (8)"),
    (
        {"methods": {"cdpo": {"label_smoothing": [0.6]}}},
        "methods.cdpo.label_smoothing[0]",
        "label_smoothing must be < 0.5",
    ),
    pytest.param(
        {"methods": {"cdpo": {"label_smoothing": [0.5]}}},
        "methods.cdpo.label_smoothing[0]",
        "label_smoothing must be < 0.5, got 0.5",
        id="label_smoothing-0.5",
    ),
    ({"methods.dpo.learning_rate": [2.0]}, "methods.dpo.learning_rate[0]", "learning_rate must be <= 1"),
    ({"train": {"max_steps": 0}}, "train.max_steps", "Input should be greater than 0"),
    ({"train": {"warmup_ratio": 1}}, "train.warmup_ratio", "less than 1"),
    ({"eval": {"top_p": 1.5}}, "eval.top_p", "less than or equal to 1"),
    ({"execution": {"workers": 0}}, "execution.workers", "Input should be greater than 0"),
    ({"data.train.max_samples": -5}, "data.train.max_samples", "greater than 0"),
    # methods and their hyperparameters
    (
        {"methods.dpo.gamma": [1.0]},
        "methods.dpo.gamma",
        "dpo does not take 'gamma'; it takes: beta, learning_rate",
    ),
    ({"methods.dpo.betta": [0.1]}, "methods.dpo.betta", "does not take 'betta' (did you mean 'beta'?)"),
    ({"methods": {"dpoo": None}}, "methods.dpoo", "unknown method (did you mean 'dpo'"),
    ({"methods.dpo.beta": []}, "methods.dpo.beta", "empty list: give at least one value"),
    ({"methods.dpo.beta": [0.1, 0.1]}, "methods.dpo.beta", "values repeat"),
    (
        {"methods": {"simpo": {"gamma": [1.0], "gamma_beta_ratio": [0.5]}}},
        "methods.simpo",
        "give either gamma_beta_ratio or gamma, not both",
    ),
    ({"methods.dpo.beta": {"low": 0.1, "high": 1}}, "methods.dpo.beta", "a grid needs a list of values"),
    (
        {**RANDOM, "methods.dpo.beta": {"low": 1, "high": 0.5}},
        "methods.dpo.beta",
        "low (1) must be below high",
    ),
    ({**RANDOM, "methods.dpo.beta": {"low": 1, "high": 1}}, "methods.dpo.beta", "low (1) must be below high"),
    (
        {**RANDOM, "methods.dpo.learning_rate": {"low": 0, "high": 1e-5, "log": True}},
        "methods.dpo.learning_rate",
        "a log-scale range needs low > 0",
    ),
    ({**RANDOM, "methods.dpo.beta": {"low": -1, "high": 1}}, "methods.dpo.beta", "beta must be > 0, got -1"),
    # train.extra
    (
        {"train.extra": {"padding_fre": True}},
        "train.extra.padding_fre",
        "not a field of TRL's DPOConfig (used by dpo) (did you mean 'padding_free'?)",
    ),
    ({"train.extra": {"output_dir": "x"}}, "train.extra.output_dir", "is set by posweep for each trial"),
    ({"train.extra": {"seed": 1}}, "train.extra.seed", "is set by posweep for each trial"),
    ({"train.extra": {"beta": 0.2}}, "train.extra.beta", "give it under methods"),
    ({"train.extra": {"max_steps": 3}}, "train.extra.max_steps", "set it as train.max_steps"),
    # names
    ({"name": "../x"}, "name", "'../x' is not a safe folder name"),
    ({"name": "a b"}, "name", "'a b' is not a safe folder name"),
    ({"name": "."}, "name", "'.' is not a safe folder name"),
    ({"name": "a" * 65}, "name", "is not a safe folder name"),
    # judges and the objective
    ({"judge": {"reward_model": "builtin:toy-rm", "callable": "m:f"}}, "judge[0]", "exactly one of"),
    ({"judge": {"name": "j"}}, "judge[0]", "give exactly one of reward_model and callable"),
    ({"judge": {"callable": "no_function"}}, "judge[0]", "callable must look like module.path:function"),
    ({"judge": {"name": "a/b", "callable": "m:f"}}, "judge[0]", "name must be letters"),
    (
        {"judge": [{"reward_model": "builtin:toy-rm"}, {"name": "rm", "callable": "m:f"}]},
        "judge[1].name",
        "judge name 'rm' is used twice",
    ),
    ({"judge": []}, "judge", "at least 1 item"),
    ({"eval": {"objective": "win_rate"}}, "eval.objective", "unknown metric 'win_rate' (did you mean"),
    ({"eval": {"objective": "gold.win_rate_vs_sft"}}, "eval.objective", "'gold' is not a secondary judge"),
    (
        {"eval": {"objective": "win_rate_vs_chosen"}},
        "eval.objective",
        "win_rate_vs_chosen needs data.eval.columns.reference",
    ),
    # search
    ({"search": {"strategy": "random"}}, "search", "n_trials is required for strategy random"),
    ({"search": {"strategy": "tpe"}}, "search", "n_trials is required for strategy tpe"),
    ({"search": {"n_trials": 4}}, "search", "n_trials applies to random and tpe"),
    ({"search": {"seeds": [0, 1, 0]}}, "search", "seeds must be distinct"),
    ({"search": {"seeds": []}}, "search.seeds", "at least 1 item"),
    ({"search": {"strategy": "bayes"}}, "search.strategy", "'grid', 'random' or 'tpe'"),
    # local paths and required sections
    ({"data.train.path": "./nope.jsonl"}, "data.train.path", "no such file or directory: ./nope.jsonl"),
    ({"data.eval.path": "missing.parquet"}, "data.eval.path", "no such file or directory: missing.parquet"),
    ({"model": "./no-model-here"}, "model.path", "no such file or directory"),
    ({"model": DELETE}, "model", "required key is missing"),
    ({"data": DELETE}, "data", "required key is missing"),
    ({"judge": DELETE}, "judge", "required key is missing"),
    ({"methods": DELETE}, "methods", "required key is missing"),
    ({"methods": {}}, "methods", "at least 1 item"),
    ({"data.eval": {"split": "test"}}, "data.eval.path", "required key is missing"),
]


@pytest.mark.parametrize(("patch", "where", "message"), MALFORMED)
def test_malformed_recipe_names_the_field(base_recipe, recipe_file, patch, where, message):
    path = recipe_file(_patched(base_recipe, patch))
    result = _validate(path)
    assert result.exit_code == 2, result.output
    prefix = f"{path}: {where}: "
    lines = [line for line in result.stderr.splitlines() if line.startswith(prefix)]
    assert lines, f"no line starts with {prefix!r}:\n{result.stderr}"
    assert any(message in line for line in lines), result.stderr


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("name: [unclosed\nmodel: x\n", "line 2, column 6", "invalid YAML: expected ',' or ']'"),
        ("name: t\nmodel: {path: x\n", "line 3, column 1", "invalid YAML: expected ',' or '}'"),
        ("name: t\n\tmodel: x\n", "line 2, column 1", "invalid YAML: found character '\\t'"),
        ("name: a\nmodel: b\nname: c\n", "line 3, column 1", "invalid YAML: duplicate key 'name'"),
        ("data:\n  train: {path: a, path: b}\n", "line 2, column 20", "duplicate key 'path'"),
        ("- name: a\n- name: b\n", "(top level)", "a recipe is a mapping of sections"),
        ("just a sentence\n", "(top level)", "a recipe is a mapping of sections"),
        ("", "(top level)", "a recipe is a mapping of sections"),
    ],
)
def test_malformed_yaml(recipe_file, text, where, message):
    path = recipe_file(text)
    result = _validate(path)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{path}: {where}: ")
    assert message in line


def test_unreadable_file(tmp_path):
    path = tmp_path / "absent.yaml"
    result = _validate(path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}: (file): cannot read")


def test_every_problem_reported_one_line_each_and_nothing_written(
    base_recipe, recipe_file, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    bad = _patched(
        base_recipe,
        {
            "train": {"max_step": 5},
            "eval": {"top_p": 2},
            "methods": {
                "dpo": {"beta": [-1, 0.1]},
                "simpo": {"gamma": [1.0], "gamma_beta_ratio": [0.5]},
                "dpoo": None,
            },
        },
    )
    path = recipe_file(bad)
    before = sorted(tmp_path.rglob("*"))
    result = _validate(path)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{path}: train.max_step: unknown key (did you mean 'max_steps'?); expected one of: "
        "max_steps, num_train_epochs, per_device_train_batch_size, gradient_accumulation_steps, max_length, "
        "warmup_ratio, lr_scheduler_type, weight_decay, max_grad_norm, optim, precision, pure_bf16, "
        "min_completion_tokens, gradient_checkpointing, use_liger_kernel, logging_steps, report_to, extra",
        f"{path}: eval.top_p: Input should be less than or equal to 1",
        f"{path}: methods.dpo.beta[0]: beta must be > 0, got -1",
        f"{path}: methods.simpo: give either gamma_beta_ratio or gamma, not both (they set the same margin)",
        f"{path}: methods.dpoo: unknown method (did you mean 'dpo' or 'cdpo' or 'tr-dpo'?)",
    ]
    assert sorted(tmp_path.rglob("*")) == before


def test_semantic_problems_reported_together(base_recipe, recipe_file):
    bad = _patched(
        base_recipe,
        {
            "judge": [{"reward_model": "builtin:toy-rm"}, {"name": "rm", "callable": "m:f"}],
            "eval": {"objective": "win_rate_vs_chosen"},
            "data.train.path": "./nope.jsonl",
        },
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe_file(bad))
    assert [where for where, _ in caught.value.problems] == [
        "judge[1].name",
        "eval.objective",
        "data.train.path",
    ]
    assert len(str(caught.value).splitlines()) == 3


def test_valid_and_invalid_files_in_one_call(base_recipe, recipe_file):
    good = recipe_file(base_recipe, "good.yaml")
    bad = recipe_file(_patched(base_recipe, {"name": "a b"}), "bad.yaml")
    result = CliRunner().invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"{good}: ok (1 trials, grid)" in result.stdout
    assert result.stderr.startswith(f"{bad}: name: ")


# --------------------------------------------------------------------------- valid recipes


def test_minimal_recipe_defaults(base_recipe, recipe_file):
    recipe = load_recipe(recipe_file(_patched(base_recipe, {"methods": {"dpo": None}})))
    assert recipe.space("dpo") == {name: list(values) for name, values in REGISTRY["dpo"].space.items()}
    assert plan_recipe(recipe).total == 4 * 3
    assert recipe.search.strategy == "grid"
    assert recipe.search.seeds == [0]
    assert recipe.eval.objective == "win_rate_vs_sft"
    assert recipe.eval.direction == "maximize"
    assert recipe.execution.workers == 1
    assert recipe.data.eval.split == "test"
    assert recipe.model.lora is None


def test_empty_method_mapping_means_defaults(base_recipe, recipe_file):
    recipe = load_recipe(recipe_file(_patched(base_recipe, {"methods": {"simpo": {}}})))
    assert set(recipe.space("simpo")) == set(REGISTRY["simpo"].space)


def test_scalar_value_is_a_one_point_grid(base_recipe, recipe_file):
    recipe = load_recipe(recipe_file(_patched(base_recipe, {"methods.dpo.beta": 0.2})))
    assert recipe.space("dpo")["beta"] == [0.2]


def test_model_shorthand(base_recipe, recipe_file):
    recipe = load_recipe(recipe_file(_patched(base_recipe, {"model": "some/id"})))
    assert recipe.model.path == "some/id"
    assert recipe.model.trust_remote_code is False


def test_judge_mapping_or_list(base_recipe, recipe_file):
    single = load_recipe(recipe_file(base_recipe, "single.yaml"))
    assert [j.name for j in single.judges] == ["rm"]
    listed = load_recipe(
        recipe_file(
            _patched(
                base_recipe,
                {
                    "judge": [
                        {"reward_model": "builtin:toy-rm"},
                        {"callable": "sweep.builtin.toy:gold_reward"},
                    ],
                    "eval": {"objective": "gold_reward.win_rate_vs_sft"},
                },
            ),
            "list.yaml",
        )
    )
    assert [j.name for j in listed.judges] == ["rm", "gold_reward"]
    assert listed.eval.direction == "maximize"


def test_relative_local_paths_resolve_against_recipe_folder(base_recipe, recipe_file, tmp_path, monkeypatch):
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "pairs.jsonl").write_text(
        '{"prompt": "p", "chosen": "c", "rejected": "r"}\n'
    )
    (tmp_path / "project" / "model").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    patch = {"model": "./model", "data.train.path": "data/pairs.jsonl"}
    recipe = load_recipe(recipe_file(_patched(base_recipe, patch), "project/recipe.yaml"))
    assert recipe.data.train.path == str((tmp_path / "project" / "data" / "pairs.jsonl").resolve())
    assert recipe.model.path == str((tmp_path / "project" / "model").resolve())
    assert recipe.data.eval.path == "builtin:toy/eval"


def test_hub_ids_are_left_as_is(base_recipe, recipe_file):
    recipe = load_recipe(
        recipe_file(
            _patched(
                base_recipe,
                {
                    "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                    "data.train.path": "trl-lib/ultrafeedback_binarized",
                    "judge": {"reward_model": "OpenAssistant/reward-model-deberta-v3-large-v2"},
                },
            )
        )
    )
    assert recipe.model.path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert recipe.data.train.path == "trl-lib/ultrafeedback_binarized"
    assert recipe.judges[0].reward_model == "OpenAssistant/reward-model-deberta-v3-large-v2"


def test_dump_reloads_to_the_same_recipe(base_recipe, recipe_file):
    recipe = load_recipe(
        recipe_file(_patched(base_recipe, {"train": {"extra": {"dataloader_num_workers": 0}}}))
    )
    again = load_recipe(recipe_file(recipe.dump(), "again.yaml"))
    assert again == recipe
    assert again.train.extra == {"dataloader_num_workers": 0}


def test_random_ranges_are_parsed(base_recipe, recipe_file):
    recipe = load_recipe(
        recipe_file(
            _patched(
                base_recipe, {**RANDOM, "methods.dpo.learning_rate": {"low": 1e-7, "high": 1e-5, "log": True}}
            )
        )
    )
    space = recipe.space("dpo")
    assert space["beta"] == [0.1]
    assert (space["learning_rate"].low, space["learning_rate"].high, space["learning_rate"].log) == (
        1e-7,
        1e-5,
        True,
    )


def test_objective_on_a_secondary_judge(base_recipe, recipe_file):
    judges = [{"reward_model": "builtin:toy-rm"}, {"name": "gold", "callable": "m:f"}]
    recipe = load_recipe(
        recipe_file(
            _patched(base_recipe, {"judge": judges, "eval": {"objective": "gold.lc_win_rate_vs_sft"}})
        )
    )
    assert recipe.eval.direction == "maximize"
    for objective in ("gold.kl_to_sft", "gold.length_mean"):  # no judge computes these: nothing to optimize
        path = recipe_file(_patched(base_recipe, {"judge": judges, "eval": {"objective": objective}}))
        with pytest.raises(RecipeError, match=r"eval\.objective: .* does not depend on a judge"):
            load_recipe(path)


def test_exponent_floats_are_numbers(recipe_file):
    """YAML 1.1 reads 1e-3 as a string; posweep reads it as the number users mean."""
    from sweep.spec.validate import load_recipe

    text = """
name: t
model: builtin:toy
data: {train: {path: builtin:toy/train}, eval: {path: builtin:toy/eval}}
judge: {reward_model: builtin:toy-rm}
methods:
  dpo: {beta: [1e-1, 2.5e+0], learning_rate: [1e-3, 5E-7]}
"""
    recipe = load_recipe(recipe_file(text))
    assert recipe.space("dpo") == {"beta": [0.1, 2.5], "learning_rate": [0.001, 5e-07]}
