"""`posweep report`: robustness tables, figures and a self-contained HTML page from sweep folders.

Output folder (``RESULTS_DIR/report/`` or ``--out``):

- ``trials.csv``: one row per trial (hyperparameters as ``param.<name>``, metrics, ``time_s.*``);
- ``robustness.csv``: one row per method (and sweep / data variant when there are several);
- ``importance.csv``: per method, each swept hyperparameter's PED-ANOVA importance (sweep.report.importance);
- ``figures/<name>.png`` and ``.svg``: one per question, skipped when the sweep has no data for it;
- ``index.html``: everything above in one file that opens from disk without a network.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sweep.io import write_text
from sweep.report.canvas import PlotData
from sweep.report.figures import draw_figures
from sweep.report.html import render_html
from sweep.report.importance import write_importance
from sweep.report.load import (
    left_out_lines,
    load_sweeps,
    load_trials,
    read_trials,
    sft_length,
    sweep_progress,
)
from sweep.report.robustness import (
    BUDGETS,
    Objective,
    best_trial_line,
    expected_best_of_k,
    grid_warnings,
    group_columns,
    group_labels,
    resolve_objective,
    robustness_table,
    scored_values,
)
from sweep.report.timing import stage_means

__all__ = [
    "Objective",
    "build_report",
    "expected_best_of_k",
    "load_sweeps",
    "load_trials",
    "read_trials",
    "sweep_progress",
]


def _print_table(
    robustness: pd.DataFrame, objective: Objective, console, warnings: list[str], best: str
) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(Console().width, 140))
    table = Table(
        title=f"{objective.metric} ({objective.direction}) per method",
        caption="done: finished/all trials; E@k: expected best of k random tries; held-out: the test-part "
        "value of the trial the selection part picks\n" + objective.rule,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    labels = [c for c in ("sweep", "method", "variant") if c in robustness.columns]
    numbers = {"best": "best", "median": "median", "mean": "mean", "iqr": "IQR"}
    numbers.update({f"expected_best_k{k}": f"E@{k}" for k in BUDGETS if k > 1})
    numbers.update({"best_selected_test": "best held-out", "expected_best_k3_test": "E@3 held-out"})
    for column in labels:
        table.add_column(column, no_wrap=True)
    for header in ("done", "div/fail/prune", *numbers.values()):
        table.add_column(header, justify="right", no_wrap=True)
    for row in robustness.to_dict("records"):
        done = f"{row['n_trials'] - row['n_running']}/{row['n_trials']}"
        counts = "/".join(str(row[f"n_{state}"]) for state in ("diverged", "failed", "pruned"))
        stats = ["–" if pd.isna(row[c]) else f"{row[c]:.3g}" for c in numbers]
        table.add_row(*(str(row[c]) for c in labels), done, counts, *stats)
    console.print(table)
    if best:
        console.print(best)
    for warning in warnings:
        console.print(f"warning: {warning}")


def build_report(
    sweep_dirs: list[Path],
    out: Path | None = None,
    metric: str | None = None,
    console=None,
    failures_as_worst: bool = False,
    all_trials: bool = False,
) -> Path:
    """Write trials.csv, robustness.csv, figures and index.html for the sweeps (the trials of each one's
    current plan, or all of them with `all_trials`); return the report folder."""
    sweeps = load_sweeps(sweep_dirs, all_trials)
    trials, objective = resolve_objective(sweeps, read_trials(sweeps), metric, failures_as_worst)
    columns = group_columns(trials)
    robustness = robustness_table(trials, objective, columns)
    warnings = left_out_lines(sweeps) + grid_warnings(robustness)
    report_dir = Path(out) if out is not None else sweeps[0].path / "report"
    write_text(report_dir / "trials.csv", trials.to_csv(index=False))
    write_text(report_dir / "robustness.csv", robustness.to_csv(index=False))
    references = {s.name: length for s in sweeps if (length := sft_length(s)) is not None}
    data = PlotData(
        trials, objective, group_labels(trials, columns), scored_values(trials, objective), references
    )
    figures = draw_figures(data, report_dir / "figures")
    importance_figures, importance = write_importance(data, report_dir)
    best = best_trial_line(trials, objective)
    page = render_html(
        sweeps,
        trials,
        objective,
        robustness,
        figures + importance_figures,
        warnings,
        importance,
        best,
        stage_means(data),
    )
    write_text(report_dir / "index.html", page)
    _print_table(robustness, objective, console, warnings, best)
    return report_dir
