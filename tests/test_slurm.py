"""`posweep run --launcher slurm` on a real one-node SLURM cluster: the array, its resources, requeue, cancel.

The cluster (tests/slurm.py) is started once per session by the `slurm` fixture; the study lives in a
throwaway PostgreSQL server (tests/postgres.py), its URL in an environment variable the jobs inherit, as
the README's cluster recipe has it. Every test drives the real `posweep` command on the tiny local model
of test_engine; the jobs are real `sbatch` array tasks that run `posweep worker` through submitit.
"""

from __future__ import annotations

import json
import pickle
import re
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from slurm import KILL_WAIT_S, PARTITION, REQUEUE_DELAY_S
from test_distributed import (
    EVENT,
    PG_VARIABLE,
    TRAIN,
    assert_all_complete,
    assert_no_secret,
    assert_ran_once,
    history,
    inputs,
    pg_url,
    postgres,
    procs,
    study_of,
    sweep_recipe,
    wait_for,
)
from test_engine import run

__all__ = ["inputs", "pg_url", "postgres", "procs"]  # fixtures shared with test_distributed

RESOURCES = {"partition": PARTITION, "gpus_per_worker": 0, "cpus_per_worker": 1, "mem_gb": 1, "time_min": 7}
LONG = {**TRAIN, "max_steps": 200}
SHOWN = ("ArrayTaskId", "TimeLimit", "NumCPUs", "CPUs/Task", "MinMemoryNode", "TresPerNode", "GRES")


def submit(procs, recipe: Path, results: Path, workers: int, url: str) -> list[str]:
    """`posweep run --launcher slurm`; the job ids it printed: ARRAY_TASK each, or one plain job id."""
    submitting = procs.start(
        "run", recipe, "--results", results, "--launcher", "slurm", "--workers", workers,
        env={PG_VARIABLE: url},
    )  # fmt: skip
    output = procs.finish(submitting, timeout=120)
    found = re.search(rf"submitted {workers} SLURM worker jobs for .*: (.+)$", output, re.MULTILINE)
    assert found, output
    jobs = found.group(1).split()
    array = jobs[0].split("_")[0]
    assert jobs == ([f"{array}_{k}" for k in range(workers)] if workers > 1 else [array]), jobs
    assert not EVENT.search(output), "the launcher itself ran trials"
    return jobs


def array_of(jobs: list[str]) -> str:
    """The SLURM job id of the array (of the one job)."""
    return jobs[0].split("_")[0]


def wait_until_gone(slurm, tasks: list[str], timeout: float) -> None:
    """Wait until squeue no longer lists any task of the array."""
    array = array_of(tasks)
    wait_for(
        lambda: not [job for job in slurm.queued() if job.split("_")[0] == array],
        timeout,
        f"SLURM array {array} to leave the queue",
    )


def job_logs(sweep: Path) -> str:
    """Everything the array's tasks printed (submitit's per-task logs)."""
    return "".join(path.read_text() for path in sorted((sweep / "slurm").rglob("*_log.*")))


def ends(slurm, jobs: list[str]) -> dict[str, list[tuple[str, str]]]:
    """job id -> [(JobState, ExitCode)] of each end SLURM logged for it (jobcomp), oldest first."""
    found: dict[str, list[tuple[str, str]]] = {}
    for record in slurm.ended():
        task = f"{record.get('ArrayJobId')}_{record.get('ArrayTaskId')}"
        job = task if task in jobs else record["JobId"]
        if job in jobs:
            found.setdefault(job, []).append((record["JobState"], record["ExitCode"]))
    return found


def running_trials(sweep: Path, study) -> dict[str, int]:
    """trial id -> worker pid of each trial a worker is training right now (started, no metrics yet)."""
    running = {}
    for trial_id, runs in history(sweep, None, study).items():
        state, attrs = runs[-1]
        folder = sweep / "trials" / trial_id
        started = (folder / "params.json").exists() and not (folder / "metrics.json").exists()
        if state == "RUNNING" and attrs.get("pid") and started:
            running[trial_id] = attrs["pid"]
    return running


@pytest.mark.slow
def test_a_real_slurm_array_runs_every_trial_once_with_the_recipes_resources(
    inputs, tmp_path, slurm, postgres, pg_url, procs
):
    """6 trials, 2 array tasks of 1 CPU and 1 GPU each (both run at once on the node), PostgreSQL study."""
    resources = {**RESOURCES, "gpus_per_worker": 1, "additional": {"comment": "posweep-array-test"}}
    recipe = sweep_recipe(inputs, "array", 6, storage=f"env:{PG_VARIABLE}", slurm=resources)
    results, sweep = tmp_path / "results", tmp_path / "results" / "array"
    started = time.monotonic()
    tasks = submit(procs, recipe, results, 2, pg_url)
    submitted_s = time.monotonic() - started
    array = array_of(tasks)

    def both_running():
        shown = slurm.jobs(array)
        listed = sorted(job for job in slurm.queued() if job in tasks) == tasks
        return listed and [job["JobState"] for job in shown] == ["RUNNING", "RUNNING"] and shown

    shown = wait_for(both_running, 120, "squeue to list both array tasks and scontrol to show them running")
    assert sorted(f"{job['ArrayJobId']}_{job['ArrayTaskId']}" for job in shown) == tasks, shown
    for job in shown:
        assert (job["JobName"], job["Partition"]) == ("posweep-array", PARTITION), job
        assert job["ArrayTaskThrottle"] == "2", job
        assert (job["TimeLimit"], job["NumCPUs"], job["CPUs/Task"]) == ("00:07:00", "1", "1"), job
        assert (job["MinMemoryNode"], job["Comment"]) == ("1G", "posweep-array-test"), job
        assert job["TRES"] == "cpu=1,mem=1G,node=1,billing=1", job
        assert job["TresPerNode"] == "gres:gpu:1", job
    assert sorted(job["GRES"] for job in shown) == ["gpu:1(IDX:0)", "gpu:1(IDX:1)"], "not one GPU each"
    wait_until_gone(slurm, tasks, 300)
    finished_s = time.monotonic() - started
    assert ends(slurm, tasks) == {task: [("COMPLETED", "0:0")] for task in tasks}
    for task in tasks:
        result = sweep / "slurm" / task / f"{task}_0_result.pkl"
        assert pickle.loads(result.read_bytes()) == ("success", 0), task
    logs = job_logs(sweep)
    assert_ran_once(sweep, pg_url, recipe, logs)
    for task in tasks:
        own = "".join(path.read_text() for path in (sweep / "slurm" / task).glob("*_log.*"))
        assert EVENT.search(own), f"array task {task} ran no trial"
    status = run("status", sweep)
    assert "6 complete of 6 planned" in status.output, status.output
    assert_no_secret(postgres.password, sweep, procs.outputs() + logs)
    print(f"slurm array: submitted in {submitted_s:.1f}s, 6 trials done by 2 tasks in {finished_s:.1f}s")
    for job in shown:
        print("scontrol show job: " + " ".join(f"{key}={job[key]}" for key in SHOWN))


class Preemption(NamedTuple):
    trial: str
    pid: int
    recorded_s: float
    """from the command to the trial recorded interrupted"""
    rerun_s: float
    """from the command to the job running again"""


def preempt(
    slurm, sweep: Path, study, job: str, command: list[str], restarts: int, earlier: set[int]
) -> Preemption:
    """Wait for the job to train a trial in a process not in `earlier`, run `command JOB`; check the trial
    is recorded interrupted within KillWait, and SLURM requeues the job and runs it again."""

    def training():
        found = {trial: pid for trial, pid in running_trials(sweep, study).items() if pid not in earlier}
        return next(iter(found.items()), None)

    victim, pid = wait_for(training, 240, f"job {job} to train a trial")
    sent = time.monotonic()
    slurm.command(*command, job)

    def recorded():
        runs = history(sweep, None, study)[victim]
        return [attrs for state, attrs in runs if state == "FAIL" and attrs.get("pid") == pid]

    (attrs,) = wait_for(recorded, KILL_WAIT_S, f"trial {victim} to be recorded interrupted")
    recorded_s = time.monotonic() - sent
    assert (attrs["state"], attrs["reason"]) == ("interrupted", "terminated"), attrs
    wait_for(
        lambda: (shown := slurm.jobs(job)[0])["Restarts"] == str(restarts) and shown["JobState"] == "RUNNING",
        REQUEUE_DELAY_S + 60,
        f"SLURM to requeue job {job} and run it again",
    )
    return Preemption(victim, pid, recorded_s, time.monotonic() - sent)


@pytest.mark.slow
def test_a_worker_job_requeued_by_slurm_or_by_itself_retrains_only_its_interrupted_trial(
    inputs, tmp_path, slurm, pg_url, procs
):
    """The one worker job is preempted twice mid-trial: `scontrol requeue` (SLURM sends SIGTERM and requeues
    it, as a preemption does), then in its rerun `scancel --signal=USR2` (what SLURM sends ahead of the time
    limit: submitit checkpoints the job and requeues it itself). Each time the trial is recorded interrupted
    within KillWait and SLURM runs the job again; the last run finishes the sweep, each interrupted trial
    trained once more and no other trial twice."""
    recipe = sweep_recipe(inputs, "requeue", 3, storage=f"env:{PG_VARIABLE}", train=LONG, slurm=RESOURCES)
    sweep = tmp_path / "results" / "requeue"
    (job,) = submit(procs, recipe, tmp_path / "results", 1, pg_url)
    study = study_of(sweep, pg_url)
    by_slurm = preempt(slurm, sweep, study, job, ["scontrol", "requeue"], 1, set())
    by_itself = preempt(slurm, sweep, study, job, ["scancel", "--signal=USR2"], 2, {by_slurm.pid})
    wait_until_gone(slurm, [job], 300)
    assert ends(slurm, [job])[job][-1] == ("COMPLETED", "0:0")
    logs = job_logs(sweep)
    assert logs.count(f"JOB {job} ON {slurm.node} CANCELLED AT") == 2, logs[-3000:]
    assert logs.count(f"Requeued job {job} ") == 1, "submitit did not requeue the job on SIGUSR2"
    interrupted = Counter([by_slurm.trial, by_itself.trial])
    stop, done = ("FAIL", "interrupted", "terminated"), ("COMPLETE", "complete", None)
    for trial_id, attempts in history(sweep, pg_url).items():
        states = [(state, attrs["state"], attrs["reason"]) for state, attrs in attempts]
        assert states == [stop] * interrupted[trial_id] + [done], trial_id
    assert_all_complete(sweep, recipe, attempts={t: n + 1 for t, n in interrupted.items()})
    for what, seen in (("scontrol requeue", by_slurm), ("SIGUSR2", by_itself)):
        print(f"slurm {what}: trial interrupted in {seen.recorded_s:.1f}s, job rerun in {seen.rerun_s:.1f}s")


@pytest.mark.slow
def test_scancel_of_the_array_leaves_interrupted_trials_that_a_local_run_finishes(
    inputs, tmp_path, slurm, pg_url, procs, monkeypatch
):
    """scancel of the whole array while both tasks train: both trials interrupted, status names them, and
    `posweep run` on this machine (no SLURM) trains what is left, each interrupted trial once more."""
    recipe = sweep_recipe(inputs, "cancel", 4, storage=f"env:{PG_VARIABLE}", train=LONG, slurm=RESOURCES)
    results, sweep = tmp_path / "results", tmp_path / "results" / "cancel"
    tasks = submit(procs, recipe, results, 2, pg_url)
    study = study_of(sweep, pg_url)
    running = wait_for(
        lambda: (found := running_trials(sweep, study)) and len(set(found.values())) == 2 and found,
        240,
        "both array tasks to train a trial",
    )
    slurm.command("scancel", array_of(tasks))
    wait_until_gone(slurm, tasks, KILL_WAIT_S + 30)
    last = {task: states[-1][0] for task, states in ends(slurm, tasks).items()}
    assert last == dict.fromkeys(tasks, "CANCELLED"), last
    runs = history(sweep, pg_url)
    for trial_id in running:
        state, attrs = runs[trial_id][-1]
        assert (state, attrs["state"], attrs["reason"]) == ("FAIL", "interrupted", "terminated"), trial_id
    assert not [t for t, r in runs.items() if r[-1][0] == "RUNNING"], "a trial was left running"
    status = run("status", sweep)
    assert status.exit_code == 0, status.output
    named = set(re.findall(r"^\s*(\S+)\s+\S+\s+interrupted\s", status.output, re.MULTILINE))
    assert named == set(running), status.output
    monkeypatch.setenv(PG_VARIABLE, pg_url)
    final = run("run", recipe, "--results", results, "-q")
    assert final.exit_code == 0, final.output
    assert_all_complete(sweep, recipe, attempts=dict.fromkeys(running, 2))
    runs = history(sweep, pg_url)
    assert all([state for state, _ in runs[t]] == ["FAIL", "COMPLETE"] for t in running), runs
    print(f"slurm scancel: {len(running)} trials interrupted, {json.dumps(sorted(running))}")
