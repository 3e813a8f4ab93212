"""Reported numbers of a real trained sweep against computations of their own, from its files alone.

The length-controlled win rate against a separately written logistic fit (a golden-section search, not
posweep's Newton steps) on samples.jsonl; response lengths against a fresh tokenization of the decoded
text; the robustness histogram's bars and the best-of-k curve's ends against counts and extremes of
metrics.json.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from test_engine import WORDS, inputs, run, write_recipe  # noqa: F401  (the module-scoped tiny inputs)
from transformers import AutoTokenizer

from sweep.evaluate.estimators import RIDGE
from sweep.report import load_sweeps, read_trials
from sweep.report.canvas import PlotData
from sweep.report.figures import expected_best_of_k_figure, performance_hist
from sweep.report.robustness import group_columns, group_labels, resolve_objective, scored_values
from sweep.results import SweepFolder

pytestmark = pytest.mark.slow
MAX_NEW_TOKENS = 8
METHODS = {
    "dpo": {"beta": [0.1, 0.5], "learning_rate": [3e-4, 1e-2]},
    "simpo": {"beta": [2.0], "gamma_beta_ratio": [0.5], "learning_rate": [3e-4, 1e-2]},
}


@pytest.fixture(scope="module")
def sweep(inputs, tmp_path_factory) -> Path:  # noqa: F811
    """Six trials of DPO and SimPO on the tiny inputs with 24 varied evaluation prompts; small learning
    rates keep some responses near the SFT model's, large ones move them far, so policies win and lose."""
    folder = tmp_path_factory.mktemp("oracles")
    for name in ("model", "rm", "train.jsonl"):
        (folder / name).symlink_to(inputs / name)
    rng = random.Random(0)
    with (folder / "eval.jsonl").open("w") as handle:
        for _ in range(24):
            words = " ".join(rng.sample(WORDS, 3))
            handle.write(
                json.dumps({"q": [{"role": "user", "content": f"tell me {words}"}], "a": "good"}) + "\n"
            )
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "batch_size": 24, "bootstrap": 50}
    recipe = write_recipe(folder, "oracles", METHODS, eval=settings, train={"max_steps": 6, "max_length": 48})
    result = run("run", recipe, "--results", folder, "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "oracles"


def metrics_of(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("trials/*/metrics.json"))}


def logistic_intercept(x: np.ndarray, targets: np.ndarray, ridge: float) -> float:
    """The intercept a of argmin over (a, b) of mean cross-entropy of sigmoid(a + b·x) + ridge/2·(a² + b²),
    by golden-section search over b of the loss at the best a for that b (bisection on ∂/∂a = 0)."""

    def best_a(b: float) -> float:
        low, high = -60.0, 60.0
        for _ in range(100):
            middle = (low + high) / 2
            slope = np.mean(1 / (1 + np.exp(-(middle + b * x))) - targets) + ridge * middle
            low, high = (low, middle) if slope > 0 else (middle, high)
        return (low + high) / 2

    def loss(b: float) -> float:
        a = best_a(b)
        return float(
            np.mean(np.logaddexp(0, a + b * x) - targets * (a + b * x)) + ridge / 2 * (a * a + b * b)
        )

    low, high, ratio = -60.0, 60.0, (math.sqrt(5) - 1) / 2
    for _ in range(120):
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        low, high = (low, right) if loss(left) < loss(right) else (left, high)
    assert -59 < low < 59, "the optimum is at the search bounds"
    return best_a((low + high) / 2)


def test_lc_win_rate_of_trained_policies_matches_an_independent_logistic_fit(sweep):
    informative = 0
    for trial_id, metrics in metrics_of(sweep).items():
        lines = SweepFolder(sweep).trial(trial_id).read_samples()
        outcomes = np.array([(np.sign(x["score"] - x["sft_score"]) + 1) / 2 for x in lines])
        diff = np.array([x["length"] - x["sft_length"] for x in lines], dtype=float)
        if diff.std() == 0:
            continue
        expected = 1.0 / (1.0 + math.exp(-logistic_intercept(diff / diff.std(), outcomes, RIDGE)))
        assert metrics["lc_win_rate_vs_sft"] == pytest.approx(expected, abs=1e-5), trial_id
        informative += len(set(outcomes)) > 1
    assert informative >= 2, "too few trials with both wins and losses for the check to bite"


def test_response_lengths_are_the_token_counts_of_the_decoded_text(sweep, inputs):  # noqa: F811
    tokenizer = AutoTokenizer.from_pretrained(inputs / "model")

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    moved = 0
    for trial_id, metrics in metrics_of(sweep).items():
        lines = SweepFolder(sweep).trial(trial_id).read_samples()
        lengths = [count(line["response"]) for line in lines]
        assert lengths == [line["length"] for line in lines], trial_id
        assert [count(line["sft_response"]) for line in lines] == [line["sft_length"] for line in lines]
        assert metrics["length_mean"] == pytest.approx(np.mean(lengths), abs=1e-12)
        assert metrics["length_median"] == pytest.approx(np.median(lengths), abs=1e-12)
        assert metrics["words_mean"] == pytest.approx(np.mean([len(x["response"].split()) for x in lines]))
        assert metrics["truncated_fraction"] == pytest.approx(np.mean([x["truncated"] for x in lines]))
        assert all(
            x["length"] == MAX_NEW_TOKENS for x in lines if x["truncated"] and "<" not in x["response"]
        )
        moved += lengths != [line["sft_length"] for line in lines]
    assert moved >= 1, "no trained policy answers differently from the SFT model"


def plot_data(sweep: Path) -> PlotData:
    sweeps = load_sweeps([sweep])
    trials, objective = resolve_objective(sweeps, read_trials(sweeps), None)
    columns = group_columns(trials)
    return PlotData(trials, objective, group_labels(trials, columns), scored_values(trials, objective), {})


def objectives_by_method(sweep: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for trial_id, metrics in metrics_of(sweep).items():
        assert metrics["state"] == "complete", trial_id
        found.setdefault(trial_id.split("-")[0], []).append(metrics["objective"])
    return found


def test_the_histogram_bars_are_the_share_of_trials_in_each_bin(sweep):
    values = objectives_by_method(sweep)
    fig, _ = performance_hist(plot_data(sweep))
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.patches]
    assert sorted(ax.get_title().split("\n")[0] for ax in axes) == sorted(values)
    for ax in axes:
        method = ax.get_title().split("\n")[0]
        bars = [(bar.get_x(), bar.get_x() + bar.get_width(), bar.get_height()) for bar in ax.patches]
        last = max(right for _, right, _ in bars)
        for left, right, height in bars:
            inside = [v for v in values[method] if left <= v < right or (right == last and v == right)]
            assert height == pytest.approx(100 * len(inside) / len(values[method]), abs=1e-9), (method, left)
        assert sum(height for _, _, height in bars) == pytest.approx(100)


def test_the_best_of_k_curve_runs_from_the_mean_trial_to_the_best(sweep):
    values = objectives_by_method(sweep)
    fig, _ = expected_best_of_k_figure(plot_data(sweep))
    (ax,) = fig.axes
    curves = {line.get_label().split(" (N = ")[0]: line for line in ax.lines if " (N = " in line.get_label()}
    assert sorted(curves) == sorted(values)
    for method, line in curves.items():
        ks, curve = line.get_xdata(), line.get_ydata()
        assert (ks[0], ks[-1]) == (1, len(values[method]))
        assert curve[0] == pytest.approx(np.mean(values[method]), abs=1e-12)
        assert curve[-1] == pytest.approx(max(values[method]), abs=1e-12)
