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
TRUNCATION_FLAG = 0.1
SPAN_WARNING = 2.0
SELECTED, HELD_OUT = "objective_selection", "objective_test"


@dataclass(frozen=True)
class Objective:
    """The metric the report ranks trials by, its direction, the value a penalized trial counts as, and
    whether failed trials (infrastructure: exceptions, OOM, dead workers) are penalized like diverged ones."""

    metric: str
    maximize: bool
    worst: float
    failures_as_worst: bool = False

    @property
    def penalized_states(self) -> tuple[str, ...]:
        """The states that enter the distributions as the worst value."""
        return ("failed", "diverged") if self.failures_as_worst else ("diverged",)

    @property
    def rule(self) -> str:
        """The counting rule in one sentence, for the report."""
        failed = (
            "failed trials (exception, out of memory, dead worker) too, as asked with --failures-as-worst"
            if self.failures_as_worst
            else "failed trials (exception, out of memory, dead worker) are counted and listed but left out"
        )
        return (
            f"Diverged trials (NaN/inf loss) enter every distribution as the worst value, {self.worst:.4g}; "
            f"{failed}; pruned, running and interrupted trials are counted but left out."
        )

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
    sweeps: list[SweepInfo], trials: pd.DataFrame, metric: str | None, failures_as_worst: bool = False
) -> tuple[pd.DataFrame, Objective]:
    """Pick the objective (sweep.json's, or `metric`); return the trials with its value over all prompts in
    "objective" (and over the selection and test parts, where recorded, in SELECTED and HELD_OUT), and it."""
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
            values = pd.to_numeric(trials[metric], errors="coerce").fillna(values)
    else:
        known = metric_columns(trials)
        if (trials["state"] != RUNNING).any() and metric not in known:
            close = difflib.get_close_matches(metric, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known metrics: {', '.join(sorted(known))}"
            raise UserError(f"unknown metric '{metric}' ({hint})")
        maximize = sweep_maximize if declared == {metric} else metrics.maximized(metric)
        values = trials[metric].astype(float) if metric in trials.columns else pd.Series(np.nan, trials.index)
    parts = {
        column: pd.to_numeric(trials[f"{part}.{metric}"], errors="coerce")
        if f"{part}.{metric}" in trials.columns
        else pd.Series(np.nan, trials.index)
        for column, part in ((SELECTED, "selection"), (HELD_OUT, "test"))
    }
    trials = trials.assign(objective=values, **parts)
    complete = values.where(trials["state"] == "complete")
    return trials, Objective(metric, maximize, _worst_value(metric, maximize, complete), failures_as_worst)


def scored_values(trials: pd.DataFrame, objective: Objective) -> pd.Series:
    """Each trial's value in the robustness distribution; NaN for trials outside it.

    Complete trials count with their objective (over all prompts); diverged trials (and failed ones with
    `failures_as_worst`) with the worst value; pruned, running, interrupted and (by default) failed trials
    are not in the distribution, whatever the metric.
    """
    state = trials["state"]
    values = trials["objective"].where(state == "complete")
    return values.mask(state.isin(objective.penalized_states), objective.worst)


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
    row.update(_held_out(group, objective))
    complete = group[group["state"] == "complete"]
    for column, name in (("length_mean", "mean_length_tokens"), ("kl_to_sft", "mean_kl_to_sft")):
        row[name] = complete[column].mean() if column in complete.columns else np.nan
    truncated = complete["truncated_fraction"] if "truncated_fraction" in complete.columns else pd.Series()
    row[f"n_truncated_over_{TRUNCATION_FLAG}"] = int((truncated > TRUNCATION_FLAG).sum())
    best = best_row(group, objective)
    if best is None:
        row["best_trial"] = row["best_params"] = None
    else:
        top = group.loc[best]
        row["best_trial"] = top["trial_id"]
        params = [c for c in param_columns(group) if group[c].notna().any()]
        row["best_params"] = _best_params(top, params)
    row.update(grid_spans(group))
    return row


def best_row(trials: pd.DataFrame, objective: Objective):
    """The index of the best complete trial, as the sweep ranks it (`sweep.spec.metrics.ranked`: picked on
    the selection part, all prompts for a trial recorded without it, ties to the smaller id), or None."""
    complete = trials[trials["state"] == "complete"]
    picking = complete["objective"]
    if SELECTED in complete:
        picking = complete[SELECTED].fillna(picking)
    keys = list(zip(complete["trial_id"].astype(str), complete.index))
    order = metrics.ranked(zip(keys, picking.tolist()), objective.maximize)
    return order[0][1] if order else None


def best_trial_line(trials: pd.DataFrame, objective: Objective) -> str:
    """One sentence naming the report's best trial (the sweep's ranking) and its held-out value, or ""."""
    index = best_row(trials, objective)
    if index is None:
        return ""
    top = trials.loc[index]
    where = f" of {top['sweep']}" if trials["sweep"].nunique() > 1 else ""
    text = f"best trial: {top['trial_id']}{where} ({top['method']})"
    if pd.notna(top.get(HELD_OUT)) and pd.notna(top.get(SELECTED)):
        return (
            f"{text}, {objective.metric} {top[HELD_OUT]:.4f} on the held-out part "
            f"(picked on the selection part: {top[SELECTED]:.4f})"
        )
    return f"{text}, {objective.metric} {top['objective']:.4f}"


def held_out_best_of_k(
    selection: Sequence[float], test: Sequence[float], ks: Sequence[int], maximize: bool = True
) -> np.ndarray:
    """Expected test-part value of the trial the selection part picks among k drawn at random without
    replacement: Σ_i test_(i) · C(i−1, k−1) / C(N, k), trials in the sweep's ranking (`metrics.ranked`) by
    their selection value, worst first."""
    best_first = metrics.ranked(enumerate(np.asarray(selection, dtype=float).tolist()), maximize)
    held = np.asarray(test, dtype=float)[best_first[::-1]]
    ks = np.asarray(ks, dtype=int)
    out = np.full(len(ks), np.nan)
    inside = (ks >= 1) & (ks <= len(held))
    if inside.any():
        out[inside] = held @ max_of_k_weights(len(held), ks[inside])
    return out


def _held_out(group: pd.DataFrame, objective: Objective) -> dict:
    """The best trial as the selection part picks it, in-sample and on the test part, and the held-out
    expected best of k (complete trials with both parts recorded)."""
    names = ["best_selected_in_sample", "best_selected_test", *(f"expected_best_k{k}_test" for k in BUDGETS)]
    if SELECTED not in group:
        return dict.fromkeys(names, np.nan)
    both = group[(group["state"] == "complete") & group[SELECTED].notna() & group[HELD_OUT].notna()]
    top = best_row(group, objective)
    if both.empty or top is None:
        return dict.fromkeys(names, np.nan)
    budget = held_out_best_of_k(both[SELECTED], both[HELD_OUT], BUDGETS, objective.maximize)
    return dict(zip(names, [group.loc[top, "objective"], group.loc[top, HELD_OUT], *budget]))


def grid_spans(group: pd.DataFrame) -> dict:
    """Each positive swept hyperparameter's span in the group: max/min (how wide its grid is, log scale)."""
    spans = {}
    for column in param_columns(group):
        values = pd.to_numeric(group[column], errors="coerce").dropna()
        if len(values) and (values > 0).all() and column != "param.seed":
            spans["span." + column.removeprefix("param.")] = float(values.max() / values.min())
    return spans


def grid_warnings(robustness: pd.DataFrame) -> list[str]:
    """A warning when methods compared side by side differ in learning-rate span by over SPAN_WARNING×."""
    column = "span.learning_rate"
    if column not in robustness or robustness[column].notna().sum() < 2:
        return []
    labels = [c for c in ("sweep", "method", "variant") if c in robustness]
    names = robustness[labels].astype(str).agg(" · ".join, axis=1)
    spans = robustness[column].set_axis(names).dropna()
    widest, narrowest = spans.idxmax(), spans.idxmin()
    if spans.max() / spans.min() <= SPAN_WARNING:
        return []
    return [
        f"learning-rate grids differ: {widest} spans {spans.max():.3g}× and {narrowest} {spans.min():.3g}× "
        f"(more than {SPAN_WARNING:g}× apart); IQR, “within {NEAR_BEST}” and expected best of k depend on "
        "grid width, so compare these methods on equal spans"
    ]


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
