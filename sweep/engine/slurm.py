"""SLURM: submit an array of posweep workers with submitit; each joins the sweep's study and runs trials.

The study must live in a storage every node reaches (PostgreSQL), and the sweep folder on a shared
filesystem. A storage URL is handed to the jobs through the environment (SLURM exports it), never
written into submitit's job files.

For a dry run without a cluster, the environment variable POSWEEP_SUBMITIT_CLUSTER=local makes submitit
start the workers as local processes instead of SLURM jobs (submitit's local executor); no SLURM is
involved, so it proves nothing about `sbatch` (the tests run a real one-node cluster for that).

Preemption and time limits: each job is a `WorkerJob`, a submitit Checkpointable. When SLURM (or the local
executor) sends submitit's requeue signal (SIGUSR2 by default), the running trial is recorded as
interrupted first, then submitit's own handler checkpoints the job and requeues it, and the requeued job
resumes the sweep (the interrupted trial runs again, not counted as a failure). SIGTERM (scancel) stops
the worker the same way, with exit code 143 and no requeue.

Trials over k GPUs (`execution.processes_per_trial`): a job of n GPUs runs n/k workers, one per group of k
GPUs, each in a process of its own that SIGTERM and the requeue signal reach.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from sweep.engine.internals import submitit_requeue_signal
from sweep.engine.launch import gpu_groups
from sweep.engine.queue import Sweep
from sweep.engine.workers import run_worker
from sweep.errors import UserError
from sweep.results import SweepFolder
from sweep.signals import EXIT_TERMINATED, Terminated, graceful_stops, stop_now, stop_processes
from sweep.spec.launching import launched, slurm_gpus
from sweep.spec.recipe import Locate, Recipe, SlurmSpec, as_given

try:
    from submitit.helpers import Checkpointable
except ImportError:  # submitit is the optional `slurm` extra; submit_workers says so
    Checkpointable = object


class WorkerJob(Checkpointable):
    """One SLURM array task: `posweep worker` on a sweep, requeued through submitit when preempted."""

    def __call__(self, folder: str, storage: str | None, locate: Locate = as_given) -> int:
        requeue_signal = submitit_requeue_signal()
        requeue = signal.getsignal(requeue_signal)
        preempted = []

        def stop(signum: int, frame) -> None:
            preempted.append(signum)
            stop_now(signum, frame)

        signal.signal(requeue_signal, stop)
        groups = job_groups(folder)
        try:
            if len(groups) > 1:
                code = _run_groups(groups, folder, storage, locate)
            else:
                code = run_worker(folder, storage, None, True, locate)
        except Terminated:
            code = EXIT_TERMINATED
        if preempted and callable(requeue):
            requeue(preempted[0], None)
        return code


def job_groups(folder: str) -> list[str]:
    """The trial groups (CUDA_VISIBLE_DEVICES each) of the GPUs SLURM gave this job: with k processes per
    trial, a job of n GPUs runs n/k workers at once; none when its trials run on one GPU or on the CPU."""
    import yaml

    text = SweepFolder(folder).read_recipe()
    if text is None:  # not a sweep folder: run_worker says so
        return []
    recipe = Recipe.model_validate(yaml.safe_load(text))
    visible = [gpu for gpu in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu]
    if not launched(recipe) or recipe.execution.devices == "cpu" or not visible:
        return []
    return gpu_groups(visible, recipe.execution.processes_per_trial)


def _run_groups(groups: list[str], folder: str, storage: str | None, locate: Locate) -> int:
    """One `posweep worker` process per trial group; SIGTERM (and the requeue signal) reach every one of them,
    which record their running trials interrupted. The exit code is the first worker's that did not end 0."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_group_worker, args=(g, folder, storage, locate)) for g in groups]
    for worker in workers:
        worker.start()
    with graceful_stops():
        try:
            for worker in workers:
                worker.join()
        except Terminated:
            stop_processes(workers)
            for worker in workers:
                worker.join()
            raise
    return next((worker.exitcode for worker in workers if worker.exitcode), 0)


def _group_worker(group: str, folder: str, storage: str | None, locate: Locate) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = group
    sys.exit(run_worker(folder, storage, None, True, locate))


STORAGE_VARIABLE = "POSWEEP_STORAGE_URL"
CLUSTER_VARIABLE = "POSWEEP_SUBMITIT_CLUSTER"


def submit_workers(
    sweep: Sweep,
    storage: str | None,
    workers: int,
    spec: SlurmSpec,
    cluster: str | None = None,
    locate: Locate = as_given,
) -> list[str]:
    """Submit `workers` array tasks running `posweep worker` on this sweep; return their job ids."""
    cluster = cluster or os.environ.get(CLUSTER_VARIABLE) or None
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install 'posweep[slurm]'") from None
    if storage is None and cluster != "local":
        raise UserError(
            "--launcher slurm needs a shared study storage: pass --storage postgresql://... "
            "(or execution.storage: env:VAR)"
        )
    if storage is not None and not storage.startswith("env:"):
        os.environ[STORAGE_VARIABLE] = storage
        storage = f"env:{STORAGE_VARIABLE}"
    executor = submitit.AutoExecutor(folder=Path(sweep.dir) / "slurm" / "%j", cluster=cluster)
    parameters = {
        "name": f"posweep-{sweep.dir.name}",
        "timeout_min": spec.time_min,
        "gpus_per_node": slurm_gpus(sweep.recipe),
        "cpus_per_task": spec.cpus_per_worker,
        "mem_gb": spec.mem_gb,
    }
    if executor.cluster == "slurm":
        parameters |= {
            "slurm_array_parallelism": workers,
            "slurm_partition": spec.partition,
            "slurm_account": spec.account,
            "slurm_qos": spec.qos,
            "slurm_constraint": spec.constraint,
            "slurm_additional_parameters": spec.additional,
        }
    executor.update_parameters(**{k: v for k, v in parameters.items() if v not in (None, {})})
    with executor.batch():
        jobs = [executor.submit(WorkerJob(), str(sweep.dir), storage, locate) for _ in range(workers)]
    return [str(job.job_id) for job in jobs]
