"""The sweep engine: an Optuna study under results/<name>/, workers that claim trials, resume, status.

Every trial is an Optuna trial. Grid points are enqueued once (WAITING) and claimed by exactly one
worker: claiming flips WAITING -> RUNNING through the storage, which is atomic (a row lock in SQL
databases, a file lock for the journal file). Random/TPE sweeps enqueue one slot per (method, seed,
k) with only the method fixed, and the study's sampler fills in the hyperparameters when a worker
claims the slot. A trial that failed, was interrupted, or whose worker died is re-enqueued under
the same posweep id (failures up to `execution.max_retries` times); complete ones never run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from sweep.errors import UserError
from sweep.io import file_lock, read_json, utc_now, write_json, write_text
from sweep.plan import Plan, TrialSpec, plan_recipe, sampled_trial_id
from sweep.recipe import Distribution, Recipe

HEARTBEAT_S = 10.0
GRACE_S = 60.0
POLL_S = 2.0
FINAL_STATES = ("complete", "pruned", "diverged")
ATTR = "posweep"


QUERY_PASSWORD = re.compile(r"(?i)(^|&)(password=)([^&]*)")


def mask_url(url: str) -> str:
    """A storage URL with its password (user:PASSWORD@host or ?password=PASSWORD) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = QUERY_PASSWORD.sub(r"\1\2***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _masked(text: str, url: str) -> str:
    """`text` (say, a driver's error message) with every password of `url`, raw or decoded, as ***."""
    parts = urlsplit(url)
    secrets = {match[3] for match in QUERY_PASSWORD.finditer(parts.query)} | {parts.password or ""}
    for secret in sorted(secrets | {unquote(s) for s in secrets}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def storage_url(value: str | None) -> str | None:
    """A storage URL from the recipe or a flag; `env:VAR` reads it from the environment."""
    if value and value.startswith("env:"):
        name = value[4:]
        if not os.environ.get(name):
            raise UserError(f"storage: environment variable {name} is not set")
        return os.environ[name]
    return value


class _FlockLock:
    """A journal-file lock held with flock(2): the kernel releases it when its holder dies (kill -9)."""

    def __init__(self, path: str):
        self._path = path
        self._handle = None

    def acquire(self) -> bool:
        """Block until this process holds the lock."""
        self._handle = open(self._path, "a")  # noqa: SIM115 (held until release)
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        """Let the next writer in."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _with_driver(url: str) -> str:
    """A bare postgresql:// URL with an installed driver (SQLAlchemy 2.1 defaults to psycopg 3)."""
    from importlib.util import find_spec

    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or find_spec("psycopg") is not None:
        return url
    return f"postgresql+psycopg2://{rest}" if find_spec("psycopg2") is not None else url


def open_storage(url: str | None, sweep_dir: Path):
    """The Optuna storage: a journal file inside the sweep folder by default, else any storage URL."""
    import optuna

    if url is None:
        from optuna.storages.journal import JournalFileBackend

        path = str(sweep_dir / "study.journal")
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=_FlockLock(path + ".lock")))
    try:
        return optuna.storages.RDBStorage(_with_driver(url), engine_kwargs={"pool_pre_ping": True})
    except Exception as error:  # SQLAlchemy raises many types for a bad URL or an unreachable server
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"storage {mask_url(url)}: {_masked(message, url)}") from None


def _sampler(recipe: Recipe):
    import optuna

    seed = recipe.search.seeds[0]
    if recipe.search.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, recipe.search.n_trials or 10))
    return optuna.samplers.RandomSampler(seed=seed)


def _pruner(recipe: Recipe):
    import optuna

    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3),
        "hyperband": optuna.pruners.HyperbandPruner,
    }[recipe.search.pruner]()


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("posweep", "torch", "transformers", "trl", "optuna", "datasets", "accelerate", "peft"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


# --------------------------------------------------------------------------- the sweep folder


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
        return self.study._storage


def _choose_folder(recipe: Recipe, root: Path, plan: Plan, new: bool) -> Path:
    """The sweep folder for this recipe; refuse (or pick a new folder) when its plan changed."""
    folder = root / recipe.name
    meta_file = folder / "sweep.json"
    if not meta_file.exists():
        return folder
    meta = read_json(meta_file)
    if meta.get("plan_hash") == plan.hash:
        return folder
    if not new:
        old = meta.get("plan_sections", {})
        changed = [k for k, v in plan.section_hashes.items() if old.get(k) != v] or ["plan"]
        raise UserError(
            f"{folder} holds a sweep of a different plan (changed: {', '.join(changed)}); restore the recipe "
            f"to resume it, or pass --new to start a new sweep folder"
        )
    index = 2
    while (root / f"{recipe.name}-{index}" / "sweep.json").exists():
        index += 1
    return root / f"{recipe.name}-{index}"


def open_sweep(
    recipe: Recipe, results: Path | None = None, storage: str | None = None, new: bool = False
) -> Sweep:
    """Create or reopen the sweep folder and its Optuna study; write sweep.json and recipe.yaml."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = plan_recipe(recipe)
    root = Path(results if results is not None else recipe.execution.results_dir)
    folder = _choose_folder(recipe, root, plan, new)
    url = storage_url(storage or recipe.execution.storage)
    with file_lock(folder / ".lock"):
        study = optuna.create_study(
            storage=open_storage(url, folder),
            study_name=folder.name,
            direction=recipe.eval.direction,
            sampler=_sampler(recipe),
            pruner=_pruner(recipe),
            load_if_exists=True,
        )
        display = mask_url(url) if url else "journal:study.journal"
        sweep = Sweep(folder, recipe, plan, study, display)
        stored = recipe.execution.storage and mask_url(recipe.execution.storage)
        shown = recipe.execution.model_copy(update={"storage": stored})
        write_text(folder / "recipe.yaml", recipe.model_copy(update={"execution": shown}).dump())
        write_sweep_json(sweep)
    return sweep


def write_sweep_json(sweep: Sweep, **extra: Any) -> None:
    """(Re)write sweep.json, keeping the creation time and any earlier extra keys."""
    path = sweep.dir / "sweep.json"
    old = read_json(path) if path.exists() else {}
    planned = (
        [t.trial_id for t in sweep.plan.trials] if sweep.plan.strategy == "grid" else _sampled_ids(sweep)
    )
    meta = {
        **old,
        "name": sweep.recipe.name,
        "folder": sweep.dir.name,
        "created": old.get("created", utc_now()),
        "updated": utc_now(),
        "storage": sweep.storage_display,
        "study": sweep.study.study_name,
        "plan_hash": sweep.plan.hash,
        "plan_sections": dict(sweep.plan.section_hashes),
        "strategy": sweep.plan.strategy,
        "planned_total": sweep.plan.total,
        "planned_trials": planned,
        "methods": list(sweep.plan.spaces),
        "objective": {"metric": sweep.recipe.eval.objective, "direction": sweep.recipe.eval.direction},
        "versions": _versions(),
        "git_revision": _git_revision(),
        **extra,
    }
    write_json(path, meta)


def _sampled_ids(sweep: Sweep) -> list[str]:
    return sorted(
        {
            t.user_attrs[ATTR]["trial_id"]
            for t in sweep.study.get_trials(deepcopy=False)
            if "trial_id" in t.user_attrs.get(ATTR, {})
        }
    )


# --------------------------------------------------------------------------- queue bookkeeping


def _slot_key(attrs: dict) -> str:
    """What identifies a planned unit of work: the grid trial id, or a random/TPE slot."""
    return attrs.get("slot") or attrs["trial_id"]


def _planned_slots(sweep: Sweep) -> dict[str, dict]:
    """Every planned unit of work, keyed by slot, with the attributes its Optuna trial carries."""
    if sweep.plan.strategy == "grid":
        return {t.trial_id: {**t.to_json(), "params": dict(t.params)} for t in sweep.plan.trials}
    slots = {}
    for variant in sweep.plan.variants:
        for method in sweep.plan.spaces:
            for seed in sweep.plan.seeds:
                for k in range(sweep.plan.n_trials or 0):
                    slot = f"{variant + '/' if variant else ''}{method}/s{seed}/{k}"
                    slots[slot] = {"slot": slot, "method": method, "seed": seed, "variant": variant}
    return slots


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
    engine = getattr(getattr(sweep.storage, "_backend", sweep.storage), "engine", None)
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
                _close(sweep, trial._trial_id, attrs, state, "worker_died")
                attrs = {**attrs, "state": state, "reason": "worker_died"}
                trial = storage.get_trial(trial._trial_id)
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
            elif states.count("failed") > sweep.recipe.execution.max_retries:
                counts["given_up"] += 1
            else:
                _enqueue(sweep, base, history)
                counts["queued"] += 1
    return counts


def _enqueue(sweep: Sweep, base: dict, history: list) -> None:
    """Enqueue one planned slot; a retry of a sampled trial keeps its sampled hyperparameters."""
    attempt = len(history) + 1
    params = history[-1][0].params if history and sweep.plan.strategy != "grid" else {}
    if sweep.plan.strategy != "grid" and not params:
        params = {"method": base["method"]}
    sweep.study.enqueue_trial(params, user_attrs={ATTR: {**base, "attempt": attempt, "state": "queued"}})


def _close(
    sweep: Sweep, trial_id: int, attrs: dict, state: str, reason: str | None, value: float | None = None
):
    """Record a posweep state on an Optuna trial and finish it (unless another worker already closed it)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = sweep.storage
    with contextlib.suppress(UpdateFinishedTrialError):
        storage.set_trial_user_attr(
            trial_id, ATTR, {**attrs, "state": state, "reason": reason, "finished": utc_now()}
        )
        if state == "complete" and value is not None:
            storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [value])
        elif state == "pruned":
            storage.set_trial_state_values(trial_id, TrialState.PRUNED)
        else:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)


def claim(sweep: Sweep):
    """Atomically take the next WAITING trial (an optuna.Trial), or None when none is left."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = sweep.storage
    for frozen in storage.get_all_trials(sweep.study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(sweep.study, frozen._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def _suggest(sweep: Sweep, trial) -> tuple[str, dict[str, float]]:
    """Sample a random/TPE trial's hyperparameters in its method's conditional space."""
    method = trial.suggest_categorical("method", list(sweep.plan.spaces))
    space = dict(sweep.plan.spaces[method])
    from sweep.methods import REGISTRY

    alternatives = [name for name in REGISTRY[method].alternatives if name in space]
    if len(alternatives) > 1:
        keep = trial.suggest_categorical(f"{method}.mode", alternatives)
        space = {name: values for name, values in space.items() if name not in alternatives or name == keep}
    params = {}
    for name, values in space.items():
        key = f"{method}.{name}"
        if isinstance(values, Distribution):
            if name == "tau":
                params[name] = float(
                    trial.suggest_int(key, int(values.low), int(values.high), log=values.log)
                )
            else:
                params[name] = trial.suggest_float(key, values.low, values.high, log=values.log)
        else:
            params[name] = float(trial.suggest_categorical(key, list(values)))
    return method, params


def _spec_for(sweep: Sweep, trial) -> tuple[TrialSpec, dict]:
    """The TrialSpec of a claimed trial (sampling it first for random/TPE) and its posweep attrs."""
    attrs = dict(trial.user_attrs[ATTR])
    if sweep.plan.strategy == "grid":
        spec = TrialSpec(
            attrs["trial_id"], attrs["method"], attrs["params"], attrs["seed"], attrs.get("variant")
        )
    else:
        method, params = _suggest(sweep, trial)
        variant = attrs.get("variant")
        spec = TrialSpec(
            sampled_trial_id(method, params, attrs["seed"], variant), method, params, attrs["seed"], variant
        )
        attrs.update(trial_id=spec.trial_id, params=params)
    return spec, attrs


class Heartbeat:
    """A thread that stamps the held trial as alive every HEARTBEAT_S seconds."""

    def __init__(self, sweep: Sweep, trial_id: int, attrs: dict):
        self._stop = threading.Event()
        self._args = (sweep, trial_id, attrs)
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


# --------------------------------------------------------------------------- workers


@dataclass
class Event:
    """A finished trial, as the progress display sees it."""

    trial_id: str
    state: str
    objective: float | None
    seconds: float
    reason: str | None = None
    attempt: int = 1
    trial_s: float = 0.0
    setup_s: float = 0.0


def worker_loop(
    sweep: Sweep,
    device: str,
    max_trials: int | None,
    on_event: Callable[[Event], None],
    log: Callable[[str], None],
    setup_s: float = 0.0,
) -> int:
    """Claim and run trials until none is left (or max_trials ran); return how many ran.

    `setup_s` (time this process already spent importing) and the worker's own setup are reported
    with the first finished trial, so the sweep can tell orchestration overhead from work.
    """
    importing = time.perf_counter()
    from sweep.trial import Worker

    setup_s += time.perf_counter() - importing

    recipe, folder = sweep.recipe, sweep.dir

    def evaluator(model, tokenizer):
        from sweep.evaluate import Evaluator

        return Evaluator(recipe, model, tokenizer, folder, device, log)

    worker = Worker(recipe, folder, device=device, log=log, evaluator_factory=evaluator)
    ran = 0
    while max_trials is None or ran < max_trials:
        trial = claim(sweep)
        if trial is None:
            if reconcile(sweep)["queued"] == 0:
                if _others_running(sweep):
                    time.sleep(POLL_S)
                    continue
                break
            continue
        spec, attrs = _spec_for(sweep, trial)
        attrs.update(
            host=socket.gethostname(),
            pid=os.getpid(),
            heartbeat=time.time(),
            state="running",
            started=utc_now(),
        )
        sweep.storage.set_trial_user_attr(trial._trial_id, ATTR, attrs)

        def report(step: int, value: float, trial=trial) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        started = time.perf_counter()
        try:
            with Heartbeat(sweep, trial._trial_id, attrs):
                result = worker.run(spec, attempt=attrs.get("attempt", 1), report=report)
        except KeyboardInterrupt:
            _close(sweep, trial._trial_id, attrs, "interrupted", "interrupted")
            raise
        reason = (result.error or {}).get("reason")
        _close(
            sweep,
            trial._trial_id,
            {**attrs, "objective": result.objective},
            result.state,
            reason,
            result.objective,
        )
        seconds = time.perf_counter() - started
        trial_s = (result.metrics.get("time_s") or {}).get("total", seconds)
        setup = setup_s + worker.setup_s if ran == 0 else 0.0
        attempt = attrs.get("attempt", 1)
        on_event(
            Event(spec.trial_id, result.state, result.objective, seconds, reason, attempt, trial_s, setup)
        )
        ran += 1
    return ran


def _others_running(sweep: Sweep) -> bool:
    """Whether another live worker still holds a trial (so this one should wait to take over if it dies)."""
    from optuna.trial import TrialState

    running = sweep.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return any(ATTR in t.user_attrs and t.user_attrs[ATTR].get("pid") != os.getpid() for t in running)


def _device_plan(recipe: Recipe, workers: int | None) -> list[dict[str, str]]:
    """One environment per worker: CUDA_VISIBLE_DEVICES pinning on GPUs, thread counts on CPU."""
    devices = recipe.execution.devices
    gpus: list[int] = []
    if devices != "cpu":
        if isinstance(devices, list):
            gpus = list(devices)
        else:
            import torch

            gpus = list(range(torch.cuda.device_count()))
    count = workers or (len(gpus) if gpus else recipe.execution.workers)
    if gpus:
        return [
            {"CUDA_VISIBLE_DEVICES": str(gpus[i % len(gpus)]), "POSWEEP_DEVICE": "cuda"} for i in range(count)
        ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(recipe.execution.cpu_threads or (1 if cores <= 4 else max(1, cores // count)))
    return [{"CUDA_VISIBLE_DEVICES": "", "POSWEEP_DEVICE": "cpu", "POSWEEP_THREADS": threads}] * count


def _worker_process(
    recipe_yaml: str, results: str, storage: str | None, env: dict, max_trials: int | None, queue
) -> None:
    """Body of a spawned worker process: pin devices, open the sweep, run trials, report events."""
    os.environ.update(env)
    import yaml

    from sweep.recipe import Recipe

    recipe = Recipe.model_validate(yaml.safe_load(recipe_yaml))
    importing = time.perf_counter()
    _configure_process(env)
    setup_s = time.perf_counter() - importing
    sweep = open_sweep_folder(recipe, Path(results), storage)
    with contextlib.suppress(KeyboardInterrupt):
        worker_loop(
            sweep,
            env["POSWEEP_DEVICE"],
            max_trials,
            queue.put,
            lambda line: queue.put(("log", line)),
            setup_s,
        )


def _configure_process(env: dict) -> None:
    """Quiet library logging and set the torch thread count for this worker."""
    import warnings

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import logging

    import datasets
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    for name in ("trl", "accelerate", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if env.get("POSWEEP_THREADS"):
        torch.set_num_threads(int(env["POSWEEP_THREADS"]))


def open_sweep_folder(recipe: Recipe, folder: Path, storage: str | None) -> Sweep:
    """Reopen an existing sweep folder (a worker joining a sweep its runner created)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(storage)
    study = optuna.load_study(
        study_name=folder.name,
        storage=open_storage(url, folder),
        sampler=_sampler(recipe),
        pruner=_pruner(recipe),
    )
    return Sweep(
        folder, recipe, plan_recipe(recipe), study, mask_url(url) if url else "journal:study.journal"
    )


def sweep_storage(folder: Path, storage: str | None) -> str | None:
    """The storage a worker should use for an existing sweep folder: the flag, else the journal file."""
    if storage is not None:
        return storage
    meta = read_json(folder / "sweep.json")
    if meta.get("storage", "journal:").startswith("journal:"):
        return None
    raise UserError(
        f"{folder}: this sweep's study is in {meta['storage']}; pass --storage URL (or env:VAR) to join it"
    )


def run_worker(
    folder: str | Path, storage: str | None = None, max_trials: int | None = None, quiet: bool = True
) -> int:
    """`posweep worker` (and each SLURM array task): join a sweep and run trials until none is left."""
    import yaml

    folder = Path(folder)
    if not (folder / "sweep.json").exists() or not (folder / "recipe.yaml").exists():
        raise UserError(
            f"{folder} is not a sweep folder (it needs sweep.json and recipe.yaml from posweep run)"
        )
    recipe = Recipe.model_validate(yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8")))
    given_gpus = os.environ.get("CUDA_VISIBLE_DEVICES") and recipe.execution.devices != "cpu"
    env = {"POSWEEP_DEVICE": "cuda"} if given_gpus else _device_plan(recipe, 1)[0]
    os.environ.update(env)
    _configure_process(env)
    sweep = open_sweep_folder(recipe, folder, sweep_storage(folder, storage))
    progress = Progress(sweep.plan.total, reconcile(sweep)["done"], quiet)
    try:
        worker_loop(sweep, env["POSWEEP_DEVICE"], max_trials, progress, progress.log)
    except KeyboardInterrupt:
        return 130
    finally:
        progress.close()
    progress.log(summarize(folder))
    return 0


# --------------------------------------------------------------------------- progress and the run command


class Progress:
    """A progress bar over trials with ETA, a line per finished trial, and the final summary."""

    def __init__(self, total: int, done: int, quiet: bool):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet or not self.console.is_terminal
        self.total, self.done = total, done
        self.seen: set[str] = set()
        self.trial_s = self.setup_s = 0.0
        self._bar = None
        if not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                "ETA",
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task("trials", total=total, completed=done)
            self._bar.start()

    def log(self, line: str) -> None:
        """Print a message above the bar."""
        self.console.print(line, markup=False, soft_wrap=True)

    def __call__(self, event: Event) -> None:
        self.trial_s += event.trial_s
        self.setup_s += event.setup_s
        if event.trial_id not in self.seen:
            self.seen.add(event.trial_id)
            self.done += 1
        value = "-" if event.objective is None else f"{event.objective:.4f}"
        why = f" ({event.reason})" if event.reason and event.state != "complete" else ""
        why += f" [attempt {event.attempt}]" if event.attempt > 1 else ""
        self.log(
            f"[{self.done}/{self.total}] {event.trial_id}  {event.state}{why}  objective={value}  "
            f"{event.seconds:.1f}s"
        )
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)

    def close(self) -> None:
        """Stop the bar."""
        if self._bar is not None:
            self._bar.stop()


def run_sweep(
    recipe: Recipe,
    results: Path | None = None,
    workers: int | None = None,
    storage: str | None = None,
    max_trials: int | None = None,
    new: bool = False,
    quiet: bool = False,
) -> int:
    """`posweep run`: open or resume the sweep, run its trials, print a summary; return the exit code."""
    started = time.perf_counter()
    sweep = open_sweep(recipe, results, storage, new)
    counts = reconcile(sweep)
    progress = Progress(sweep.plan.total, counts["done"], quiet)
    progress.log(
        f"sweep {sweep.dir} ({sweep.plan.total} trials: {counts['done']} done, {counts['queued']} to run"
        f"{', ' + str(counts['given_up']) + ' failed too often' if counts['given_up'] else ''}); "
        f"storage {sweep.storage_display}"
    )
    envs = _device_plan(recipe, workers)
    interrupted, crashed = False, []
    try:
        if len(envs) == 1:
            os.environ.update(envs[0])
            importing = time.perf_counter()
            _configure_process(envs[0])
            setup_s = time.perf_counter() - importing
            worker_loop(sweep, envs[0]["POSWEEP_DEVICE"], max_trials, progress, progress.log, setup_s)
        else:
            crashed = _run_processes(sweep, envs, storage or recipe.execution.storage, max_trials, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
    summary = summarize(sweep.dir)
    wall = time.perf_counter() - started
    overhead = max(0.0, wall - (progress.trial_s + progress.setup_s) / len(envs))
    write_sweep_json(
        sweep,
        wall_s=round(wall, 3),
        trials_s=round(progress.trial_s, 3),
        setup_s=round(progress.setup_s, 3),
        overhead_s=round(overhead, 3),
        overhead_fraction=round(overhead / wall, 4) if wall else None,
    )
    progress.log(summary)
    if interrupted:
        progress.log("interrupted: finished trials are saved; run the same command again to resume")
        return 130
    if crashed:
        progress.log(
            f"{len(crashed)} worker process(es) crashed (exit codes {crashed}); see their errors above"
        )
        return 1
    return 0


def _run_processes(
    sweep: Sweep, envs: list[dict], storage: str | None, max_trials: int | None, progress: Progress
) -> list[int]:
    """Run one spawned worker process per environment, relay their events; return crashed ones' exit codes."""
    import multiprocessing as mp
    import queue as queue_module

    context = mp.get_context("spawn")
    events = context.Queue()
    recipe_yaml = sweep.recipe.dump()
    procs = [
        context.Process(
            target=_worker_process,
            args=(recipe_yaml, str(sweep.dir), storage, env, max_trials, events),
            daemon=False,
        )
        for env in envs
    ]
    for proc in procs:
        proc.start()
    try:
        while any(p.is_alive() for p in procs) or not events.empty():
            try:
                item = events.get(timeout=0.5)
            except queue_module.Empty:
                continue
            if isinstance(item, tuple):
                progress.log(item[1])
            else:
                progress(item)
    finally:
        for proc in procs:
            proc.join(timeout=60)
    return [proc.exitcode for proc in procs if proc.exitcode]


# --------------------------------------------------------------------------- status


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
