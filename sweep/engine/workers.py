"""Workers: run claimed trials in this process or in spawned ones, one environment per device; `posweep run`.

A worker loop claims a trial, runs it through `sweep.train.trial.Worker` with the evaluator, and closes it
with its state; it stops when nothing is queued and no other live worker holds a trial it could take over.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sweep.engine.folder import (
    Sweep,
    claim_planned,
    open_sweep,
    open_sweep_folder,
    record_run,
    removed_on_failure,
    sweep_storage,
)
from sweep.engine.launch import TrialGroup, gpu_envs
from sweep.engine.live import RunningTrials
from sweep.engine.preflight import Checked, cpu_threads, is_disk_error, preflight, workers_hint
from sweep.engine.progress import Event, Progress
from sweep.engine.queue import Heartbeat, close, keep_best, others_running, reconcile, spec_for, start
from sweep.engine.status import failed_trials, summarize
from sweep.errors import UserError
from sweep.io import utc_now
from sweep.results import SweepFolder
from sweep.signals import EXIT_FAILED, Terminated, exit_code, graceful_stops, raise_if_stopped, stop_processes
from sweep.spec.launching import launched
from sweep.spec.metrics import selection_value
from sweep.spec.recipe import Locate, Recipe, as_given

POLL_S = 2.0


class DiskFull(Exception):
    """The results folder took no more data: the worker stops rather than retry into the same wall."""


def worker_loop(
    sweep: Sweep,
    device: str,
    max_trials: int | None,
    on_event: Callable[[Event], None],
    log: Callable[[str], None],
    setup_s: float = 0.0,
    locate: Locate = as_given,
    checked: Checked | None = None,
) -> int:
    """Claim and run trials until none is left (or max_trials ran); return how many ran.

    `setup_s` (time this process already spent importing) and the worker's own setup are reported
    with the first finished trial, so the sweep can tell orchestration overhead from work. `locate`
    turns the recipe's references into loadable ones (the entry points pass the built-in resolver);
    `checked`, a preflight of this process, may hold its loaded worker, which then runs the trials.
    """
    importing = time.perf_counter()
    from sweep.evaluate.evaluator import evaluator_factory
    from sweep.train.trial import Worker

    setup_s += time.perf_counter() - importing

    recipe, folder = sweep.recipe.located(locate), sweep.dir
    if launched(recipe):
        worker = TrialGroup(recipe, folder, device, log)
    else:
        evaluator = evaluator_factory(recipe, folder, device, log)
        warm = checked.warm_worker(recipe, sweep.folder, log, evaluator) if checked else None
        worker = warm or Worker(recipe, folder, device=device, log=log, evaluator_factory=evaluator)
    ran = 0
    waiting = time.perf_counter()
    while max_trials is None or ran < max_trials:
        raise_if_stopped()
        sweep, trial = claim_planned(sweep)
        if trial is None:
            if reconcile(sweep)["queued"] == 0:
                if others_running(sweep):
                    time.sleep(POLL_S)
                    continue
                break
            continue
        spec, attrs = spec_for(sweep, trial)
        attrs.update(
            host=socket.gethostname(),
            pid=os.getpid(),
            heartbeat=time.time(),
            state="running",
            started=utc_now(),
        )
        start(sweep, trial, attrs)

        def report(step: int, value: float, trial=trial) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        started = time.perf_counter()
        try:
            with Heartbeat(sweep, trial, attrs):
                waited = started - waiting
                result = worker.run(spec, attempt=attrs.get("attempt", 1), report=report, waited_s=waited)
        except KeyboardInterrupt as error:
            why = "terminated" if isinstance(error, Terminated) else "interrupted"
            close(sweep, trial, attrs, "interrupted", why)
            raise
        except OSError as error:
            if not is_disk_error(error):
                raise
            with contextlib.suppress(OSError):  # the study may live on the same full disk
                close(sweep, trial, attrs, "failed", "disk")
            raise DiskFull(f"{spec.trial_id}: {error.strerror}: {error.filename}") from None
        reason = (result.error or {}).get("reason")
        told = selection_value(result.metrics, recipe.eval.objective, result.objective)
        close(sweep, trial, {**attrs, "objective": result.objective}, result.state, reason, told)
        if reason == "disk":
            raise DiskFull(f"{spec.trial_id}: {(result.error or {}).get('message')}")
        if recipe.execution.keep == "best" and result.state == "complete":
            keep_best(sweep)
        seconds = time.perf_counter() - started
        trial_s = (result.metrics.get("time_s") or {}).get("total", seconds)
        setup = setup_s + worker.setup_s if ran == 0 else 0.0
        attempt = attrs.get("attempt", 1)
        on_event(
            Event(spec.trial_id, result.state, result.objective, seconds, reason, attempt, trial_s, setup)
        )
        ran += 1
        waiting = time.perf_counter()
    return ran


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
    if gpus:
        return gpu_envs(gpus, recipe.execution.processes_per_trial, workers)
    count, ranks = workers or recipe.execution.workers, recipe.execution.processes_per_trial
    threads = str(recipe.execution.cpu_threads or cpu_threads(count * ranks))
    return [{"CUDA_VISIBLE_DEVICES": "", "POSWEEP_DEVICE": "cpu", "POSWEEP_THREADS": threads}] * count


def _worker_process(
    recipe_yaml: str,
    results: str,
    storage: str | None,
    env: dict,
    max_trials: int | None,
    queue,
    locate: Locate,
) -> None:
    """Body of a spawned worker process: pin devices, open the sweep, run trials, report events."""
    os.environ.update(env)
    import yaml

    recipe = Recipe.model_validate(yaml.safe_load(recipe_yaml))
    importing = time.perf_counter()
    configure_process(env)
    setup_s = time.perf_counter() - importing
    try:
        with graceful_stops():
            sweep = open_sweep_folder(recipe, Path(results), storage)
            worker_loop(
                sweep,
                env["POSWEEP_DEVICE"],
                max_trials,
                queue.put,
                lambda line: queue.put(("log", line)),
                setup_s,
                locate,
            )
    except KeyboardInterrupt as error:
        sys.exit(exit_code(error))
    except DiskFull as error:
        queue.put(("log", f"stopped: the results folder is full or not writable: {error}"))
        sys.exit(EXIT_FAILED)


def configure_process(env: dict) -> None:
    """Quiet library logging and set the torch thread count for this worker."""
    import torch

    from sweep.hf.quiet import quiet_process

    quiet_process()
    if env.get("POSWEEP_THREADS"):
        torch.set_num_threads(int(env["POSWEEP_THREADS"]))


def run_worker(
    folder: str | Path,
    storage: str | None = None,
    max_trials: int | None = None,
    quiet: bool = True,
    locate: Locate = as_given,
) -> int:
    """`posweep worker` (and each SLURM array task): join a sweep and run trials until none is left."""
    import yaml

    folder = Path(folder)
    recipe_text = SweepFolder(folder).read_recipe()
    if not SweepFolder(folder).exists() or recipe_text is None:
        raise UserError(
            f"{folder} is not a sweep folder (it needs sweep.json and recipe.yaml from posweep run)"
        )
    recipe = Recipe.model_validate(yaml.safe_load(recipe_text))
    given_gpus = os.environ.get("CUDA_VISIBLE_DEVICES") and recipe.execution.devices != "cpu"
    env = {"POSWEEP_DEVICE": "cuda"} if given_gpus else _device_plan(recipe, 1)[0]
    os.environ.update(env)
    configure_process(env)
    sweep = open_sweep_folder(recipe, folder, sweep_storage(folder, storage))
    progress = Progress(sweep.plan.total, reconcile(sweep)["done"], quiet, RunningTrials(sweep))
    with graceful_stops():
        try:
            worker_loop(sweep, env["POSWEEP_DEVICE"], max_trials, progress, progress.log, locate=locate)
        except KeyboardInterrupt as error:
            return exit_code(error)
        except DiskFull as error:
            return _disk_full(progress, error)
        finally:
            progress.close()
    progress.log(summarize(folder))
    return _outcome(sweep, progress)


def _disk_full(progress: Progress, error: DiskFull) -> int:
    progress.log(f"stopped: the results folder is full or not writable ({error}); free space and rerun")
    return EXIT_FAILED


def _outcome(sweep: Sweep, progress: Progress) -> int:
    """Exit code of a finished run: 1 (with the count and where the errors are) if a trial failed for good."""
    failed = failed_trials(sweep.dir)
    if not failed or not reconcile(sweep)["given_up"]:
        return 0
    where = ", ".join(f"{sweep.dir / 'trials' / trial_id / 'traceback.txt'}" for trial_id in failed[:3])
    more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
    progress.log(
        f"{len(failed)} trial(s) failed after their retries: {', '.join(failed)} "
        f"(errors: {where}{more}; posweep status {sweep.dir})"
    )
    return EXIT_FAILED


def run_sweep(
    recipe: Recipe,
    results: Path | None = None,
    workers: int | None = None,
    storage: str | None = None,
    max_trials: int | None = None,
    new: bool = False,
    quiet: bool = False,
    locate: Locate = as_given,
) -> int:
    """`posweep run`: preflight, open or resume the sweep, run its trials; return the exit code.

    Exit codes: 0 every planned trial ended complete, diverged or pruned; 1 a trial failed after its
    retries (or the results folder filled up); 2 (a UserError) bad input, found before anything is
    written; 130 Ctrl-C; 143 SIGTERM (the running trial is recorded as interrupted, retrained on resume).
    """
    started = time.perf_counter()
    envs = _device_plan(recipe, workers)
    log = Progress(0, 0, True).log
    with graceful_stops():
        try:
            return _run(recipe, results, storage, max_trials, new, quiet, locate, envs, started, log)
        except KeyboardInterrupt as error:
            log("interrupted before the first trial started; run the same command again")
            return exit_code(error)


def _run(recipe, results, storage, max_trials, new, quiet, locate, envs, started, log) -> int:
    """The body of `run_sweep`, with SIGTERM raising Terminated."""
    root = Path(results if results is not None else recipe.execution.results_dir)
    device = _preflight_device(envs)
    alone = len(envs) == 1 and not launched(recipe)  # this process is the only worker: it keeps what loaded
    checked = preflight(recipe.located(locate), results, storage, device, log, _existing(root, recipe), alone)
    if hint := workers_hint(envs):
        log(hint)
    with removed_on_failure(root / recipe.name):
        sweep = open_sweep(recipe, results, storage, new)
        checked.hand_over(sweep.folder)
    counts = reconcile(sweep)
    progress = Progress(sweep.plan.total, counts["done"], quiet, RunningTrials(sweep))
    progress.log(
        f"sweep {sweep.dir} ({sweep.plan.total} trials: {counts['done']} done, {counts['queued']} to run"
        f"{', ' + str(counts['given_up']) + ' failed too often' if counts['given_up'] else ''}); "
        f"storage {sweep.storage_display}"
    )
    interrupted, crashed, full = None, [], None
    try:
        if len(envs) == 1:
            importing = time.perf_counter()
            configure_process(envs[0])
            setup_s = time.perf_counter() - importing
            device = envs[0]["POSWEEP_DEVICE"]
            worker_loop(sweep, device, max_trials, progress, progress.log, setup_s, locate, checked)
        else:
            storage = storage or recipe.execution.storage
            crashed = _run_processes(sweep, envs, storage, max_trials, progress, locate)
    except KeyboardInterrupt as error:
        interrupted = error
    except DiskFull as error:
        full = error
    finally:
        progress.close()
    if full is not None:
        return _disk_full(progress, full)
    summary = summarize(sweep.dir)
    wall = time.perf_counter() - started
    record_run(sweep, len(progress.seen), progress.trial_s, progress.setup_s, wall, len(envs))
    progress.log(summary)
    if interrupted is not None:
        how = "terminated (SIGTERM)" if isinstance(interrupted, Terminated) else "interrupted"
        progress.log(f"{how}: finished trials are saved; run the same command again to resume")
        return exit_code(interrupted)
    if crashed:
        progress.log(
            f"{len(crashed)} worker process(es) crashed (exit codes {crashed}); see their errors above"
        )
        return EXIT_FAILED
    return _outcome(sweep, progress)


def _preflight_device(envs: list[dict[str, str]]) -> str:
    """Where the preflight runs: this process's own device when it is the only worker (its GPU pinning
    set now, before CUDA starts), else the first worker's GPU."""
    if len(envs) == 1:
        os.environ.update(envs[0])
        return envs[0]["POSWEEP_DEVICE"]
    first = envs[0]["CUDA_VISIBLE_DEVICES"].split(",")[0]  # a trial group's first GPU
    return f"cuda:{first}" if envs[0]["POSWEEP_DEVICE"] == "cuda" else "cpu"


def _existing(root: Path, recipe: Recipe) -> SweepFolder | None:
    """The sweep folder this run would resume, if there is one (its SFT baseline may be reused)."""
    folder = SweepFolder(root / recipe.name)
    return folder if folder.exists() else None


def _run_processes(
    sweep: Sweep,
    envs: list[dict],
    storage: str | None,
    max_trials: int | None,
    progress: Progress,
    locate: Locate,
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
            args=(recipe_yaml, str(sweep.dir), storage, env, max_trials, events, locate),
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
    except Terminated:  # a Ctrl-C reaches the whole process group; a SIGTERM may reach this process only
        stop_processes(procs)
        raise
    finally:
        for proc in procs:
            proc.join(timeout=60)
    return [proc.exitcode for proc in procs if proc.exitcode]
