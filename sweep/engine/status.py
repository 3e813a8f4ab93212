"""`posweep status`: the trial table, counts by state, the best trial and the time left."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from sweep.errors import UserError
from sweep.io import read_json


def load_states(sweep_dir: Path) -> list[dict]:
    """One dict per trial folder: id, method, state ("running" without metrics.json), objective, times."""
    rows = []
    for folder in sorted((sweep_dir / "trials").glob("*/")):
        params_file, metrics_file = folder / "params.json", folder / "metrics.json"
        if not params_file.exists():
            continue
        try:
            params = read_json(params_file)
            metrics = read_json(metrics_file) if metrics_file.exists() else {}
        except (OSError, json.JSONDecodeError):
            continue
        rows.append(
            {
                "trial_id": folder.name,
                "method": params.get("method"),
                "state": metrics.get("state", "running"),
                "objective": metrics.get("objective"),
                "seconds": (metrics.get("time_s") or {}).get("total"),
                "error": metrics.get("error"),
                "finished": metrics.get("finished"),
            }
        )
    return rows


def summarize(sweep_dir: Path) -> str:
    """One line: counts by state and the best trial."""
    meta = read_json(sweep_dir / "sweep.json")
    rows = load_states(sweep_dir)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    scored = [r for r in rows if r["state"] == "complete" and r["objective"] is not None]
    sign = -1 if meta["objective"]["direction"] == "minimize" else 1
    best = max(scored, key=lambda r: sign * r["objective"], default=None)
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials"
    best_text = (
        f"; best {best['trial_id']} {meta['objective']['metric']}={best['objective']:.4f}" if best else ""
    )
    return f"{text} of {meta.get('planned_total', len(rows))} planned{best_text}"


def print_status(sweep_dir: Path) -> None:
    """`posweep status`: a table of trial states and objectives, counts, elapsed and remaining time."""
    from rich.console import Console
    from rich.table import Table

    if not (sweep_dir / "sweep.json").exists():
        raise UserError(f"{sweep_dir} is not a sweep folder (no sweep.json)")
    meta = read_json(sweep_dir / "sweep.json")
    rows = load_states(sweep_dir)
    table = Table("trial", "method", "state", meta["objective"]["metric"], "seconds", "error", box=None)
    for row in rows:
        error = row["error"] or {}
        why = f"{error.get('reason')}: {error.get('type')}: {error.get('message', '')}"[:80] if error else ""
        objective = "-" if row["objective"] is None else f"{row['objective']:.4f}"
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
        table.add_row(row["trial_id"], row["method"] or "?", row["state"], objective, seconds, why)
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(summarize(sweep_dir))
    finished = [r for r in rows if r["state"] != "running"]
    durations = [r["seconds"] for r in finished if r["seconds"]]
    created = datetime.fromisoformat(meta["created"])
    last = max((datetime.fromisoformat(r["finished"]) for r in finished if r["finished"]), default=created)
    remaining = max(0, int(meta.get("planned_total", len(rows))) - len(finished))
    eta = remaining * (sum(durations) / len(durations)) if durations else None
    console.print(
        f"elapsed {(last - created).total_seconds():.0f}s; {remaining} trials remaining"
        + (f", about {eta:.0f}s of trial time left" if eta is not None else "")
    )
