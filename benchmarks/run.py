"""`make bench`: a sweep run by posweep (one warm worker) against the same trials run one process each.

    python benchmarks/run.py [--repeats N] [--reference-repeats N] [--memory-trials N]
                             [--cache DIR] [--keep DIR]

On the built-in toy task (built once into --cache; default a temporary folder), it writes a recipe for a
fixed 12-trial grid (DPO, LN-DPO and SimPO with the training and evaluation settings of recipes/tiny.yaml)
and runs it

- with `posweep run RECIPE --quiet`, one process, as a user runs it;
- with `python benchmarks/baseline_trial.py RECIPE TRIAL_ID` per trial, one after another: each a fresh
  process doing the same work with nothing shared (imports, loading, SFT responses and judge every time).

It prints both wall times, peak memory (the kernel's RSS high-water mark of each process tree, from wait4),
per-trial medians, the mean seconds per trial stage of both sides (metrics.json stages_s), the
posweep/baseline ratio and its floor (posweep's imports and training steps alone over the baseline's wall),
posweep's orchestration overhead (wall time spent neither in trials, nor in Python's
start and library imports (timed alone), nor in the worker's one-off loading of model, tokenizer, judges and
SFT baseline), and the largest difference of objective, kl_to_sft and length_mean between the two sides for
the same trials. With --repeats N every figure is the median of N
runs. Then it measures the shared reference log-probabilities alone (one DPO trial with and without them,
in this process) and a worker's RSS after 3 and after --memory-trials trials of a longer posweep sweep.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GRID = {
    "dpo": {"beta": [0.1, 0.5], "learning_rate": [1.0e-4, 5.0e-4]},
    "ln-dpo": {"beta": [1.0, 2.0], "learning_rate": [1.0e-4, 5.0e-4]},
    "simpo": {"beta": [2.0], "gamma_beta_ratio": [0.3, 1.0], "learning_rate": [1.0e-4, 5.0e-4]},
}
GRID_SIZE = sum(len(list(itertools.product(*space.values()))) for space in GRID.values())
COMPARED = ("objective", "kl_to_sft", "length_mean")
TARGETS = {"ratio": 0.40, "overhead": 0.10, "rss_growth": 1.10}
STARTUP_IMPORTS = (
    "import torch, transformers, datasets, optuna, sweep.cli, sweep.engine.workers, sweep.train.trial"
)
"""What a `posweep run` process imports before its worker loads anything (timed alone, in a fresh process)."""
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in bytes on macOS, KiB on Linux


@dataclass
class Side:
    """One way of running the grid: its wall time, peak RSS and each trial's metrics.json."""

    wall_s: float
    peak_mb: float
    trials: dict[str, dict] = field(default_factory=dict)
    trial_walls: list[float] = field(default_factory=list)
    startup_s: float = 0.0


def build_toy(cache: Path) -> Path:
    """The built-in toy task's folder (models and data files), built once into `cache`."""
    from sweep.builtin.build import ensure_built

    return ensure_built(cache, log=lambda line: print(f"  {line}", flush=True))


def write_recipe(path: Path, toy: Path, results: Path, seeds: list[int]) -> Path:
    """The bench recipe: the fixed grid over local copies of the toy task's files."""
    recipe = {
        "name": "bench",
        "model": str(toy / "sft"),
        "data": {
            "train": {"path": str(toy / "data" / "train.jsonl")},
            "eval": {
                "path": str(toy / "data" / "eval.jsonl"),
                "columns": {"prompt": "prompt", "reference": "chosen"},
                "max_prompts": 64,
            },
        },
        "judge": [
            {"name": "rm", "reward_model": str(toy / "rm"), "batch_size": 64},
            {"name": "gold", "callable": "sweep.builtin.toy:gold_reward"},
        ],
        "methods": GRID,
        "search": {"strategy": "grid", "seeds": seeds},
        "train": {"max_steps": 40, "per_device_train_batch_size": 8, "max_length": 96, "warmup_ratio": 0.1},
        "eval": {"max_new_tokens": 24, "batch_size": 64, "bootstrap": 1000},
        "execution": {"results_dir": str(results), "devices": "cpu"},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def run_process(command: list[str], log: Path) -> tuple[float, float]:
    """Run a command to completion; its wall time and the peak RSS (MiB) of its process tree."""
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {process.returncode}; see {log}")
    return time.perf_counter() - started, usage.ru_maxrss * MAXRSS_UNIT / 2**20


def read_trials(folder: Path) -> dict[str, dict]:
    """trial id -> metrics.json of every trial under `folder`/trials."""
    return {
        path.parent.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.glob("trials/*/metrics.json"))
    }


def trial_ids(recipe: Path) -> list[str]:
    """The recipe's trial ids, in plan order."""
    from sweep.spec.plan import plan_recipe
    from sweep.spec.validate import load_recipe

    return [spec.trial_id for spec in plan_recipe(load_recipe(recipe)).trials]


def run_posweep(recipe: Path, results: Path, extra: tuple[str, ...] = ()) -> Side:
    """The grid through `posweep run --quiet` (one process, one warm worker), and the startup it pays."""
    results.mkdir(parents=True, exist_ok=True)
    startup = statistics.median(
        run_process([sys.executable, "-c", STARTUP_IMPORTS], results / "startup.log")[0] for _ in range(3)
    )
    command = [sys.executable, "-m", "sweep", "run", str(recipe), "--quiet", "--results", str(results)]
    wall, peak = run_process([*command, *extra], results / "posweep.log")
    trials = read_trials(results / "bench")
    return Side(wall, peak, trials, [record["time_s"]["total"] for record in trials.values()], startup)


def run_baseline(recipe: Path, folder: Path) -> Side:
    """The grid as one fresh `baseline_trial.py` process per trial, one after another."""
    folder.mkdir(parents=True, exist_ok=True)
    script = str(ROOT / "benchmarks" / "baseline_trial.py")
    walls, peaks = [], []
    started = time.perf_counter()
    for trial_id in trial_ids(recipe):
        out = folder / trial_id
        out.mkdir()
        command = [sys.executable, script, str(recipe), trial_id, "--out", str(out)]
        wall, peak = run_process(command, out / "log")
        walls.append(wall)
        peaks.append(peak)
    trials = {}
    for out in folder.iterdir():
        trials.update(read_trials(out))
    return Side(time.perf_counter() - started, max(peaks), trials, walls)


def overhead(side: Side) -> dict[str, float]:
    """posweep's wall time outside trials: Python's start and the library imports, the worker's one-off
    loading (model, tokenizer, judges, SFT baseline), and the rest: orchestration (recipe, Optuna study,
    claiming and closing trials, heartbeats, summary)."""
    in_trials = sum(record["time_s"]["total"] for record in side.trials.values())
    setup = max(record["worker"]["setup_s"] for record in side.trials.values())
    rest = side.wall_s - in_trials - setup - side.startup_s
    return {
        "in_trials_s": in_trials,
        "setup_s": setup,
        "startup_s": side.startup_s,
        "overhead_s": rest,
        "overhead_fraction": rest / side.wall_s,
        "outside_trials_fraction": (side.wall_s - in_trials) / side.wall_s,
    }


def differences(posweep: Side, baseline: Side) -> dict[str, tuple[float, str]]:
    """For each compared metric, the largest |posweep - baseline| over the trials and where it is."""
    found = {}
    for key in COMPARED:
        gaps = [
            (abs(posweep.trials[trial][key] - baseline.trials[trial][key]), trial)
            for trial in posweep.trials
            if trial in baseline.trials
        ]
        found[key] = max(gaps)
    return found


def reference_effect(recipe_path: Path, folder: Path, repeats: int) -> dict[str, float]:
    """One DPO trial with the shared reference log-probabilities and without (TRL's per-step reference
    pass), alternating, in this process; times are medians over `repeats` runs of each."""
    from sweep.engine.workers import configure_process
    from sweep.spec.plan import TrialSpec, plan_recipe
    from sweep.spec.validate import load_recipe
    from sweep.train.trial import Worker

    configure_process({"POSWEEP_THREADS": str(max(1, os.cpu_count() or 1))})
    recipe = load_recipe(recipe_path)
    spec = next(t for t in plan_recipe(recipe).trials if t.method == "dpo")
    cached = Worker(recipe, folder / "cached", log=lambda line: None)
    plain = Worker(recipe, folder / "plain", log=lambda line: None, reference_cache=False)

    def trial(worker: Worker, name: str) -> dict:
        result = worker.run(TrialSpec(name, spec.method, spec.params, spec.seed))
        assert result.state == "complete", result.error
        return result.metrics["time_s"]

    first = trial(cached, "first")
    trial(plain, "warm-up")
    runs: dict[str, list[dict]] = {"cached": [], "plain": []}
    for index in range(repeats):
        runs["cached"].append(trial(cached, f"cached-{index}"))
        runs["plain"].append(trial(plain, f"plain-{index}"))
    median = {
        f"{kind}_{key}_s": statistics.median(times[key] for times in found)
        for kind, found in runs.items()
        for key in ("train", "total")
    }
    return {"compute_once_s": first["ref_logps"], **median}


def rss_growth(toy: Path, folder: Path, trials: int) -> dict[str, float]:
    """A worker's RSS (metrics.json `worker.rss_mb`) after its 3rd and its last trial of a longer sweep."""
    seeds = list(range(-(-trials // GRID_SIZE)))
    recipe = write_recipe(folder / "memory.yaml", toy, folder, seeds)
    side = run_posweep(recipe, folder, ("--max-trials", str(trials)))
    by_index = {record["worker"]["trial"]: record["worker"]["rss_mb"] for record in side.trials.values()}
    last = max(by_index)
    return {"trials": last, "rss_3_mb": by_index[3], "rss_last_mb": by_index[last], "peak_mb": side.peak_mb}


def median_side(sides: list[Side]) -> Side:
    """The run whose wall time is the median (its trials and memory come with it)."""
    return sorted(sides, key=lambda side: side.wall_s)[len(sides) // 2]


def stage(record: dict, name: str) -> float:
    """A trial record's seconds in one stage (0 for a stage it did not meet)."""
    return record.get("stages_s", {}).get(name, 0.0)


def report(
    posweep: list[Side], baseline: list[Side], reference: dict | None, memory: dict | None, loads: list
) -> None:
    """Print the figures and whether each target is met."""
    p, b = median_side(posweep), median_side(baseline)
    ratio = statistics.median(x.wall_s / y.wall_s for x, y in zip(posweep, baseline))
    costs = [overhead(side) for side in posweep]
    cost = {key: statistics.median(c[key] for c in costs) for key in costs[0]}
    runs = f"median of {len(posweep)} runs" if len(posweep) > 1 else "1 run"
    print(
        f"\n{len(p.trials)} trials (DPO, LN-DPO, SimPO) on the built-in toy task, {runs}; "
        f"load average (1, 5, 15 min) at start {loads[:3]}, at end {loads[3:]}"
    )
    print(f"{'':26}{'posweep run':>14}{'baseline':>14}")
    print(f"{'wall time (s)':26}{p.wall_s:14.1f}{b.wall_s:14.1f}")
    print(f"{'peak RSS (MiB)':26}{p.peak_mb:14.0f}{b.peak_mb:14.0f}")
    print(
        f"{'per-trial median (s)':26}{statistics.median(p.trial_walls):14.2f}"
        f"{statistics.median(b.trial_walls):14.2f}   (posweep: metrics time_s.total; baseline: process wall)"
    )
    print("where a trial's time goes, mean s per trial (metrics.json stages_s; baseline setup: per process)")
    sides = (p, b)
    names = dict.fromkeys(n for side in sides for r in side.trials.values() for n in r.get("stages_s", {}))
    for name in names:
        means = [statistics.mean(stage(r, name) for r in x.trials.values()) for x in sides]
        print(f"{'  ' + name:26}{means[0]:14.2f}{means[1]:14.2f}")
    print(
        f"{'imports + loading (s)':26}{cost['startup_s'] + cost['setup_s']:14.2f}"
        f"{statistics.median(r['setup_s'] for r in b.trials.values()):14.2f}   (posweep: once; baseline: "
        "per trial, median)"
    )
    print(f"posweep/baseline wall ratio: {ratio:.3f} (target <= {TARGETS['ratio']})")
    floor = statistics.median(
        (c["startup_s"] + sum(stage(r, "train") for r in x.trials.values())) / y.wall_s
        for c, x, y in zip(costs, posweep, baseline)
    )
    print(
        f"  floor {floor:.3f}: posweep's Python start and imports plus its trials' train stage over the "
        "baseline's wall (what no sharing removes)"
    )
    if len(posweep) > 1:
        walls = ", ".join(f"{x.wall_s:.1f}/{y.wall_s:.1f}" for x, y in zip(posweep, baseline))
        print(f"  each run, posweep/baseline wall (s): {walls}")
    print(
        f"posweep orchestration overhead: {cost['overhead_s']:.1f} s = {cost['overhead_fraction']:.1%} of "
        f"wall (target <= {TARGETS['overhead']:.0%}): wall - trials {cost['in_trials_s']:.1f} s - worker "
        f"loading {cost['setup_s']:.1f} s - Python start and imports {cost['startup_s']:.1f} s (measured "
        f"alone); all outside trials {cost['outside_trials_fraction']:.1%}"
    )
    for key, (gap, trial) in differences(p, b).items():
        print(f"largest |posweep - baseline| {key}: {gap:.3g} ({trial})")
    if reference:
        print(
            f"shared reference log-probs, one DPO trial: train {reference['cached_train_s']:.2f} s with, "
            f"{reference['plain_train_s']:.2f} s without (trial {reference['cached_total_s']:.2f} vs "
            f"{reference['plain_total_s']:.2f} s); computed once per sweep in "
            f"{reference['compute_once_s']:.2f} s"
        )
    if memory:
        growth = memory["rss_last_mb"] / memory["rss_3_mb"]
        print(
            f"worker RSS: {memory['rss_3_mb']:.0f} MiB after 3 trials, {memory['rss_last_mb']:.0f} MiB after "
            f"{memory['trials']} (x{growth:.3f}, target <= {TARGETS['rss_growth']}); "
            f"peak {memory['peak_mb']:.0f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side (medians are reported)")
    parser.add_argument("--memory-trials", type=int, default=30, help="trials of the RSS run (0: skip)")
    parser.add_argument("--reference-repeats", type=int, default=3, help="trials of each kind (0: skip)")
    parser.add_argument("--cache", type=Path, help="where the toy task is built (reused when there)")
    parser.add_argument("--keep", type=Path, help="keep every run's files in this folder")
    options = parser.parse_args()

    work = options.keep or Path(tempfile.mkdtemp(prefix="posweep-bench-"))
    loads = [round(x, 2) for x in os.getloadavg()]
    try:
        print("building the toy task (once)", flush=True)
        toy = build_toy(options.cache or work / "cache")
        posweep, baseline = [], []
        for run in range(options.repeats):
            folder = work / f"run-{run}"
            recipe = write_recipe(folder / "recipe.yaml", toy, folder / "posweep", [0])
            print(f"run {run + 1}/{options.repeats}: posweep run", flush=True)
            posweep.append(run_posweep(recipe, folder / "posweep"))
            print(f"run {run + 1}/{options.repeats}: {GRID_SIZE} baseline processes", flush=True)
            baseline.append(run_baseline(recipe, folder / "baseline"))
        reference = None
        if options.reference_repeats:
            print("shared reference log-probabilities alone", flush=True)
            recipe = write_recipe(work / "reference" / "recipe.yaml", toy, work / "reference", [0])
            reference = reference_effect(recipe, work / "reference", options.reference_repeats)
        memory = None
        if options.memory_trials:
            print(f"worker memory over {options.memory_trials} trials", flush=True)
            memory = rss_growth(toy, work / "memory", options.memory_trials)
        loads += [round(x, 2) for x in os.getloadavg()]
        report(posweep, baseline, reference, memory, loads)
    finally:
        if options.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
