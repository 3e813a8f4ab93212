"""Evaluation statistics, each checked against an independent computation."""

import math
import statistics

import numpy as np
import pytest
import torch

from sweep.evaluate import estimators as stats


def brute_force_win_rate(policy, baseline) -> float:
    """Mean over prompts of the mean outcome over every (policy sample, baseline sample) pair, by loops."""
    per_prompt = []
    for mine, theirs in zip(policy, baseline, strict=True):
        outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a in mine for b in theirs]
        per_prompt.append(sum(outcomes) / len(outcomes))
    return sum(per_prompt) / len(per_prompt)


def test_win_rate_counts_ties_as_half():
    assert stats.win_rate([1, 2, 3, 4], [1, 3, 2, 4]) == 0.5
    assert stats.win_rate([5, 5], [1, 1]) == 1.0
    assert stats.win_rate([0, 0, 0], [1, 0, 1]) == pytest.approx(1 / 6)


def test_win_rate_matches_loops_with_several_samples_and_many_ties():
    rng = np.random.default_rng(0)
    policy = rng.integers(0, 4, size=(30, 3))
    baseline = rng.integers(0, 4, size=(30, 2))
    assert stats.win_rate(policy, baseline) == pytest.approx(
        brute_force_win_rate(policy, baseline), abs=1e-12
    )
    references = rng.integers(0, 4, size=30)
    expected = brute_force_win_rate(policy, [[r] for r in references])
    assert stats.win_rate(policy, references) == pytest.approx(expected, abs=1e-12)


def test_samples_against_themselves_win_exactly_half():
    scores = np.random.default_rng(1).normal(size=(20, 4))
    assert stats.win_rate(scores, scores) == 0.5
    assert np.all(stats.per_prompt_win_rates(scores, scores) == 0.5)


def test_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time():
    truth, covered, trials = 0.6, 0, 300
    for seed in range(trials):
        values = np.random.default_rng(seed).binomial(1, truth, size=60).astype(float)
        low, high = stats.bootstrap_ci(values, n_resamples=400, seed=seed)
        covered += low <= truth <= high
    assert 0.89 <= covered / trials <= 0.99


def test_bootstrap_interval_agrees_with_the_normal_interval_for_many_prompts():
    values = np.random.default_rng(7).normal(0.3, 1.0, size=3000)
    low, high = stats.bootstrap_ci(values, n_resamples=2000, seed=0)
    half = 1.959964 * values.std(ddof=1) / math.sqrt(values.size)
    assert low == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert high == pytest.approx(values.mean() + half, abs=0.1 * half)
    narrow = stats.bootstrap_ci(values, n_resamples=2000, seed=0, level=0.5)
    assert low < narrow[0] < narrow[1] < high
    assert stats.bootstrap_ci(values, 2000, seed=0) == (low, high)


def simulated_pairs(seed: int, intercept: float, slope: float, size: int = 6000):
    """Pairwise outcomes (0, 0.5 or 1: the mean of two judgements) driven by quality and length difference."""
    rng = np.random.default_rng(seed)
    length_diff = rng.normal(40.0, 50.0, size=size)
    p_win = 1.0 / (1.0 + np.exp(-(intercept + slope * length_diff / 50.0)))
    outcomes = (rng.random(size) < p_win).astype(float) / 2 + (rng.random(size) < p_win).astype(float) / 2
    return outcomes, length_diff


def test_length_controlled_win_rate_removes_a_pure_length_effect():
    outcomes, length_diff = simulated_pairs(0, intercept=0.0, slope=1.5)
    assert set(np.unique(outcomes)) == {0.0, 0.5, 1.0}
    assert outcomes.mean() > 0.65
    assert stats.length_controlled_win_rate(outcomes, length_diff) == pytest.approx(0.5, abs=0.03)


def test_length_controlled_win_rate_keeps_a_quality_effect():
    outcomes, length_diff = simulated_pairs(1, intercept=0.8, slope=1.0)
    expected = 1 / (1 + math.exp(-0.8))
    assert outcomes.mean() > expected + 0.05
    assert stats.length_controlled_win_rate(outcomes, length_diff) == pytest.approx(expected, abs=0.03)


def test_logistic_fit_agrees_with_lbfgs_on_the_same_objective():
    outcomes, length_diff = simulated_pairs(2, intercept=-0.4, slope=0.7, size=500)
    features = np.column_stack([np.ones_like(length_diff), length_diff / length_diff.std()])
    weights = stats.fit_logistic(features, outcomes, ridge=1e-3)
    x, y = torch.tensor(features), torch.tensor(outcomes)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        optimizer.zero_grad()
        logits = x @ w
        loss = (torch.nn.functional.softplus(logits) - y * logits).mean() + 0.5e-3 * (w @ w)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert weights == pytest.approx(w.detach().numpy(), abs=1e-6)


def test_length_controlled_win_rate_edge_cases():
    assert stats.length_controlled_win_rate([0.5] * 10, [0] * 10) == 0.5
    assert stats.length_controlled_win_rate([1, 0, 1, 1], [0, 0, 0, 0]) == pytest.approx(0.75, abs=1e-4)
    assert math.isnan(stats.length_controlled_win_rate([1, 0, 1], [3, 3, 3]))
    separated = stats.length_controlled_win_rate([1.0] * 50, np.linspace(-5, 5, 50))
    assert 0.99 < separated < 1.0


def test_length_stats_match_the_statistics_module():
    lengths = [0, 3, 7, 12, 12, 5, 0, 9, 12, 4, 1]
    found = stats.length_stats(lengths, ended=[length < 12 for length in lengths])
    assert found["length_mean"] == pytest.approx(statistics.mean(lengths))
    assert found["length_median"] == statistics.median(lengths)
    assert found["length_p90"] == pytest.approx(statistics.quantiles(lengths, n=10, method="inclusive")[-1])
    assert found["empty_fraction"] == pytest.approx(2 / 11)
    assert found["truncated_fraction"] == pytest.approx(3 / 11)


def test_kl_estimate_is_the_mean_log_ratio():
    kl, per_token = stats.kl_estimate([-1.0, -2.0, -6.0], [-2.0, -2.5, -5.0], [2, 1, 4])
    assert kl == pytest.approx((1.0 + 0.5 - 1.0) / 3)
    assert per_token == pytest.approx((0.5 + 0.5 - 0.25) / 3)
