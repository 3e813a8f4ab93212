"""`posweep status`: the current plan's trials and counts, the best trial, time left, plan revisions.

Each revision of a sweep grown in place shows its planned trials and how many are complete.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from sweep.results import RUNNING, SweepFolder, SweepRecord, TrialRecord, ranked_trials
from sweep.spec.metrics import in_stage_order

ENDED = ("complete", "diverged", "pruned", "failed")


def best_line(trials: list[TrialRecord], meta: SweepRecord) -> str:
    """The best trial as the sweep ranks it (picked on the selection part) with its held-out value, or ""."""
    ranked = ranked_trials(trials, meta.metric, meta.maximize)
    if not ranked:
        return ""
    best = ranked[0]
    held_out, picked = best.part_value(meta.metric, "test"), best.part_value(meta.metric, "selection")
    if held_out is None or picked is None:
        return f"; best {best.trial_id} {meta.metric}={best.metrics.objective:.4f}"
    name = f"; best {best.trial_id} {meta.metric}"
    return f"{name}={held_out:.4f} held out (picked on selection part: {picked:.4f})"


def summarize(sweep_dir: Path) -> str:
    """One line: counts by state of the current plan's trials and the best one."""
    folder = SweepFolder(sweep_dir)
    meta = folder.read_sweep()
    trials, _ = folder.plan_trials()
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
    planned = meta.planned_total if meta.planned_total is not None else len(trials)
    return f"{text} of {planned} planned{best_line(trials, meta)}"


def failed_trials(sweep_dir: Path) -> list[str]:
    """Ids of the current plan's trials whose last attempt failed."""
    return [trial.trial_id for trial in SweepFolder(sweep_dir).plan_trials()[0] if trial.state == "failed"]


def status_code(sweep_dir: Path) -> int:
    """`posweep status`'s exit code: 1 when the sweep has finished (every planned trial ended) and a trial
    failed, else 0 (a sweep still running or interrupted is not judged)."""
    folder = SweepFolder(sweep_dir)
    trials, _ = folder.plan_trials()
    planned = folder.read_sweep().planned_total or len(trials)
    finished = len(trials) >= planned and all(trial.state in ENDED for trial in trials)
    return 1 if finished and any(trial.state == "failed" for trial in trials) else 0


def stage_means(trials: list[TrialRecord]) -> dict[str, dict[str, float]]:
    """Mean seconds per stage (metrics.json's stages_s) of each method's ended trials, in stage order."""
    collected: dict[str, list[dict[str, float]]] = {}
    for trial in trials:
        if trial.metrics is not None and trial.metrics.stages_s:
            collected.setdefault(trial.params.method or "?", []).append(trial.metrics.stages_s)
    means = {}
    for method, records in collected.items():
        names = in_stage_order(name for record in records for name in record)
        means[method] = {name: sum(r.get(name, 0.0) for r in records) / len(records) for name in names}
    return means


def stage_table(trials: list[TrialRecord]):
    """A rich table: per method, the mean seconds of each stage and each stage's share of the trial."""
    from rich.table import Table

    means = stage_means(trials)
    names = list(dict.fromkeys(name for stages in means.values() for name in stages))
    table = Table("method", *names, "total", title="where the time went (mean s per trial)", box=None)
    for method, stages in means.items():
        total = sum(stages.values())
        cells = [
            f"{stages.get(n, 0.0):.2f} ({stages.get(n, 0.0) / total:.0%})" if total else "-" for n in names
        ]
        table.add_row(method, *cells, f"{total:.2f}")
    return table


def _error_text(trial: TrialRecord) -> str:
    error = (trial.metrics and trial.metrics.error) or {}
    return f"{error.get('reason')}: {error.get('type')}: {error.get('message', '')}"[:80] if error else ""


def revision_lines(sweep_dir: Path) -> list[str]:
    """One line per plan revision: when, what it added or removed, its planned and complete trials."""
    folder = SweepFolder(sweep_dir)
    revisions = folder.read_sweep().revisions
    records = folder.trials()
    complete = {key for r in records if r.state == "complete" for key in (r.trial_id, r.params.slot)}
    lines = []
    for revision in revisions:
        changes = "; ".join(
            f"{key} {json.dumps(revision[key], separators=(',', ':'))}"
            for key in ("methods", "values", "seeds", "n_trials")
            if key in revision
        )
        done = sum(slot in complete for slot in revision["slots"])
        lines.append(
            f"revision {revision['revision']} ({revision['when']}): {revision['planned_total']} planned, "
            f"{done} complete" + (f"; {changes}" if changes else "")
        )
    return lines


def print_status(sweep_dir: Path) -> int:
    """`posweep status`: a table of trial states and objectives, counts, elapsed and remaining time."""
    from rich.console import Console
    from rich.table import Table

    folder = SweepFolder(sweep_dir).require()
    meta = folder.read_sweep()
    trials, left_out = folder.plan_trials()
    table = Table("trial", "method", "state", meta.metric, "seconds", "error", box=None)
    for trial in trials:
        objective = None if trial.metrics is None else trial.metrics.objective
        seconds = None if trial.metrics is None else trial.metrics.time_s.get("total")
        table.add_row(
            trial.trial_id,
            trial.params.method or "?",
            trial.state,
            "-" if objective is None else f"{objective:.4f}",
            "-" if seconds is None else f"{seconds:.1f}",
            _error_text(trial),
        )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    if stage_means(trials):
        console.print(stage_table(trials))
    console.print(summarize(sweep_dir))
    if left_out:
        console.print(f"{left_out} trial(s) outside the current plan (values, methods or seeds removed)")
    for line in revision_lines(sweep_dir):
        console.print(line)
    finished = [t.metrics for t in trials if t.state != RUNNING]
    durations = [m.time_s.get("total") for m in finished if m.time_s.get("total")]
    created = datetime.fromisoformat(meta.created)
    last = max((datetime.fromisoformat(m.finished) for m in finished if m.finished), default=created)
    planned = meta.planned_total if meta.planned_total is not None else len(trials)
    remaining = max(0, int(planned) - len(finished))
    eta = remaining * (sum(durations) / len(durations)) if durations else None
    console.print(
        f"elapsed {(last - created).total_seconds():.0f}s; {remaining} trials remaining"
        + (f", about {eta:.0f}s of trial time left" if eta is not None else "")
    )
    code = status_code(sweep_dir)
    if code:
        failed = failed_trials(sweep_dir)
        console.print(f"finished with {len(failed)} failed trial(s): {', '.join(failed)} (exit code 1)")
    return code
