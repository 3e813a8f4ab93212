"""The estimators of an evaluation: win rates, bootstrap intervals, length-controlled win rate, KL, lengths.

Pure numpy. Scores are arrays of shape (prompts, samples); a 1-D array is one sample per prompt.

- Outcome of a policy response against a baseline response to the same prompt: 1 if its score is higher,
  1/2 on a tie, 0 if lower. With several samples per prompt, every policy sample meets every baseline
  sample of that prompt and the outcomes are averaged per prompt first, so each prompt weighs the same.
- Win rate: the mean over prompts of the per-prompt outcome, an estimate of P(policy beats baseline)
  with ties counted as half a win.
- Bootstrap interval: resample prompts with replacement, recompute the mean, take the percentiles.
- Length-controlled win rate (the idea of AlpacaEval 2): fit P(win) = sigmoid(a + b·z) with
  z = Δlength / sd(Δlength) (scaled, not centred, so z = 0 means equal length) by maximum likelihood with
  fractional targets (ties = 0.5) and a tiny L2 ridge; report sigmoid(a), the win rate at equal length.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

EVAL_SEED = 0


def judge_metrics(
    scores: np.ndarray,
    sft_scores: np.ndarray,
    lengths: np.ndarray,
    sft_lengths: np.ndarray,
    reference_scores: np.ndarray | None,
    n_resamples: int,
) -> dict:
    """One judge's metrics from (prompts, samples) arrays of scores and lengths."""
    vs_sft = per_prompt_win_rates(scores, sft_scores)
    metrics = {
        "judge_score_mean": float(scores.mean()),
        "judge_score_std": float(scores.std(ddof=1)) if scores.size > 1 else 0.0,
        "win_rate_vs_sft": float(vs_sft.mean()),
        "win_rate_vs_sft_ci": list(bootstrap_ci(vs_sft, n_resamples, EVAL_SEED)),
        "lc_win_rate_vs_sft": length_controlled_win_rate(
            pairwise_outcomes(scores, sft_scores), pairwise_differences(lengths, sft_lengths)
        ),
    }
    if reference_scores is not None:
        vs_chosen = per_prompt_win_rates(scores, reference_scores)
        metrics["win_rate_vs_chosen"] = float(vs_chosen.mean())
        metrics["win_rate_vs_chosen_ci"] = list(bootstrap_ci(vs_chosen, n_resamples, EVAL_SEED))
    return metrics


REPEAT_N = 3


def repeated_ngram_fraction(tokens: Sequence, n: int = REPEAT_N) -> float:
    """Share of a response's n-grams that repeat an earlier one (0 without any n-gram): loops score high."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def response_metrics(
    lengths: Sequence[int], texts: Sequence[str], ended: Sequence[bool], tokens: Sequence[Sequence[int]] = ()
) -> dict:
    """Length statistics (tokens), the mean number of whitespace-separated words, and (given the responses'
    token ids up to their stop) the mean share of repeated 3-grams."""
    words = [len(text.split()) for text in texts]
    metrics = {**length_stats(lengths, ended), "words_mean": float(np.mean(words))}
    if tokens:
        metrics["repeated_3gram_fraction"] = float(np.mean([repeated_ngram_fraction(t) for t in tokens]))
    return metrics


RIDGE = 1e-6


def _by_prompt(values: Sequence) -> np.ndarray:
    """Values as a float array of shape (prompts, samples)."""
    array = np.asarray(values, dtype=float)
    return array[:, None] if array.ndim == 1 else array


def pairwise_outcomes(policy_scores: Sequence, baseline_scores: Sequence) -> np.ndarray:
    """Outcome (1 win, 0.5 tie, 0 loss) of every policy sample against every baseline sample of its prompt.

    Shape (prompts, policy samples, baseline samples).
    """
    policy, baseline = _by_prompt(policy_scores), _by_prompt(baseline_scores)
    if len(policy) != len(baseline):
        raise ValueError(f"{len(policy)} policy prompts against {len(baseline)} baseline prompts")
    difference = policy[:, :, None] - baseline[:, None, :]
    return 0.5 * (np.sign(difference) + 1.0)


def pairwise_differences(policy_values: Sequence, baseline_values: Sequence) -> np.ndarray:
    """policy − baseline for the same pairs as `pairwise_outcomes` (e.g. length differences)."""
    policy, baseline = _by_prompt(policy_values), _by_prompt(baseline_values)
    return policy[:, :, None] - baseline[:, None, :]


def per_prompt_win_rates(policy_scores: Sequence, baseline_scores: Sequence) -> np.ndarray:
    """Each prompt's mean outcome over its sample pairs: a value in [0, 1] per prompt."""
    return pairwise_outcomes(policy_scores, baseline_scores).mean(axis=(1, 2))


def win_rate(policy_scores: Sequence, baseline_scores: Sequence) -> float:
    """P(policy response scores higher than the baseline's), ties as 1/2, prompts weighted equally."""
    return float(per_prompt_win_rates(policy_scores, baseline_scores).mean())


def bootstrap_ci(
    per_prompt_values: Sequence[float], n_resamples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over prompts (prompts resampled with replacement)."""
    values = np.asarray(per_prompt_values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2**22 // values.size)
    for start in range(0, n_resamples, chunk):
        count = min(chunk, n_resamples - start)
        means[start : start + count] = values[rng.integers(0, values.size, size=(count, values.size))].mean(
            axis=1
        )
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return (float(low), float(high))


def _logistic_loss(weights: np.ndarray, features: np.ndarray, targets: np.ndarray, ridge: float) -> float:
    logits = features @ weights
    return float(np.mean(np.logaddexp(0.0, logits) - targets * logits) + 0.5 * ridge * weights @ weights)


def fit_logistic(
    features: np.ndarray, targets: np.ndarray, ridge: float = RIDGE, max_iter: int = 100
) -> np.ndarray:
    """Weights minimising mean cross-entropy (fractional targets allowed) + ridge/2·|w|², by damped Newton."""
    weights = np.zeros(features.shape[1])
    for _ in range(max_iter):
        probabilities = 1.0 / (1.0 + np.exp(-(features @ weights)))
        gradient = features.T @ (probabilities - targets) / len(targets) + ridge * weights
        curvature = probabilities * (1.0 - probabilities)
        hessian = (features.T * curvature) @ features / len(targets) + ridge * np.eye(features.shape[1])
        step = np.linalg.solve(hessian, gradient)
        loss, size = _logistic_loss(weights, features, targets, ridge), 1.0
        while size > 1e-8 and (
            _logistic_loss(weights - size * step, features, targets, ridge)
            > loss - 1e-4 * size * gradient @ step
        ):
            size /= 2.0
        weights = weights - size * step
        if np.max(np.abs(size * step)) < 1e-10:
            break
    return weights


def length_controlled_win_rate(outcomes: Sequence[float], length_diff: Sequence[float]) -> float:
    """Win rate at equal length: sigmoid(intercept) of a logistic fit of outcome on Δlength / sd(Δlength).

    `outcomes` are pairwise outcomes (1, 0.5, 0) and `length_diff` the policy − baseline lengths of the
    same pairs. NaN when every pair has the same nonzero length difference (length and quality confounded).
    """
    targets = np.asarray(outcomes, dtype=float).ravel()
    diff = np.asarray(length_diff, dtype=float).ravel()
    if targets.size == 0:
        return math.nan
    scale = diff.std()
    if scale > 0:
        features = np.column_stack([np.ones_like(diff), diff / scale])
    elif np.all(diff == 0):
        features = np.ones((diff.size, 1))
    else:
        return math.nan
    intercept = fit_logistic(features, targets)[0]
    return float(1.0 / (1.0 + math.exp(-intercept)))


def length_stats(lengths: Sequence[int], ended: Sequence[bool]) -> dict[str, float]:
    """Mean, median, 90th percentile (linear interpolation) of response lengths in tokens, and the fractions
    of empty responses (0 tokens) and of truncated ones (no stop token before max_new_tokens: not `ended`)."""
    values = np.asarray(lengths, dtype=float)
    if values.size == 0:
        return dict.fromkeys(
            ("length_mean", "length_median", "length_p90", "empty_fraction", "truncated_fraction"), math.nan
        )
    return {
        "length_mean": float(values.mean()),
        "length_median": float(np.median(values)),
        "length_p90": float(np.percentile(values, 90)),
        "empty_fraction": float(np.mean(values == 0)),
        "truncated_fraction": float(np.mean(~np.asarray(ended, dtype=bool))),
    }


def kl_estimate(
    logp_policy: Sequence[float], logp_reference: Sequence[float], tokens: Sequence[int]
) -> tuple[float, float]:
    """Monte-Carlo KL(π‖π_ref) from responses sampled from π: the mean of log π(y) − log π_ref(y), and the
    mean of that difference divided by each response's scored tokens (EOS included)."""
    difference = np.asarray(logp_policy, dtype=float) - np.asarray(logp_reference, dtype=float)
    if difference.size == 0:
        return (math.nan, math.nan)
    return (float(difference.mean()), float((difference / np.asarray(tokens, dtype=float)).mean()))


def standard_error(values: Sequence[float], groups: Sequence[int]) -> float:
    """Standard error of the mean of `values` with the groups (prompts) as independent units: the sd (n−1)
    of the group means over √groups; NaN with fewer than two groups."""
    values, groups = np.asarray(values, dtype=float), np.asarray(groups)
    labels, index = np.unique(groups, return_inverse=True)
    if len(labels) < 2:
        return math.nan
    means = np.bincount(index, weights=values) / np.bincount(index)
    return float(means.std(ddof=1) / math.sqrt(len(labels)))


def kl_metrics(
    kl_exact: Sequence[float],
    logp_policy: Sequence[float],
    logp_reference: Sequence[float],
    tokens: Sequence[int],
    prompts: Sequence[int],
) -> dict[str, float]:
    """KL(π‖π_ref) per response and per token from samples of π: the exact next-token KL summed along each
    sample (`kl_to_sft`), and the log-ratio estimate (`kl_to_sft_mc`), each with its standard error over
    prompts (`_se`)."""
    exact = np.asarray(kl_exact, dtype=float)
    ratio = np.asarray(logp_policy, dtype=float) - np.asarray(logp_reference, dtype=float)
    count = np.asarray(tokens, dtype=float)
    mc, mc_per_token = kl_estimate(logp_policy, logp_reference, tokens)
    parts = {"": exact, "_mc": ratio}
    metrics = {}
    for suffix, values in parts.items():
        for name, per in (("kl_to_sft", values), ("kl_to_sft_per_token", values / count)):
            metrics[name + suffix] = float(per.mean()) if per.size else math.nan
            metrics[name + suffix + "_se"] = standard_error(per, prompts)
    metrics["kl_to_sft_mc"], metrics["kl_to_sft_per_token_mc"] = mc, mc_per_token
    return metrics


def selection_mask(count: int, fraction: float, seed: int) -> np.ndarray:
    """True for the prompts of the selection part: the round(fraction·count) prompts (at least one) with the
    smallest seeded hash of their index; the others are the test part."""
    keys = [hashlib.sha256(f"{seed}:{index}".encode()).digest() for index in range(count)]
    chosen = sorted(range(count), key=keys.__getitem__)[: min(count, max(1, round(fraction * count)))]
    mask = np.zeros(count, dtype=bool)
    mask[chosen] = True
    return mask
