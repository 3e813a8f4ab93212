"""An honest report: the winner's curse corrected by held-out prompts, failures apart, grid spans shown."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_report import make_sweep, quiet, trial

from sweep.evaluate.estimators import selection_mask
from sweep.report import build_report
from sweep.report.robustness import held_out_best_of_k

PROMPTS = 200


def test_held_out_best_of_k_matches_brute_force():
    import itertools

    rng = np.random.default_rng(1)
    selection, test = rng.normal(size=7), rng.normal(size=7)
    for k in (1, 3, 7):
        picks = [max(subset, key=lambda i: selection[i]) for subset in itertools.combinations(range(7), k)]
        assert held_out_best_of_k(selection, test, [k])[0] == pytest.approx(np.mean(test[picks]))


def test_winners_curse_in_sample_best_is_biased_and_the_held_out_value_is_not(tmp_path):
    """30 trials of identical quality (every prompt a fair coin): in-sample best ≫ mean, held-out ≈ mean."""
    rng = np.random.default_rng(0)
    mask = selection_mask(PROMPTS, 0.5, 0)
    trials = []
    for index in range(30):
        outcomes = rng.integers(0, 2, PROMPTS).astype(float)
        parts = {
            "selection": {"win_rate_vs_sft": outcomes[mask].mean()},
            "test": {"win_rate_vs_sft": outcomes[~mask].mean()},
        }
        trials.append(trial(f"t{index:02d}", "dpo", {"beta": 0.1 + index}, win=outcomes.mean(), **parts))
    report = build_report([make_sweep(tmp_path, "curse", trials)], console=quiet())
    row = pd.read_csv(report / "robustness.csv").iloc[0]
    sd = np.sqrt(0.25 / PROMPTS)  # of one trial's win rate over all prompts
    held_sd = np.sqrt(0.25 / (~mask).sum())
    assert row["best"] > 0.5 + 1.8 * sd and row["expected_best_k5"] > 0.5 + 0.9 * sd
    assert row["best_selected_in_sample"] > 0.5 + 0.9 * sd  # half its prompts picked it
    assert abs(row["best_selected_test"] - 0.5) < 3 * held_sd
    assert abs(row["expected_best_k5_test"] - 0.5) < 3 * held_sd / np.sqrt(5)
    assert row["expected_best_k1_test"] == pytest.approx(
        np.mean([t["metrics"]["test"]["win_rate_vs_sft"] for t in trials])
    )


def test_grid_spans_and_the_learning_rate_warning(tmp_path):
    trials = [
        trial(f"dpo-{i}", "dpo", {"beta": beta, "learning_rate": lr}, win=0.5)
        for i, (beta, lr) in enumerate([(0.01, 1e-6), (0.5, 1e-5), (0.1, 1e-4)])
    ] + [
        trial(f"simpo-{i}", "simpo", {"beta": beta, "learning_rate": lr}, win=0.5)
        for i, (beta, lr) in enumerate([(2.0, 1e-6), (10.0, 4e-6)])
    ]
    console = quiet()
    report = build_report([make_sweep(tmp_path, "grid", trials)], console=console)
    table = pd.read_csv(report / "robustness.csv").set_index("method")
    assert table.loc["dpo", "span.beta"] == pytest.approx(50) and table.loc["simpo", "span.beta"] == 5
    assert table.loc["dpo", "span.learning_rate"] == pytest.approx(100)
    assert table.loc["simpo", "span.learning_rate"] == pytest.approx(4)
    html = (report / "index.html").read_text()
    assert "learning-rate grids differ" in html and "learning-rate grids differ" in console.file.getvalue()


def test_truncated_trials_are_flagged(tmp_path):
    trials = [
        trial("long", "dpo", {"beta": 0.1}, win=0.5, truncated_fraction=0.4),
        trial("ok", "dpo", {"beta": 0.2}, win=0.5, truncated_fraction=0.05),
    ]
    report = build_report([make_sweep(tmp_path, "cut", trials)], console=quiet())
    assert pd.read_csv(report / "robustness.csv").loc[0, "n_truncated_over_0.1"] == 1
    html = (report / "index.html").read_text()
    assert "<code>long</code>" in html and "<code>ok</code>" not in html


# ----------------------------------------------------------------------- a real sweep with one OOM


@pytest.mark.slow
def test_an_out_of_memory_simpo_trial_is_listed_not_scored_unless_asked(tmp_path, monkeypatch):
    import test_trial
    from tiny import CHAT_TEMPLATE, save_dir, tiny_causal_lm, tiny_tokenizer
    from trl.experimental.cpo import CPOTrainer

    from sweep.evaluate.evaluator import Evaluator
    from sweep.results import SweepFolder, SweepRecord
    from sweep.train.trial import Worker

    tokenizer = tiny_tokenizer(test_trial.WORDS, chat_template=CHAT_TEMPLATE)
    sft = save_dir(tmp_path / "sft", tiny_causal_lm(tokenizer), tokenizer)
    prompts = ["write about ocean :", "write about music :", "write about ocean and music :"]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    recipe = test_trial.make_recipe(sft, eval={"max_new_tokens": 4})
    recipe.data.eval.path = str(tmp_path / "eval.jsonl")
    sweep_dir = tmp_path / "oom"
    worker = Worker(
        recipe,
        sweep_dir,
        log=lambda line: None,
        evaluator_factory=lambda model, tok, chat: Evaluator(
            recipe, model, tok, sweep_dir, "cpu", lambda line: None, train_conversational=chat
        ),
        train_dataset=test_trial.plain_pairs(),
    )
    train = CPOTrainer.train

    def out_of_memory_at_seed_1(self, *args, **kwargs):
        if self.args.seed == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return train(self, *args, **kwargs)

    monkeypatch.setattr(CPOTrainer, "train", out_of_memory_at_seed_1)
    specs = [test_trial.spec(f"{m}-s{s}", method=m, seed=s) for m in ("dpo", "simpo") for s in (0, 1)]
    results = {s.trial_id: worker.run(s) for s in specs}
    assert results["simpo-s1"].state == "failed" and results["simpo-s1"].error["reason"] == "oom"
    SweepFolder(sweep_dir).write_sweep(
        SweepRecord(
            name="oom",
            planned_trials=[s.trial_id for s in specs],
            objective={"metric": "win_rate_vs_sft", "direction": "maximize"},
        )
    )
    default = pd.read_csv(build_report([sweep_dir], console=quiet()) / "robustness.csv").set_index("method")
    simpo = default.loc["simpo"]
    assert (simpo["n_failed"], simpo["n_scored"]) == (1, 1)
    assert simpo["worst"] == pytest.approx(results["simpo-s0"].metrics["win_rate_vs_sft"])
    html = (sweep_dir / "report" / "index.html").read_text()
    assert "<code>simpo-s1</code>" in html and "Failed trials are left out" in html
    worst = build_report([sweep_dir], out=tmp_path / "worst", console=quiet(), failures_as_worst=True)
    simpo = pd.read_csv(worst / "robustness.csv").set_index("method").loc["simpo"]
    assert (simpo["n_scored"], simpo["worst"]) == (2, 0.0)
    assert "Failed trials count too" in (worst / "index.html").read_text()


def test_report_cli_failures_as_worst_flag_and_selection_fraction_bounds(tmp_path):
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from sweep.cli import app
    from sweep.spec.recipe import EvalSpec

    trials = [
        trial("ok", "simpo", {"beta": 2.0}, win=0.6),
        trial("oom", "simpo", {"beta": 5.0}, state="failed"),
    ]
    sweep_dir = make_sweep(tmp_path, "flag", trials)
    for flags, expected in (([], (1, 0.6)), (["--failures-as-worst"], (2, 0.0))):
        result = CliRunner().invoke(app, ["report", str(sweep_dir), *flags])
        assert result.exit_code == 0, result.output
        row = pd.read_csv(sweep_dir / "report" / "robustness.csv").iloc[0]
        assert (row["n_scored"], row["worst"]) == expected
    for bad in (0.0, 1.5):
        with pytest.raises(ValidationError, match="selection_fraction"):
            EvalSpec(selection_fraction=bad)
