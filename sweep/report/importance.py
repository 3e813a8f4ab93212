"""Hyperparameter importance per method: Optuna's PED-ANOVA evaluator over each group's complete trials.

PED-ANOVA (Watanabe et al., 2023; Optuna's default evaluator, no extra dependency) measures how much
each hyperparameter's distribution among the top trials differs from its distribution among all of
them. The top is the best `target_quantile` of the group's complete trials, set so at least
`TOP_TRIALS` are in it (a quarter of 20 trials, 10% once there are 50 or more). A group is skipped,
with its reason, below `MIN_TRIALS` complete trials (the top would be more than a quarter of them) or
when no hyperparameter varies across them; only hyperparameters every complete trial of the group
has (not one branch of a conditional space) are compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.io import write_text
from sweep.report.canvas import FigureFile, PlotData, figure, legend, param_label, render
from sweep.report.load import param_columns
from sweep.spec.methods import HYPERPARAMETERS
from sweep.spec.plan import axis_scale

MIN_TRIALS = 20
TOP_TRIALS = 5
COLUMNS = ("group", "param", "importance", "divergence", "n_trials", "target_quantile")


@dataclass(frozen=True)
class Importances:
    """Importances (a row per group and hyperparameter) and, per skipped group, why it was skipped."""

    table: pd.DataFrame
    skipped: dict[str, str]


def target_quantile(n: int) -> float:
    """The share of trials counted as the top: at least TOP_TRIALS of n and 10%, at most a quarter."""
    return float(min(0.25, max(0.1, TOP_TRIALS / n)))


def _divergences(trials: pd.DataFrame, columns: list[str], maximize: bool) -> tuple[dict[str, float], float]:
    """PED-ANOVA's raw (unnormalized) importance of each column for the objective, and the quantile used."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.importance import PedAnovaImportanceEvaluator

    names = {column: column.removeprefix("param.") for column in columns}
    distributions = {}
    for column, name in names.items():
        low, high, log = axis_scale(name, trials[column].tolist())
        integer = HYPERPARAMETERS[name].integer if name in HYPERPARAMETERS else False
        kind = IntDistribution if integer else FloatDistribution
        distributions[name] = kind(int(low), int(high), log=log) if integer else kind(low, high, log=log)
    study = optuna.create_study(direction="maximize" if maximize else "minimize")
    for row in trials.to_dict("records"):
        params = {
            name: int(row[column]) if isinstance(distributions[name], IntDistribution) else float(row[column])
            for column, name in names.items()
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=distributions, value=float(row["objective"])
            )
        )
    quantile = target_quantile(len(trials))
    evaluator = PedAnovaImportanceEvaluator(target_quantile=quantile)
    raw = evaluator.evaluate(study)
    return {column: float(raw[name]) for column, name in names.items()}, quantile


def param_importances(data: PlotData) -> Importances:
    """PED-ANOVA importances of the swept hyperparameters per report group (method, and variant/sweep)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = data.trials
    complete = (trials["state"] == "complete") & np.isfinite(
        pd.to_numeric(trials["objective"], errors="coerce")
    )
    rows, skipped = [], {}
    for group in data.groups:
        chosen = trials[complete & (data.labels == group)]
        swept = [c for c in param_columns(chosen) if chosen[c].notna().all() and chosen[c].nunique() > 1]
        if len(chosen) < MIN_TRIALS:
            skipped[group] = f"{len(chosen)} complete trials; importance needs at least {MIN_TRIALS}"
            continue
        if not swept:
            skipped[group] = "no hyperparameter varies across its complete trials"
            continue
        divergences, quantile = _divergences(chosen, swept, data.objective.maximize)
        total = sum(divergences.values())
        for column, divergence in divergences.items():
            share = divergence / total if total > 0 else 0.0
            rows.append((group, column.removeprefix("param."), share, divergence, len(chosen), quantile))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return Importances(table.sort_values(["group", "importance"], ascending=[True, False]), skipped)


def importance_figure(importances: Importances):
    """A figure builder: horizontal bars of each group's importance shares (None when no group qualifies)."""

    def build(data: PlotData):
        table = importances.table
        if table.empty:
            return None
        groups = list(dict.fromkeys(table["group"]))
        params = list(dict.fromkeys(table["param"]))
        counts = table.groupby("group")["n_trials"].first()
        labels = [f"{group} (n={int(counts[group])})" for group in groups]
        ticks = [param_label(f"param.{p}") for p in params]
        height = 0.8 / len(groups)
        fig, ax = figure(4.0, max(1.2, 0.3 * len(params) * len(groups)), labels)
        fig.subplots_adjust(left=(0.2 + 0.09 * max(map(len, ticks))) / fig.get_figwidth())
        for index, (group, label) in enumerate(zip(groups, labels, strict=True)):
            rows = table[table["group"] == group]
            positions = [params.index(p) + (index - (len(groups) - 1) / 2) * height for p in rows["param"]]
            ax.barh(positions, rows["importance"], height=height, color=data.color(group), label=label)
        ax.set_yticks(range(len(params)), ticks)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("importance (PED-ANOVA share)")
        legend(ax, "method")
        caption = (
            f"Which hyperparameter moves {data.objective.metric} within each method: PED-ANOVA importance of "
            f"each swept hyperparameter for reaching the method's top trials (shares sum to 1 per method)."
        )
        return fig, caption

    return build


def importance_html(importances: Importances) -> str:
    """The importance table and the skipped groups with their reasons, as an HTML fragment."""
    from html import escape

    parts = []
    if not importances.table.empty:
        parts.append(importances.table.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0))
    parts += [
        f"<p>{escape(group)}: skipped ({escape(reason)}).</p>"
        for group, reason in importances.skipped.items()
    ]
    return "".join(parts) or "<p>No method has trials to compare.</p>"


def write_importance(data: PlotData, report_dir: Path) -> tuple[list[FigureFile], str]:
    """Write importance.csv and figures/param_importance.*; return the figure (if drawn) and HTML section."""
    importances = param_importances(data)
    write_text(report_dir / "importance.csv", importances.table.to_csv(index=False))
    drawn = render(data, "param_importance", importance_figure(importances), report_dir / "figures")
    return [drawn] if drawn is not None else [], importance_html(importances)
