"""The trial queue on the Optuna study: enqueue, claim exactly once, heartbeat, close, reconcile.

Every trial is an Optuna trial. Grid points are enqueued once (WAITING) and claimed by exactly one
worker: claiming flips WAITING -> RUNNING through the storage, which is atomic (a row lock in SQL
databases, a file lock for the journal file). Random/TPE sweeps enqueue one slot per (method, seed,
k) with only the method (and variant) fixed, and the study's sampler (seeded with the trial's number, so
a resumed or grown sweep draws new samples) fills in the hyperparameters when a worker claims the slot.
Every claimed trial records its method, variant and hyperparameters as Optuna params with their
distributions (grid values as enqueued fixed params; the method among every registry method, as one
study keeps one distribution per param and a grown plan adds methods). A trial that failed,
was interrupted, or whose worker died is re-enqueued under the same posweep id (failures up to
`execution.max_retries` times); complete ones never run again.

Optuna's private API (storage, study and trial ids, fixed params) is reached through `engine/internals.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sweep.engine.internals import fix_params, storage_engine, study_id, study_storage, trial_id
from sweep.engine.storage import sampler
from sweep.io import file_lock, utc_now
from sweep.results import SweepFolder, in_plan, ranked_trials
from sweep.spec.methods import HYPERPARAMETERS, REGISTRY
from sweep.spec.plan import Plan, TrialSpec, axis_scale, sampled_trial_id
from sweep.spec.recipe import Distribution, Recipe

HEARTBEAT_S = 10.0
GRACE_S = 60.0
FINAL_STATES = ("complete", "pruned", "diverged")
ATTR = "posweep"


@dataclass
class Sweep:
    """An opened sweep: its folder, recipe, plan and Optuna study."""

    dir: Path
    recipe: Recipe
    plan: Plan
    study: Any
    storage_display: str

    @property
    def storage(self):
        """The study's Optuna storage."""
        return study_storage(self.study)

    @property
    def folder(self) -> SweepFolder:
        """The results folder."""
        return SweepFolder(self.dir)


def _slot_key(attrs: dict) -> str:
    """What identifies a planned unit of work: the grid trial id, or a random/TPE slot."""
    return attrs.get("slot") or attrs["trial_id"]


def _planned_slots(sweep: Sweep) -> dict[str, dict]:
    """Every planned unit of work, keyed by slot, with the attributes its Optuna trial carries."""
    if sweep.plan.strategy == "grid":
        return {t.trial_id: {**t.to_json(), "params": dict(t.params)} for t in sweep.plan.trials}
    return {slot["slot"]: slot for slot in sweep.plan.sampled_slots()}


def _is_alive(trial, attrs: dict) -> bool:
    """Whether the worker holding a RUNNING trial still lives.

    On this host its process must exist; elsewhere its heartbeat must be recent. A trial claimed but
    not yet stamped with its worker counts as alive for GRACE_S after the claim.
    """
    if attrs.get("host") == socket.gethostname() and attrs.get("pid"):
        try:
            os.kill(int(attrs["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if "heartbeat" in attrs:
        return time.time() - float(attrs["heartbeat"]) < GRACE_S
    started = trial.datetime_start
    return started is not None and (datetime.now() - started).total_seconds() < GRACE_S


@contextlib.contextmanager
def queue_lock(sweep: Sweep) -> Iterator[None]:
    """Serialize queue bookkeeping between all workers of a sweep, wherever they run.

    A study in PostgreSQL is locked in the database itself (an advisory lock, released by the server
    when its holder dies), so no point is enqueued twice even where the shared filesystem's locks are
    node-local; other storages use the sweep folder's lock.
    """
    engine = storage_engine(sweep.storage)
    if engine is None or engine.dialect.name != "postgresql":
        with file_lock(sweep.dir / ".lock"):
            yield
        return
    from sqlalchemy import text

    digest = hashlib.sha256(f"posweep:{sweep.study.study_name}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


def reconcile(sweep: Sweep) -> dict[str, int]:
    """Bring the queue in line with the plan; return counts of slots by what is left to do.

    Stale RUNNING trials (dead worker) are closed as interrupted (same host, process gone) or failed
    (no heartbeat within the grace period); every planned slot that has no complete, waiting or live
    running trial is enqueued, unless it failed more than `max_retries` times.
    """
    from optuna.trial import TrialState

    storage = sweep.storage
    counts = {"done": 0, "queued": 0, "running": 0, "given_up": 0}
    with queue_lock(sweep):
        trials = sweep.study.get_trials(deepcopy=False)
        by_slot: dict[str, list] = {}
        for trial in trials:
            attrs = trial.user_attrs.get(ATTR)
            if attrs is None:
                continue
            if trial.state == TrialState.RUNNING and not _is_alive(trial, attrs):
                elsewhere = "host" in attrs and attrs["host"] != socket.gethostname()
                state = "failed" if elsewhere else "interrupted"
                close(sweep, trial, attrs, state, "worker_died")
                attrs = {**attrs, "state": state, "reason": "worker_died"}
                trial = storage.get_trial(trial_id(trial))
            by_slot.setdefault(_slot_key(attrs), []).append((trial, trial.user_attrs.get(ATTR, attrs)))
        for slot, base in _planned_slots(sweep).items():
            history = by_slot.get(slot, [])
            states = [
                "complete" if trial.state == TrialState.COMPLETE else attrs.get("state")
                for trial, attrs in history
            ]
            if any(s in FINAL_STATES for s in states):
                counts["done"] += 1
            elif any(t.state == TrialState.WAITING for t, _ in history):
                counts["queued"] += 1
            elif any(t.state == TrialState.RUNNING for t, _ in history):
                counts["running"] += 1
            elif _failures(history) > sweep.recipe.execution.max_retries:
                counts["given_up"] += 1
            else:
                _enqueue(sweep, base, history)
                counts["queued"] += 1
    return counts


def _failures(history: list) -> int:
    """Failed attempts that count toward `max_retries` (a full results folder is not the trial's fault)."""
    return sum(attrs.get("state") == "failed" and attrs.get("reason") != "disk" for _, attrs in history)


def _enqueue(sweep: Sweep, base: dict, history: list) -> None:
    """Enqueue one planned slot with its fixed Optuna params; a retry of a sampled trial keeps its sample."""
    attempt = len(history) + 1
    params = _fixed_params(sweep, base)
    if history and sweep.plan.strategy != "grid":
        params.update(history[-1][0].params)
    sweep.study.enqueue_trial(params, user_attrs={ATTR: {**base, "attempt": attempt, "state": "queued"}})


def _variants_swept(sweep: Sweep) -> bool:
    return any(variant is not None for variant in sweep.plan.variants)


def _fixed_params(sweep: Sweep, base: dict) -> dict:
    """The Optuna params a slot is enqueued with: a grid point's all; a sampled slot's method and variant."""
    method = base["method"]
    fixed: dict[str, Any] = {"method": method}
    if _variants_swept(sweep):
        fixed["variant"] = base.get("variant")
    if sweep.plan.strategy == "grid":
        point = base["params"]
        fixed.update({f"{method}.{name}": value for name, value in point.items()})
    return fixed


def close(sweep: Sweep, trial, attrs: dict, state: str, reason: str | None, value: float | None = None):
    """Record a posweep state on an Optuna trial and finish it (unless another worker already closed it)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    with contextlib.suppress(UpdateFinishedTrialError):
        sweep.storage.set_trial_user_attr(
            trial_id(trial), ATTR, {**attrs, "state": state, "reason": reason, "finished": utc_now()}
        )
        if state == "complete" and value is not None:
            sweep.study.tell(trial.number, value, skip_if_finished=True)
        elif state == "pruned":
            sweep.study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            sweep.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def start(sweep: Sweep, trial, attrs: dict) -> None:
    """Stamp a claimed trial with its worker (host, pid, heartbeat) and its resolved spec."""
    sweep.storage.set_trial_user_attr(trial_id(trial), ATTR, attrs)


def others_running(sweep: Sweep) -> bool:
    """Whether another live worker still holds a trial (so this one should wait to take over if it dies)."""
    from optuna.trial import TrialState

    running = sweep.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(ATTR in t.user_attrs and t.user_attrs[ATTR].get("pid") != os.getpid() for t in running)


def keep_best(sweep: Sweep) -> str | None:
    """`execution.keep: best`: discard every kept model but the best complete trial's; return its id.

    The best trial is the sweep's one ranking (`sweep.results.ranked_trials`) over the current plan's trials'
    metrics.json, decided under the queue lock, so workers finishing at the same time agree.
    """
    with queue_lock(sweep):
        records = sweep.folder.trials()
        objective = sweep.recipe.eval
        planned = in_plan(records, sweep.folder.read_sweep())
        ranked = ranked_trials(planned, objective.objective, objective.direction == "maximize")
        if not ranked:
            return None
        best_id = ranked[0].trial_id
        for record in records:
            if record.trial_id != best_id:
                sweep.folder.trial(record.folder).discard_model()
    return best_id


def claim(sweep: Sweep):
    """Atomically take the next WAITING trial (an optuna.Trial), or None when none is left."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = sweep.storage
    for frozen in storage.get_all_trials(study_id(sweep.study), deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial_id(frozen), state=TrialState.RUNNING):
                return optuna.Trial(sweep.study, trial_id(frozen))
        except UpdateFinishedTrialError:
            continue
    return None


def in_current_plan(sweep: Sweep, trial) -> bool:
    """Whether a claimed trial is one of this sweep's planned slots (a worker's plan may predate a growth)."""
    return _slot_key(trial.user_attrs[ATTR]) in set(sweep.plan.slots)


def method_choices(sweep: Sweep) -> list[str]:
    """The choices of the `method` Optuna param: those the study's trials record (Optuna keeps one
    distribution per param name in a study), else every registry method, so a plan can grow by methods."""
    for trial in sweep.study.get_trials(deepcopy=False):
        if "method" in trial.distributions:
            return list(trial.distributions["method"].choices)
    return list(REGISTRY)


def _suggest_value(trial, key: str, name: str, values, grid: bool) -> float:
    """One hyperparameter as an Optuna param: a range (a grid axis spans its values), or a sampled list."""
    if isinstance(values, Distribution):
        low, high, log = values.low, values.high, values.log
    elif grid:
        low, high, log = axis_scale(name, values)
    else:
        return float(trial.suggest_categorical(key, list(values)))
    if HYPERPARAMETERS[name].integer:
        return float(trial.suggest_int(key, int(low), int(high), log=log))
    return trial.suggest_float(key, low, high, log=log)


def _suggest(sweep: Sweep, trial, attrs: dict) -> tuple[str, dict[str, float]]:
    """Record a claimed trial's method, variant and hyperparameters as Optuna params; sample the rest.

    The params are conditional: each method's are named `{method}.{name}`. A grid trial's values are the
    params it was enqueued with (set here too for a trial enqueued before params were recorded).
    """
    grid = sweep.plan.strategy == "grid"
    fix_params(trial, _fixed_params(sweep, attrs))
    method = trial.suggest_categorical("method", method_choices(sweep))
    if _variants_swept(sweep):
        trial.suggest_categorical("variant", list(sweep.plan.variants))
    space = dict(sweep.plan.spaces[method])
    if grid:
        space = {name: space[name] for name in attrs["params"]}
    params = {
        name: _suggest_value(trial, f"{method}.{name}", name, values, grid) for name, values in space.items()
    }
    return method, params


def spec_for(sweep: Sweep, trial) -> tuple[TrialSpec, dict]:
    """The TrialSpec of a claimed trial (sampling it first for random/TPE) and its posweep attrs."""
    attrs = dict(trial.user_attrs[ATTR])
    if sweep.plan.strategy != "grid":
        sweep.study.sampler = sampler(sweep.recipe, trial.number)
    method, params = _suggest(sweep, trial, attrs)
    if sweep.plan.strategy == "grid":
        spec = TrialSpec(
            attrs["trial_id"], attrs["method"], attrs["params"], attrs["seed"], attrs.get("variant")
        )
    else:
        variant = attrs.get("variant")
        sampled_id = sampled_trial_id(method, params, attrs["seed"], variant)
        held = sweep.folder.trial(sampled_id).read_params()
        if held is not None and held.slot not in (None, attrs["slot"]):
            # the sampler drew a point another slot already trained (a small discrete space): its own trial
            sampled_id = f"{sampled_id}-slot{attrs['slot'].rsplit('/', 1)[-1]}"
        spec = TrialSpec(sampled_id, method, params, attrs["seed"], variant, attrs["slot"])
        attrs.update(trial_id=spec.trial_id, params=params)
    return spec, attrs


class Heartbeat:
    """A thread that stamps the held trial as alive every HEARTBEAT_S seconds."""

    def __init__(self, sweep: Sweep, trial, attrs: dict):
        self._stop = threading.Event()
        self._args = (sweep, trial_id(trial), attrs)
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        sweep, trial_id, attrs = self._args
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                sweep.storage.set_trial_user_attr(trial_id, ATTR, {**attrs, "heartbeat": time.time()})

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def sampled_ids(sweep: Sweep) -> list[str]:
    """The ids of the random/TPE trials sampled so far in the current plan's slots."""
    slots = set(sweep.plan.slots)
    attrs = [t.user_attrs.get(ATTR, {}) for t in sweep.study.get_trials(deepcopy=False)]
    return sorted({a["trial_id"] for a in attrs if "trial_id" in a and a.get("slot") in slots})
