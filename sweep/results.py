"""The results folder: its paths and typed records, each with a schema version; its one reader and writer.

    results/<name>/
      sweep.json              SweepRecord: plan, its revisions (a sweep grown in place), storage, objective,
                              versions, timings
      recipe.yaml             the resolved recipe (a storage password masked)
      study.journal           the Optuna study (default journal storage; a database URL otherwise)
      cache/sft_baseline.json SftBaseline: the SFT model's responses, scores and metrics
      cache/prepared, cache/reference   work shared by trials (sweep.train.shared)
      trials/<id>/params.json TrialParams, written when the trial starts
      trials/<id>/metrics.json TrialMetrics, written last (a trial without it is running or was killed)
      trials/<id>/samples.jsonl, train_log.jsonl, traceback.txt, model/

Every record carries `schema_version` (SCHEMA_VERSION); a file without one was written before versions
existed (version 0, the same layout) and reads the same. Records keep keys they do not know, so a newer
posweep's files survive a round trip through an older reader. Every write is atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sweep.errors import UserError
from sweep.io import append_jsonl, file_lock, read_json, write_json, write_jsonl, write_text
from sweep.spec.metrics import ranked, selection_value

SCHEMA_VERSION = 1
RUNNING = "running"
TRIAL_STATES = ("complete", "failed", "diverged", "pruned", "interrupted", RUNNING)
"""Every state a trial folder can show: metrics.json's `state`, or running while it has none."""


def _read(path: Path) -> Any:
    """A JSON file, or a one-line UserError naming it when it is not valid JSON."""
    try:
        return read_json(path)
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None


class _Record:
    """A JSON object with known fields; unknown keys are kept in `extra` and written back."""

    extra: dict[str, Any]

    @classmethod
    def from_json(cls, data: dict) -> Any:
        """The record of a parsed JSON object (missing fields take their defaults)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {name: data[name] for name in known if name in data}
        values.setdefault("schema_version", 0)
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict:
        """The JSON object: known fields, then the kept unknown keys."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**data, **self.extra}


@dataclass
class SweepRecord(_Record):
    """sweep.json: what the sweep is and how far it has got."""

    name: str
    folder: str = ""
    created: str | None = None
    updated: str | None = None
    storage: str = "journal:study.journal"
    study: str = ""
    plan_hash: str = ""
    plan_sections: dict[str, str] = field(default_factory=dict)
    strategy: str = "grid"
    planned_total: int | None = None
    planned_trials: list[str] = field(default_factory=list)
    revisions: list[dict[str, Any]] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    objective: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    git_revision: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str | None:
        """The objective's metric key."""
        return (self.objective or {}).get("metric")

    @property
    def maximize(self) -> bool:
        """Whether a larger objective is better."""
        return (self.objective or {}).get("direction", "maximize") == "maximize"


@dataclass
class TrialParams(_Record):
    """params.json: the trial's method, hyperparameters, seed, data variant and resolved TRL fields.

    A trial that is not what its method name says (a TR-* trial whose tau is past its steps) has `notes`."""

    trial_id: str = ""
    method: str | None = None
    params: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    variant: str | None = None
    trl_fields: dict[str, Any] = field(default_factory=dict)
    attempt: int = 1
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def slot(self) -> str | None:
        """A random/TPE trial's slot (`sweep.spec.plan.Plan.sampled_slots`); None for a grid trial."""
        return self.extra.get("slot")


@dataclass
class TrialMetrics(_Record):
    """metrics.json: the trial's outcome; evaluation metrics are top-level keys, kept in `extra`."""

    trial_id: str
    state: str
    objective: float | None = None
    error: dict[str, str] | None = None
    time_s: dict[str, float] = field(default_factory=dict)
    stages_s: dict[str, float] = field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    attempt: int = 1
    train: dict[str, Any] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        """The evaluation metrics (and any other key this record does not type)."""
        return self.extra

    def to_json(self) -> dict:
        """The JSON object; `stages_s` only where the trial timed its stages (older records have none)."""
        data = super().to_json()
        if not self.stages_s:
            del data["stages_s"]
        return data


@dataclass
class SftBaseline(_Record):
    """cache/sft_baseline.json: the SFT model's responses to the evaluation prompts, their scores, metrics."""

    key: str = ""
    created: str | None = None
    time_s: float | None = None
    model: str | None = None
    n_prompts: int = 0
    samples_per_prompt: int = 1
    responses: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    reference_scores: dict[str, list[float]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def length_mean(self) -> float | None:
        """The SFT responses' mean length in tokens."""
        length = (self.metrics or {}).get("length_mean")
        if length is None and self.lengths:
            length = sum(self.lengths) / len(self.lengths)
        return length


@dataclass(frozen=True)
class TrialRecord:
    """One trial folder as read: its params, and its metrics (None while it runs or after a kill)."""

    folder: str
    params: TrialParams
    metrics: TrialMetrics | None

    @property
    def trial_id(self) -> str:
        """The trial's id (its folder name when params.json has none)."""
        return self.params.trial_id or self.folder

    @property
    def state(self) -> str:
        """metrics.json's state, or running."""
        return RUNNING if self.metrics is None else self.metrics.state

    def part_value(self, key: str, part: str) -> float | None:
        """Metric `key` over one part of the prompts ("selection" or "test"); None when not recorded."""
        value = (self.metrics.metrics.get(part) or {}).get(key) if self.metrics else None
        return None if value is None else float(value)


def ranked_trials(records: list[TrialRecord], key: str, maximize: bool) -> list[TrialRecord]:
    """The complete trials, best first by objective `key` over the selection part (all prompts' objective
    for a trial recorded without the split), ties to the smaller trial id (`sweep.spec.metrics.ranked`)."""
    complete = {r.trial_id: r for r in records if r.state == "complete"}
    values = [(i, selection_value(r.metrics.metrics, key, r.metrics.objective)) for i, r in complete.items()]
    return [complete[trial_id] for trial_id in ranked(values, maximize)]


def in_plan(records: list[TrialRecord], meta: SweepRecord) -> list[TrialRecord]:
    """The trials of the sweep's current plan (its last revision's slots): a grown sweep keeps the trials
    of grid values, methods, seeds or slots it removed outside it. All trials when there are no revisions."""
    if not meta.revisions:
        return records
    planned = set(meta.revisions[-1]["slots"]) | set(meta.planned_trials)
    return [r for r in records if r.trial_id in planned or r.params.slot in planned]


class TrialFolder:
    """`trials/<id>/` of a sweep."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.params_json = self.path / "params.json"
        self.metrics_json = self.path / "metrics.json"
        self.samples = self.path / "samples.jsonl"
        self.train_log = self.path / "train_log.jsonl"
        self.traceback = self.path / "traceback.txt"
        self.model = self.path / "model"
        self.scratch = self.path / "scratch"
        self.tensorboard = self.path / "tensorboard"

    def start(self, params: TrialParams) -> None:
        """Begin the trial anew: remove what an earlier attempt left, then write params.json."""
        if self.path.exists():
            shutil.rmtree(self.path)
        write_json(self.params_json, params.to_json())

    def read_params(self) -> TrialParams | None:
        """params.json, or None when the trial has not started."""
        if not self.params_json.is_file():
            return None
        return TrialParams.from_json(_read(self.params_json))

    def read_metrics(self) -> TrialMetrics | None:
        """metrics.json, or None when the trial has none (not started, running, or killed)."""
        if not self.metrics_json.is_file():
            return None
        return TrialMetrics.from_json(_read(self.metrics_json))

    def write_metrics(self, metrics: TrialMetrics) -> None:
        """Write metrics.json, the trial's last file."""
        write_json(self.metrics_json, metrics.to_json())

    def write_samples(self, records: list[dict]) -> None:
        """Write samples.jsonl: one line per (prompt, sample), each with the schema version."""
        write_jsonl(self.samples, [{"schema_version": SCHEMA_VERSION, **record} for record in records])

    def read_samples(self) -> list[dict]:
        """samples.jsonl's lines (empty when the trial wrote none)."""
        if not self.samples.is_file():
            return []
        with self.samples.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def last_step(self) -> int | None:
        """The training step of train_log.jsonl's last record (None before the first one)."""
        try:
            with self.train_log.open("rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(lines):
            with contextlib.suppress(ValueError):
                return json.loads(line).get("step")
        return None

    def log(self, record: dict) -> None:
        """Append one training log record to train_log.jsonl."""
        append_jsonl(self.train_log, record)

    def write_traceback(self, text: str) -> None:
        """Keep a failed trial's traceback."""
        write_text(self.traceback, text)

    def discard_model(self) -> None:
        """Remove the trial's kept weights (another trial is now the best)."""
        shutil.rmtree(self.model, ignore_errors=True)

    def discard_scratch(self) -> None:
        """Remove the trainer's scratch output."""
        shutil.rmtree(self.scratch, ignore_errors=True)


class SweepFolder:
    """`results/<name>/`: where a sweep keeps everything."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.sweep_json = self.path / "sweep.json"
        self.recipe_yaml = self.path / "recipe.yaml"
        self.journal = self.path / "study.journal"
        self.lock = self.path / ".lock"
        self.cache = self.path / "cache"
        self.baseline_json = self.cache / "sft_baseline.json"
        self.trials_dir = self.path / "trials"

    @property
    def name(self) -> str:
        """The folder's name (the study's name)."""
        return self.path.name

    def exists(self) -> bool:
        """Whether a sweep was created here (it has sweep.json)."""
        return self.sweep_json.is_file()

    def require(self) -> SweepFolder:
        """This folder, or a UserError when it holds no sweep."""
        if not self.exists():
            raise UserError(f"{self.path} is not a sweep folder (no sweep.json)")
        return self

    def read_sweep(self) -> SweepRecord:
        """sweep.json."""
        return SweepRecord.from_json(_read(self.sweep_json))

    def write_sweep(self, record: SweepRecord) -> None:
        """(Re)write sweep.json."""
        write_json(self.sweep_json, record.to_json())

    def record_training_data(self, counts: dict[str, dict[str, int]]) -> None:
        """Note in sweep.json's `training_data` the pairs each data variant keeps under the length policy."""
        if not self.exists():
            return
        with file_lock(self.lock):
            record = self.read_sweep()
            if record.extra.get("training_data") != counts:
                record.extra["training_data"] = counts
                self.write_sweep(record)

    def read_recipe(self) -> str | None:
        """recipe.yaml's text, or None when the folder has none."""
        return self.recipe_yaml.read_text(encoding="utf-8") if self.recipe_yaml.is_file() else None

    def write_recipe(self, text: str) -> None:
        """Write recipe.yaml."""
        write_text(self.recipe_yaml, text)

    def trial(self, trial_id: str) -> TrialFolder:
        """The folder of one trial (it may not exist yet)."""
        return TrialFolder(self.trials_dir / trial_id)

    def trials(self) -> list[TrialRecord]:
        """Every started trial, by folder name; a folder being created (no params.json yet) is skipped."""
        try:
            names = sorted(entry.name for entry in os.scandir(self.trials_dir) if entry.is_dir())
        except FileNotFoundError:
            return []
        records = []
        for name in names:
            folder = self.trial(name)
            with contextlib.suppress(FileNotFoundError):
                params = folder.read_params()
                if params is not None:
                    records.append(TrialRecord(name, params, _metrics_or_none(folder)))
        return records

    def plan_trials(self, all_trials: bool = False) -> tuple[list[TrialRecord], int]:
        """The started trials of the current plan (`in_plan`), and how many others the folder holds;
        every trial with `all_trials`."""
        records = self.trials()
        kept = records if all_trials else in_plan(records, self.read_sweep())
        return kept, len(records) - len(kept)

    def read_baseline(self) -> SftBaseline | None:
        """The cached SFT baseline, or None when there is none (or it is unreadable, so it is recomputed)."""
        try:
            return SftBaseline.from_json(read_json(self.baseline_json))
        except (OSError, ValueError, TypeError):
            return None

    def write_baseline(self, baseline: SftBaseline) -> None:
        """Cache the SFT baseline."""
        write_json(self.baseline_json, baseline.to_json())


def _metrics_or_none(folder: TrialFolder) -> TrialMetrics | None:
    try:
        return folder.read_metrics()
    except FileNotFoundError:  # removed between the check and the read (a retry started)
        return None
