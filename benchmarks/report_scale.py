"""Time `posweep report` end to end on N synthetic trial folders (default 10,000).

    python benchmarks/report_scale.py [--trials N] [--keep DIR]

The synthetic sweep looks like a real one: five methods over their usual hyperparameter grids and many
seeds, a win rate that peaks at a method-specific β and learning rate, longer responses and more KL at
small β, trials that diverge at high learning rates, a few that fail (OOM) or are still running.
Fixture files are written with plain writes: an fsync per file would dominate the set-up time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

GRIDS = {
    "dpo": {"beta": [0.01, 0.05, 0.1, 0.5], "learning_rate": [5e-7, 1e-6, 5e-6]},
    "ipo": {"beta": [0.01, 0.1, 0.5, 1.0], "learning_rate": [5e-7, 1e-6, 5e-6]},
    "ln-dpo": {"beta": [0.5, 1.0, 2.0, 5.0], "learning_rate": [5e-7, 1e-6, 5e-6]},
    "simpo": {"beta": [2.0, 2.5, 10.0], "gamma_beta_ratio": [0.3, 0.5, 0.7], "learning_rate": [5e-7, 1e-6]},
    "tr-dpo": {"beta": [0.05, 0.1], "alpha": [0.3, 0.6, 0.9], "learning_rate": [5e-7, 1e-6, 5e-6]},
}
PEAKS = {
    "dpo": (0.1, 0.62),
    "ipo": (0.1, 0.55),
    "ln-dpo": (1.0, 0.63),
    "simpo": (2.5, 0.64),
    "tr-dpo": (0.1, 0.6),
}
WIDTH = {"dpo": 0.9, "ipo": 1.2, "ln-dpo": 2.0, "simpo": 1.0, "tr-dpo": 1.1}


def _grid_points() -> list[tuple[str, dict]]:
    return [
        (method, dict(zip(grid, values)))
        for method, grid in GRIDS.items()
        for values in itertools.product(*grid.values())
    ]


def _metrics(trial_id: str, method: str, params: dict, rng: np.random.Generator) -> dict:
    beta, lr = params["beta"], params["learning_rate"]
    peak_beta, peak_win = PEAKS[method]
    distance = (math.log10(beta / peak_beta) / WIDTH[method]) ** 2 + (math.log10(lr / 1e-6) / 0.8) ** 2
    times = {"load": 1.2, "train": float(rng.uniform(40, 90)), "generate": 12.0, "judge": 8.0, "kl": 3.0}
    times["total"] = sum(times.values())
    record = {
        "trial_id": trial_id,
        "time_s": times,
        "started": "2025-01-01T00:00:00+00:00",
        "finished": "2025-01-01T00:02:00+00:00",
        "attempt": 1,
        "error": None,
    }
    if lr >= 5e-6 and rng.random() < (0.5 if method == "dpo" else 0.15):
        return {
            **record,
            "state": "diverged",
            "objective": None,
            "error": {
                "type": "FloatingPointError",
                "message": "loss is NaN at step 37",
                "reason": "nan_loss",
            },
        }
    if rng.random() < 0.01:
        return {
            **record,
            "state": "failed",
            "objective": None,
            "error": {"type": "OutOfMemoryError", "message": "CUDA out of memory", "reason": "oom"},
        }
    win = float(np.clip(peak_win - 0.25 * distance + rng.normal(0, 0.03), 0.02, 0.98))
    low, high = max(0.0, win - 0.06), min(1.0, win + 0.06)
    length = (
        180 * (1 + (0.6 if method in ("dpo", "tr-dpo") else 0.1) / math.sqrt(beta)) * rng.uniform(0.9, 1.1)
    )
    kl = float(2.0 / math.sqrt(beta) * (lr / 1e-6) * rng.uniform(0.7, 1.3))
    return {
        **record,
        "state": "complete",
        "objective": win,
        "judge_score_mean": float(3 * win + rng.normal(0, 0.1)),
        "judge_score_std": 1.1,
        "win_rate_vs_sft": win,
        "win_rate_vs_sft_ci": [low, high],
        "lc_win_rate_vs_sft": float(np.clip(win - 0.0005 * (length - 200), 0, 1)),
        "gold.win_rate_vs_sft": float(np.clip(win + rng.normal(0, 0.05), 0, 1)),
        "win_rate_vs_chosen": float(np.clip(win - 0.15, 0, 1)),
        "win_rate_vs_chosen_ci": [max(0.0, win - 0.21), min(1.0, win - 0.09)],
        "kl_to_sft": kl,
        "kl_to_sft_per_token": kl / length,
        "length_mean": length,
        "length_median": length * 0.95,
        "length_p90": length * 1.6,
        "words_mean": length * 0.75,
        "empty_fraction": 0.0,
        "truncated_fraction": float(rng.uniform(0, 0.1)),
    }


def write_synthetic_sweep(root: Path, trials: int, seed: int = 0) -> Path:
    """Write a sweep folder with `trials` synthetic trials under root; return its path."""
    rng = np.random.default_rng(seed)
    sweep_dir = root / "synthetic"
    points = _grid_points()
    ids = []
    for index in range(trials):
        method, params = points[index % len(points)]
        trial_id = f"{method}-{index:05d}"
        trial_dir = sweep_dir / "trials" / trial_id
        trial_dir.mkdir(parents=True)
        ids.append(trial_id)
        spec = {
            "trial_id": trial_id,
            "method": method,
            "params": params,
            "trl_fields": {},
            "seed": index // len(points),
            "variant": None,
        }
        (trial_dir / "params.json").write_text(json.dumps(spec, indent=2))
        if rng.random() >= 0.005:
            metrics = _metrics(trial_id, method, params, rng)
            (trial_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    sweep = {
        "name": "synthetic",
        "created": "2025-01-01T00:00:00+00:00",
        "updated": "2025-01-02T00:00:00+00:00",
        "storage": "sqlite:///study.db",
        "plan_hash": "0" * 16,
        "strategy": "grid",
        "planned_trials": ids,
        "objective": {"metric": "win_rate_vs_sft", "direction": "maximize"},
        "methods": list(GRIDS),
        "versions": {"posweep": "0.1.0"},
        "git_revision": None,
    }
    (sweep_dir / "sweep.json").write_text(json.dumps(sweep, indent=2))
    (sweep_dir / "recipe.yaml").write_text("name: synthetic\nmethods: [dpo, ipo, ln-dpo, simpo, tr-dpo]\n")
    (sweep_dir / "cache").mkdir()
    baseline = {"metrics": {"length_mean": 210.0}, "lengths": [210] * 8}
    (sweep_dir / "cache" / "sft_baseline.json").write_text(json.dumps(baseline))
    return sweep_dir


def main() -> None:
    """Generate the synthetic sweep and print how long `build_report` takes on it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000, help="number of trial folders")
    parser.add_argument("--keep", type=Path, help="write the sweep here and keep it (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = write_synthetic_sweep(args.keep or Path(tmp), args.trials)
        wall, cpu = time.perf_counter(), time.process_time()
        from rich.console import Console

        from sweep.report import build_report

        build_report([sweep_dir], console=Console(quiet=True))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"build_report on {args.trials} trials (imports included): {wall:.2f} s wall, {cpu:.2f} s CPU")


if __name__ == "__main__":
    main()
