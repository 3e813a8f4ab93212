"""Robustness statistics: the objective's distribution per method and the expected best of k trials."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweep.errors import UserError
from sweep.report.load import SweepInfo, metric_columns, param_columns
from sweep.results import RUNNING
from sweep.results import TRIAL_STATES as STATES
from sweep.spec import metrics

NEAR_BEST = 0.05
BUDGETS = (1, 3, 5)
PENALIZED_STATES = ("failed", "diverged")


@dataclass(frozen=True)
class Objective:
    """The metric the report ranks trials by, its direction, and the value a failed trial counts as."""

    metric: str
    maximize: bool
    worst: float

    @property
    def direction(self) -> str:
        """Either "maximize" or "minimize"."""
        return "maximize" if self.maximize else "minimize"

    def best(self, values: pd.Series) -> float:
        """The best of `values` in this objective's direction."""
        return values.max() if self.maximize else values.min()


def _worst_value(metric: str, maximize: bool, observed: pd.Series) -> float:
    """What a failed trial scores: its range's worst end for a bounded metric (a win rate: 0), else the
    worst value any trial reached."""
    found = metrics.metric(metric)
    bounded = found.failure_value(maximize) if found is not None else None
    if bounded is not None:
        return bounded
    observed = observed.dropna()
    if observed.empty:
        return float("nan")
    return float(observed.min() if maximize else observed.max())


def resolve_objective(
    sweeps: list[SweepInfo], trials: pd.DataFrame, metric: str | None
) -> tuple[pd.DataFrame, Objective]:
    """Pick the objective (sweep.json's, or `metric`); return the trials with it in "objective", and it."""
    declared = {(s.meta.get("objective") or {}).get("metric") for s in sweeps}
    sweep_maximize = (sweeps[0].meta.get("objective") or {}).get("direction", "maximize") == "maximize"
    if metric is None:
        if None in declared:
            raise UserError("sweep.json has no objective.metric; pick one with --metric")
        if len(declared) > 1:
            names = ", ".join(sorted(declared))
            raise UserError(f"the sweeps optimise different objectives ({names}); pick one with --metric")
        metric = declared.pop()
        maximize = sweep_maximize
        values = trials["objective"]
        if metric in trials.columns:
            values = values.fillna(pd.to_numeric(trials[metric], errors="coerce"))
    else:
        known = metric_columns(trials)
        if (trials["state"] != RUNNING).any() and metric not in known:
            close = difflib.get_close_matches(metric, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known metrics: {', '.join(sorted(known))}"
            raise UserError(f"unknown metric '{metric}' ({hint})")
        maximize = sweep_maximize if declared == {metric} else metrics.maximized(metric)
        values = trials[metric].astype(float) if metric in trials.columns else pd.Series(np.nan, trials.index)
    trials = trials.assign(objective=values)
    return trials, Objective(metric, maximize, _worst_value(metric, maximize, values))


def scored_values(trials: pd.DataFrame, objective: Objective) -> pd.Series:
    """Each trial's value in the robustness distribution; NaN for trials outside it.

    Complete trials count with their objective; failed and diverged trials with the worst value; pruned
    trials with the objective they last reported, else the worst value; running and interrupted trials
    are not in the distribution.
    """
    state = trials["state"]
    values = trials["objective"].where(state.isin(["complete", "pruned"]))
    penalized = state.isin(PENALIZED_STATES) | ((state == "pruned") & values.isna())
    return values.mask(penalized, objective.worst)


def group_columns(trials: pd.DataFrame) -> list[str]:
    """Rows of the robustness table: per method, and per sweep / data variant when there are several."""
    columns = ["method"]
    if trials["sweep"].nunique() > 1:
        columns.insert(0, "sweep")
    if trials["variant"].notna().any():
        columns.append("variant")
    return columns


def group_labels(trials: pd.DataFrame, columns: list[str]) -> pd.Series:
    """A short display label per trial for its robustness group: "method · variant (sweep)"."""
    labels = trials["method"].astype(str)
    if "variant" in columns:
        labels = labels + " · " + trials["variant"].fillna("default").astype(str)
    if "sweep" in columns:
        labels = labels + " (" + trials["sweep"].astype(str) + ")"
    return labels


def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])


def max_of_k_weights(n: int, ks: Sequence[int]) -> np.ndarray:
    """w[i, j] = P(the maximum of k_j of n values drawn without replacement is the (i+1)-th smallest).

    P(max ≤ v_(i)) = C(i, k) / C(n, k), so w = C(i, k)/C(n, k) − C(i−1, k)/C(n, k) = C(i−1, k−1)/C(n, k);
    computed through log-factorials so that n in the thousands does not overflow.
    """
    ks = np.asarray(ks, dtype=int)
    log_fact = _log_factorials(n)
    i = np.arange(n + 1)[:, None]
    k = ks[None, :]
    valid = i >= k
    log_cdf = log_fact[i] - log_fact[np.where(valid, i - k, 0)] - log_fact[n] + log_fact[n - k]
    cdf = np.where(valid, np.exp(np.where(valid, log_cdf, 0.0)), 0.0)
    return np.diff(cdf, axis=0)


def expected_best_of_k(values: Sequence[float], ks: Sequence[int], maximize: bool = True) -> np.ndarray:
    """Expected best value of k trials drawn at random without replacement from `values`, for each k.

    With v_(1) ≤ … ≤ v_(N) sorted, E[max of k] = Σ_i v_(i) · C(i−1, k−1) / C(N, k): the exact mean of the
    maximum over all C(N, k) subsets (an unbiased U-statistic for the best of k fresh trials). Dodge et
    al. (2019) sample with replacement, Σ_i v_(i) · ((i/N)^k − ((i−1)/N)^k); the two agree at k = 1 (the
    mean) but only this one reaches the observed best exactly at k = N. NaN for k outside 1…N.
    """
    sign = 1.0 if maximize else -1.0
    data = np.sort(sign * np.asarray(values, dtype=float))
    ks = np.asarray(ks, dtype=int)
    n = len(data)
    out = np.full(len(ks), np.nan)
    inside = (ks >= 1) & (ks <= n)
    if inside.any():
        out[inside] = sign * (data @ max_of_k_weights(n, ks[inside]))
    return out


def expected_best_band(
    values: Sequence[float],
    ks: Sequence[int],
    maximize: bool = True,
    resamples: int = 200,
    quantiles: tuple[float, float] = (5.0, 95.0),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap band of the expected-best-of-k curve: resample the N values with replacement, recompute."""
    sign = 1.0 if maximize else -1.0
    data = sign * np.asarray(values, dtype=float)
    ks = np.asarray(ks, dtype=int)
    n = len(data)
    rng = np.random.default_rng(seed)
    samples = np.sort(data[rng.integers(0, n, size=(resamples, n))], axis=1)
    curves = sign * (samples @ max_of_k_weights(n, ks))
    low, high = np.percentile(curves, quantiles, axis=0)
    return (low, high) if maximize else (high, low)


def _format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _best_params(row: pd.Series, params: list[str]) -> str:
    """The trial's hyperparameters as "beta=0.1 learning_rate=1e-06"."""
    return " ".join(f"{c.removeprefix('param.')}={_format_value(row[c])}" for c in params if pd.notna(row[c]))


def _group_row(group: pd.DataFrame, scored: pd.Series, objective: Objective, overall_best: float) -> dict:
    values = scored.dropna()
    counts = group["state"].value_counts()
    row = {"n_trials": len(group), **{f"n_{state}": int(counts.get(state, 0)) for state in STATES}}
    row["n_scored"] = len(values)
    if values.empty:
        best = median = mean = worst = iqr = near_method = near_overall = np.nan
        budget = np.full(len(BUDGETS), np.nan)
    else:
        sign = 1.0 if objective.maximize else -1.0
        best, worst = objective.best(values), (values.min() if objective.maximize else values.max())
        q25, median, q75 = np.percentile(values, [25, 50, 75])
        mean, iqr = values.mean(), q75 - q25
        near_method = float((sign * (best - values) <= NEAR_BEST + 1e-9).mean())
        near_overall = float((sign * (overall_best - values) <= NEAR_BEST + 1e-9).mean())
        budget = expected_best_of_k(values.to_numpy(), BUDGETS, objective.maximize)
    row.update(best=best, median=median, mean=mean, worst=worst, iqr=iqr)
    row[f"frac_within_{NEAR_BEST}_of_method_best"] = near_method
    row[f"frac_within_{NEAR_BEST}_of_overall_best"] = near_overall
    row.update({f"expected_best_k{k}": value for k, value in zip(BUDGETS, budget)})
    complete = group[group["state"] == "complete"]
    for column, name in (("length_mean", "mean_length_tokens"), ("kl_to_sft", "mean_kl_to_sft")):
        row[name] = complete[column].mean() if column in complete.columns else np.nan
    measured = group["objective"].where(group["state"].isin(["complete", "pruned"])).dropna()
    if measured.empty:
        row["best_trial"] = row["best_params"] = None
    else:
        top = group.loc[measured.idxmax() if objective.maximize else measured.idxmin()]
        row["best_trial"] = top["trial_id"]
        params = [c for c in param_columns(group) if group[c].notna().any()]
        row["best_params"] = _best_params(top, params)
    return row


def robustness_table(trials: pd.DataFrame, objective: Objective, columns: list[str]) -> pd.DataFrame:
    """One row per group (method, and sweep/variant when several): trial counts, spread and budget curve."""
    scored = scored_values(trials, objective)
    overall_best = objective.best(scored.dropna()) if scored.notna().any() else np.nan
    keys = trials[columns].fillna("default")
    rows = []
    for key, group in trials.groupby([keys[c] for c in columns], sort=True):
        row = dict(zip(columns, key))
        row.update(_group_row(group, scored.loc[group.index], objective, overall_best))
        rows.append(row)
    return pd.DataFrame(rows)
