"""The report page: one self-contained HTML file (inline CSS, figures as data URIs, no network)."""

from __future__ import annotations

import base64
from html import escape

import pandas as pd

from sweep.io import utc_now
from sweep.report.canvas import FigureFile
from sweep.report.load import SweepInfo, SweepProgress, sweep_progress
from sweep.report.robustness import NEAR_BEST, TRUNCATION_FLAG, Objective
from sweep.spec import metrics

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; font-size: .82rem; margin: .6rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .45rem; text-align: right; }
th { background: #f3f4f6; } td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; }
.running { background: #fff4d6; border-left: 5px solid #e0a100; padding: .6rem 1rem; }
.note { background: #eef4ff; border-left: 5px solid #4a78d0; padding: .6rem 1rem; }
figure { margin: 1.6rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #333; max-width: 900px; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
"""


def _progress_section(progress: list[SweepProgress]) -> str:
    rows = "".join(
        f"<tr><td>{escape(p.sweep)}</td><td>{p.text}</td><td>{p.running}</td>"
        f"<td>{'still running (or stopped early)' if p.still_running else 'finished'}</td>"
        f"<td>{'-' if p.overhead_fraction is None else f'{p.overhead_fraction:.1%}'}</td></tr>"
        for p in progress
    )
    table = (
        "<table><tr><th>sweep</th><th>done/planned</th><th>running</th><th>status</th>"
        "<th title='last posweep run that trained: wall time not spent training, evaluating, loading'>"
        f"orchestration overhead</th></tr>{rows}</table>"
    )
    unfinished = [p for p in progress if p.still_running]
    if not unfinished:
        return table
    names = ", ".join(f"{escape(p.sweep)} ({p.text} trials done, {p.running} running)" for p in unfinished)
    warning = (
        f'<p class="running"><strong>Sweep still running:</strong> {names}. This report is partial: '
        "running trials are counted but not in the distributions; run <code>posweep report</code> again "
        "when the sweep has finished.</p>"
    )
    return warning + table


def _failure_note(objective: Objective) -> str:
    found = metrics.metric(objective.metric)
    if found is not None and found.bounded:
        worst = f"{objective.worst:g} (a {found.label} of {objective.worst:g})"
    else:
        extreme = "lowest" if objective.maximize else "highest"
        worst = f"{objective.worst:.4g} (the {extreme} value a complete trial of the report reached)"
    failed = (
        "<strong>Failed trials count too</strong> (<code>--failures-as-worst</code>): a crash "
        "(exception, out of memory, a dead worker) enters the distributions as the worst value."
        if objective.failures_as_worst
        else "<strong>Failed trials are left out</strong>: a crash (exception, out of memory, a dead worker) "
        "says more about the machine than the method; they are counted and listed below "
        "(<code>posweep report --failures-as-worst</code> counts them as the worst value)."
    )
    return (
        '<p class="note"><strong>Diverged trials count.</strong> A trial whose loss became NaN/inf enters '
        f"every distribution, statistic and figure as the worst value, {escape(worst)}: it is what a "
        f"practitioner risks by picking that setting. {failed} Pruned trials (stopped early on a quick "
        "objective), running and interrupted trials are counted but left out of the distributions, for "
        "every metric. Distributions use all evaluation prompts. The best trial is picked on the "
        "selection part of the prompts and scored on the held-out test part (“best selected test”, "
        "“expected best k… test”), beside the in-sample values, which are biased upward (the winner's "
        f"curse). The “within {NEAR_BEST}” columns give the fraction of scored trials within {NEAR_BEST} "
        "(absolute) of the method's own best and of the best in the whole report; “expected best k” "
        "(columns expected_best_k1, _k3, _k5) is the expected best of k trials drawn at random without "
        "replacement (empty when the method has fewer than k); “span.NAME” is each hyperparameter's "
        "grid span, max/min.</p>"
    )


def _listed(trials: pd.DataFrame, title: str, mask: pd.Series, detail) -> str:
    """A short list of trials (id, method, detail) under a heading; empty when none."""
    if not mask.any():
        return ""
    items = "".join(
        f"<li><code>{escape(str(row['trial_id']))}</code> ({escape(str(row['method']))}): "
        f"{escape(detail(row))}</li>"
        for _, row in trials[mask].iterrows()
    )
    return f"<p><strong>{escape(title)}</strong> ({int(mask.sum())})</p><ul>{items}</ul>"


def _trial_lists(trials: pd.DataFrame, warnings: list[str]) -> str:
    notes = "".join(f'<p class="running"><strong>Warning:</strong> {escape(w)}.</p>' for w in warnings)
    failed = _listed(
        trials,
        "Failed trials",
        trials["state"] == "failed",
        lambda row: (
            f"{row.get('error_reason') or 'exception'}: {row.get('error_type') or ''} "
            f"{row.get('error_message') or ''}".strip()
        ),
    )
    pruned = _listed(trials, "Pruned trials", trials["state"] == "pruned", lambda row: "stopped early")
    flagged = pd.Series(False, trials.index)
    if "truncated_fraction" in trials.columns:
        flagged = pd.to_numeric(trials["truncated_fraction"], errors="coerce") > TRUNCATION_FLAG
    truncated = _listed(
        trials,
        f"Trials with more than {TRUNCATION_FLAG:.0%} of responses cut at max_new_tokens",
        flagged,
        lambda row: f"truncated_fraction {row['truncated_fraction']:.2f}: their lengths measure the cap",
    )
    return notes + failed + pruned + truncated


def _figure_html(figure: FigureFile) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    name = escape(figure.name)
    return (
        f'<figure id="{name}"><img src="data:image/png;base64,{data}" alt="{name}">'
        f"<figcaption><strong>{name}</strong>: {escape(figure.caption)} "
        f'(<a href="figures/{name}.svg">SVG</a>)</figcaption></figure>'
    )


def _row(name: str, cells: list) -> str:
    return f"<tr><td>{escape(name)}</td>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>"


def _details_table(sweeps: list[SweepInfo]) -> str:
    keys = ("created", "updated", "strategy", "plan_hash", "git_revision", "storage")
    rows = [_row(key, [s.meta.get(key, "") for s in sweeps]) for key in keys]
    rows.append(_row("training pairs (length policy)", [_training_data(s.meta) for s in sweeps]))
    versions = [s.meta.get("versions") or {} for s in sweeps]
    rows += [
        _row(name, [v.get(name, "") for v in versions]) for name in sorted({n for v in versions for n in v})
    ]
    header = "".join(f"<th>{escape(s.name)}</th>" for s in sweeps)
    return f"<table><tr><th></th>{header}</tr>{''.join(rows)}</table>"


def _training_data(meta: dict) -> str:
    """The pairs each data variant kept and dropped under the length policy (sweep.json `training_data`)."""
    return "; ".join(
        f"{variant or 'train'}: {c['pairs']} kept, {c['dropped']} dropped (prompt leaves fewer than "
        f"{c['min_completion_tokens']} of {c['max_length']} tokens)"
        for variant, c in (meta.get("training_data") or {}).items()
    )


def _recipes(sweeps: list[SweepInfo]) -> str:
    missing = "(no recipe.yaml in this sweep folder)"
    return "".join(
        f"<details open><summary>recipe.yaml of {escape(s.name)}</summary>"
        f"<pre>{escape(s.recipe if s.recipe is not None else missing)}</pre></details>"
        for s in sweeps
    )


def _stage_section(stages: pd.DataFrame | None) -> str:
    """Mean seconds per stage and method, with the trial's total (figure stage_times draws the same)."""
    if stages is None or stages.empty:
        return ""
    table = stages.assign(total=stages.sum(axis=1)).to_html(float_format=lambda v: f"{v:.2f}", border=0)
    note = "<p>Mean seconds per trial and stage (metrics.json stages_s).</p>"
    return f"<h2>Where the time went</h2>{note}<div class='scroll'>{table}</div>"


def render_html(
    sweeps: list[SweepInfo],
    trials: pd.DataFrame,
    objective: Objective,
    robustness: pd.DataFrame,
    figures: list[FigureFile],
    warnings: list[str] = (),
    importance: str = "",
    best: str = "",
    stages: pd.DataFrame | None = None,
) -> str:
    """The whole report page as one string."""
    names = ", ".join(s.name for s in sweeps)
    table = robustness.rename(columns=lambda c: c.replace("_", " ")).to_html(
        index=False, na_rep="–", float_format=lambda v: f"{v:.4g}", border=0
    )
    figure_html = "".join(_figure_html(f) for f in figures) or "<p>No figure: no trial has finished yet.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>posweep report: {escape(names)}</title>
<style>{CSS}</style></head><body>
<h1>posweep report: {escape(names)}</h1>
<p>Objective: <code>{escape(objective.metric)}</code> ({objective.direction}). {len(trials)} trials.
Generated {utc_now()}. Tables: <a href="robustness.csv">robustness.csv</a>,
<a href="trials.csv">trials.csv</a>.</p>
<h2>Progress</h2>
{_progress_section([sweep_progress(s, trials) for s in sweeps])}
<h2>Robustness per method</h2>
{f"<p><strong>{escape(best.capitalize())}</strong>.</p>" if best else ""}
{_failure_note(objective)}
<div class="scroll">{table}</div>
{_trial_lists(trials, list(warnings))}
<h2>Figures</h2>
{figure_html}
{_stage_section(stages)}
<h2>Hyperparameter importance</h2>
{importance}
<h2>Recipe</h2>
{_recipes(sweeps)}
<h2>Sweep details</h2>
<div class="scroll">{_details_table(sweeps)}</div>
</body></html>
"""
