"""Read sweep folders (finished or still running) into one table with a row per trial."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sweep.errors import UserError
from sweep.results import RUNNING, TRIAL_STATES, SweepFolder, TrialRecord

STATES = TRIAL_STATES
IDENTITY_COLUMNS = ("sweep", "trial_id", "method", "variant", "seed", "state", "objective")
RECORD_COLUMNS = ("started", "finished", "attempt", "error_type", "error_reason", "error_message")
_NOT_METRICS = frozenset(
    {*IDENTITY_COLUMNS, *RECORD_COLUMNS, "error", "time_s", "stages_s", "schema_version"}
)


@dataclass(frozen=True)
class SweepInfo:
    """One sweep folder: its sweep.json, its recipe text, the name it is shown under, and its trials (those of
    the current plan unless all were asked for) with how many others were left out."""

    path: Path
    name: str
    meta: dict
    recipe: str | None
    trials: list[TrialRecord]
    left_out: int = 0

    @property
    def planned(self) -> int:
        """Number of trials the sweep planned so far (sweep.json `planned_trials`)."""
        return len(self.meta.get("planned_trials") or [])

    @property
    def folder(self) -> SweepFolder:
        """The results folder."""
        return SweepFolder(self.path)


def load_sweeps(sweep_dirs: list[Path], all_trials: bool = False) -> list[SweepInfo]:
    """Read each folder's sweep.json, recipe.yaml and trials (the current plan's, or all with `all_trials`);
    one sweep per distinct folder, names made unique."""
    dirs = list(dict.fromkeys(Path(d).resolve() for d in sweep_dirs))
    if not dirs:
        raise UserError("no results folder given")
    metas = []
    for path in dirs:
        if not SweepFolder(path).exists():
            raise UserError(f"{path} is not a sweep folder: it has no sweep.json")
        metas.append(SweepFolder(path).read_sweep().to_json())
    names = [meta.get("name") or path.name for path, meta in zip(dirs, metas)]
    if len(set(names)) < len(names):
        names = (
            [path.name for path in dirs]
            if len({p.name for p in dirs}) == len(dirs)
            else [str(p) for p in dirs]
        )
    recipes = [SweepFolder(p).read_recipe() for p in dirs]
    trials = [SweepFolder(p).plan_trials(all_trials) for p in dirs]
    return [SweepInfo(p, n, m, r, *t) for p, n, m, r, t in zip(dirs, names, metas, recipes, trials)]


def left_out_lines(sweeps: list[SweepInfo]) -> list[str]:
    """One line per sweep whose report leaves trials outside its current plan out."""
    return [
        f"{sweep.name}: {sweep.left_out} trial(s) outside the current plan left out (grid values, methods or "
        "seeds removed from the recipe; --all-trials includes them)"
        for sweep in sweeps
        if sweep.left_out
    ]


def _flatten(prefix: str, mapping: dict, out: dict, skip: frozenset = frozenset()) -> None:
    """Flat columns: nested dicts become dotted keys, [lo, hi] pairs `_lo`/`_hi` columns, other lists JSON."""
    for key, value in mapping.items():
        if key in skip:
            continue
        name = prefix + key
        if isinstance(value, dict):
            _flatten(name + ".", value, out)
        elif isinstance(value, list):
            if len(value) == 2 and all(isinstance(v, (int, float)) or v is None for v in value):
                out[name + "_lo"], out[name + "_hi"] = value
            else:
                out[name] = json.dumps(value)
        else:
            out[name] = value


def _trial_record(sweep: str, trial: TrialRecord) -> dict:
    params = trial.params
    variant = params.variant
    record = {
        "sweep": sweep,
        "trial_id": trial.trial_id,
        "method": params.method,
        "variant": variant if variant is None or isinstance(variant, str) else json.dumps(variant),
        "seed": params.seed,
        "state": trial.state,
        "objective": None if trial.metrics is None else trial.metrics.objective,
    }
    _flatten("param.", params.params or {}, record)
    if trial.metrics is None:
        return record
    metrics = trial.metrics.to_json()
    _flatten("", metrics, record, _NOT_METRICS)
    _flatten("time_s.", metrics.get("time_s") or {}, record)
    _flatten("stage_s.", metrics.get("stages_s") or {}, record)
    error = metrics.get("error") or {}
    record.update(
        started=metrics.get("started"),
        finished=metrics.get("finished"),
        attempt=metrics.get("attempt"),
        error_type=error.get("type"),
        error_reason=error.get("reason"),
        error_message=error.get("message"),
    )
    return record


def _sweep_records(sweep: SweepInfo) -> list[dict]:
    records = [_trial_record(sweep.name, trial) for trial in sweep.trials]
    if not records:
        raise UserError(f"{sweep.path} has no trials yet (no trials/*/params.json)")
    return records


def _as_integers(column: pd.Series) -> pd.Series:
    """Whole numbers with gaps as a nullable integer column (1, not 1.0, in trials.csv); else unchanged."""
    numbers = pd.to_numeric(column, errors="coerce")
    whole = numbers.isna().equals(column.isna()) and (numbers.dropna() % 1 == 0).all()
    return numbers.astype("Int64") if whole else column


def read_trials(sweeps: list[SweepInfo]) -> pd.DataFrame:
    """One row per trial of every sweep, in the column order of trials.csv."""
    records = [record for sweep in sweeps for record in _sweep_records(sweep)]
    trials = pd.DataFrame.from_records(records)
    params = sorted(c for c in trials.columns if c.startswith("param."))
    stages = [c for c in trials.columns if c.startswith("stage_s.")]  # in the order trials meet them
    timings = [*sorted(c for c in trials.columns if c.startswith("time_s.")), *stages]
    fixed = {*IDENTITY_COLUMNS, *RECORD_COLUMNS, *params, *timings}
    metrics = [c for c in trials.columns if c not in fixed]
    records_present = [c for c in RECORD_COLUMNS if c in trials.columns]
    trials = trials[[*IDENTITY_COLUMNS, *params, *metrics, *timings, *records_present]]
    trials["objective"] = pd.to_numeric(trials["objective"], errors="coerce").astype(float)
    for column in ("seed", "attempt"):
        if column in trials.columns:
            trials[column] = _as_integers(trials[column])
    return trials.sort_values(["sweep", "method", "trial_id"], kind="stable").reset_index(drop=True)


def load_trials(sweep_dirs: list[Path]) -> pd.DataFrame:
    """Every trial of the given sweep folders as a DataFrame (running trials have state "running")."""
    return read_trials(load_sweeps(sweep_dirs))


def param_columns(trials: pd.DataFrame) -> list[str]:
    """The hyperparameter columns (`param.<name>`)."""
    return [c for c in trials.columns if c.startswith("param.")]


def metric_columns(trials: pd.DataFrame) -> list[str]:
    """The numeric evaluation-metric columns, i.e. the keys `--metric` may pick."""
    fixed = {*IDENTITY_COLUMNS, *RECORD_COLUMNS}
    return [
        c
        for c in trials.columns
        if c not in fixed
        and not c.startswith(("param.", "time_s.", "stage_s."))
        and pd.api.types.is_numeric_dtype(trials[c])
        and not pd.api.types.is_bool_dtype(trials[c])
    ]


def sft_length(sweep: SweepInfo) -> float | None:
    """The SFT model's mean response length in tokens, from cache/sft_baseline.json; None if not there."""
    baseline = sweep.folder.read_baseline()
    return None if baseline is None else baseline.length_mean


@dataclass(frozen=True)
class SweepProgress:
    """How far one sweep has got: finished trials (any final state), running ones, and the plan."""

    sweep: str
    finished: int
    running: int
    planned: int
    overhead_fraction: float | None = None

    @property
    def still_running(self) -> bool:
        """True while trials run or planned trials have not finished."""
        return self.running > 0 or self.finished < self.planned

    @property
    def text(self) -> str:
        """Progress as "done/planned", e.g. "2/4"."""
        return f"{self.finished}/{self.planned}"


def sweep_progress(sweep: SweepInfo, trials: pd.DataFrame) -> SweepProgress:
    """Progress of one sweep from its trial states and sweep.json's planned_trials."""
    states = trials.loc[trials["sweep"] == sweep.name, "state"]
    running = int((states == RUNNING).sum())
    finished = len(states) - running
    overhead = sweep.meta.get("overhead_fraction")
    return SweepProgress(sweep.name, finished, running, max(sweep.planned, len(states)), overhead)
