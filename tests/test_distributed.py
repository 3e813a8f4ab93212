"""Scale-out and faults: many workers on one PostgreSQL study, kill -9 and resume, secrets, SLURM's dry run.

Every test drives the real `posweep` command in subprocesses on the tiny local model of test_engine.
The PostgreSQL tests start a throwaway server (tests/postgres.py); they skip where PostgreSQL is not
installed, and fail instead under CI. SLURM itself is proved on a real cluster in test_slurm.py.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from postgres import postgres_server
from services import free_port
from test_engine import inputs, run, trial_files, write_recipe

from sweep.spec.plan import plan_recipe
from sweep.spec.validate import load_recipe

__all__ = ["inputs"]  # the engine tests' module fixture (tiny model, reward model, data), used here too

PG_VARIABLE = "POSWEEP_TEST_PG"
TRAIN = {"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 48}
EVAL = {"max_new_tokens": 4, "batch_size": 8, "bootstrap": 50}
EVENT = re.compile(r"^\[\d+/\d+\] (\S+)  complete", re.MULTILINE)


def grid(n: int) -> dict:
    """A DPO grid of n trials (one beta each)."""
    return {"dpo": {"beta": [round(0.1 * (k + 1), 2) for k in range(n)], "learning_rate": [1e-3]}}


def sweep_recipe(
    inputs: Path,
    name: str,
    n: int,
    storage: str | None = None,
    train: dict = TRAIN,
    slurm: dict | None = None,
) -> Path:
    """A CPU recipe of n tiny trials over the engine tests' inputs."""
    execution = {"devices": "cpu", "storage": storage, "slurm": slurm}
    return write_recipe(
        inputs,
        name,
        grid(n),
        train=train,
        eval=EVAL,
        execution={key: value for key, value in execution.items() if value is not None},
    )


def planned(recipe: Path) -> list[str]:
    """The recipe's trial ids, sorted."""
    return sorted(t.trial_id for t in plan_recipe(load_recipe(recipe)).trials)


class Processes:
    """The posweep processes of one test, each writing to its own log file; leftovers die at teardown."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started: list[subprocess.Popen] = []

    def start(self, *args: object, env: dict | None = None) -> subprocess.Popen:
        """Start `posweep ARGS...` with its stdout and stderr going to a log file."""
        log = self.logs / f"{len(self.started):02d}-{args[0]}.log"
        with log.open("w") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "sweep", *map(str, args)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        process.log = log
        self.started.append(process)
        return process

    def finish(self, process: subprocess.Popen, timeout: float, code: int = 0) -> str:
        """Wait for a process (killing it after `timeout`); check its exit code; return its output."""
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"{process.args[3:]} ran over {timeout}s:\n{process.log.read_text()[-3000:]}")
        output = process.log.read_text()
        assert process.returncode == code, (
            f"{process.args[3:]} exited {process.returncode}:\n{output[-3000:]}"
        )
        return output

    def outputs(self) -> str:
        """Everything every process printed."""
        return "".join(log.read_text() for log in sorted(self.logs.iterdir()))

    def kill_all(self) -> None:
        """Kill (by pid) and reap any process of this test still running."""
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def procs(tmp_path):
    processes = Processes(tmp_path / "logs")
    yield processes
    processes.kill_all()


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_url(postgres, request) -> str:
    """A fresh database on the test server, one per test."""
    return postgres.create_database(re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:60])


def study_of(sweep: Path, url: str | None):
    """The sweep's Optuna study, opened read-only from the test process."""
    import optuna

    from sweep.engine.storage import open_storage

    return optuna.load_study(study_name=sweep.name, storage=open_storage(url, sweep))


def history(sweep: Path, url: str | None, study=None) -> dict[str, list[tuple[str, dict]]]:
    """trial id -> [(Optuna state, posweep attrs)] for each Optuna trial of the sweep, oldest first (from
    `study`, the sweep's study held open by a caller that polls, else opened here)."""
    from sweep.engine.queue import ATTR

    runs: dict[str, list[tuple[str, dict]]] = {}
    for trial in (study if study is not None else study_of(sweep, url)).get_trials(deepcopy=False):
        attrs = trial.user_attrs[ATTR]
        runs.setdefault(attrs["trial_id"], []).append((trial.state.name, attrs))
    return runs


def assert_all_complete(sweep: Path, recipe: Path, attempts: dict[str, int] | None = None) -> dict:
    """Every planned trial has exactly one folder with a complete metrics.json of the expected attempt."""
    metrics = trial_files(sweep)
    assert sorted(metrics) == planned(recipe)
    for trial_id, record in metrics.items():
        params = json.loads((sweep / "trials" / trial_id / "params.json").read_text())
        expected = (attempts or {}).get(trial_id, 1)
        assert record is not None and record["state"] == "complete", (trial_id, record)
        assert record["attempt"] == params["attempt"] == expected, (trial_id, record["attempt"], expected)
    return metrics


def assert_ran_once(sweep: Path, url: str | None, recipe: Path, outputs: str) -> None:
    """Each planned trial was trained by exactly one worker: one Optuna trial, COMPLETE, one event line."""
    assert_all_complete(sweep, recipe)
    runs = history(sweep, url)
    assert sorted(runs) == planned(recipe)
    assert {trial_id: [state for state, _ in r] for trial_id, r in runs.items()} == {
        trial_id: ["COMPLETE"] for trial_id in runs
    }
    events = EVENT.findall(outputs)
    assert sorted(events) == planned(recipe), "a trial was reported by more than one worker"


def mtime(path: Path) -> int:
    """A file's modification time in ns (0 when it does not exist)."""
    return path.stat().st_mtime_ns if path.exists() else 0


def wait_for(condition, timeout: float, what: str, processes=()):
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        for process in processes:
            assert process.poll() is None, (
                f"{process.args[3:]} ended early:\n{process.log.read_text()[-3000:]}"
            )
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def test_storage_urls_are_masked_and_can_come_from_the_environment(tmp_path, monkeypatch):
    from sweep.engine.storage import mask_url, open_storage, storage_url
    from sweep.errors import UserError

    assert mask_url("postgresql://u:s3cr%40t@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql://u@h/db?sslmode=require&password=s3cret") == (
        "postgresql://u@h/db?sslmode=require&password=***"
    )
    assert mask_url("sqlite:///study.db") == "sqlite:///study.db"
    monkeypatch.setenv(PG_VARIABLE, "postgresql://u:s3cret@h/db")
    assert storage_url(f"env:{PG_VARIABLE}") == "postgresql://u:s3cret@h/db"
    monkeypatch.delenv(PG_VARIABLE)
    with pytest.raises(UserError, match=f"{PG_VARIABLE} is not set"):
        storage_url(f"env:{PG_VARIABLE}")
    with pytest.raises(UserError) as refused:
        open_storage(f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db", tmp_path)
    assert "s3cret" not in str(refused.value) and "postgresql://u:***@127.0.0.1:" in str(refused.value)


# --------------------------------------------------------------------------- claims under contention


CLAIMER = """
import sys
from pathlib import Path

import yaml

from sweep.spec.recipe import Recipe
from sweep.engine.folder import open_sweep_folder
from sweep.engine.queue import claim, reconcile

folder = Path(sys.argv[1])
recipe = Recipe.model_validate(yaml.safe_load((folder / "recipe.yaml").read_text()))
sweep = open_sweep_folder(recipe, folder, sys.argv[2] if len(sys.argv) > 2 else None)
reconcile(sweep)
while (trial := claim(sweep)) is not None:
    print(trial.user_attrs["posweep"]["trial_id"], flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_concurrent_workers_claim_each_grid_point_exactly_once(inputs, tmp_path, request, backend):
    """Four processes reconcile the same fresh study at once, then claim until none is left (no training).

    Claimed trials stay RUNNING without a worker stamp, as between a claim and its first heartbeat:
    no reconcile may take them for dead and enqueue them again.
    """
    from sweep.engine.folder import open_sweep

    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    recipe = sweep_recipe(inputs, f"claims-{backend}", 40)
    sweep = open_sweep(load_recipe(recipe), tmp_path, url)
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(sweep.dir), *([f"env:{PG_VARIABLE}"] if url else [])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, PG_VARIABLE: url or ""},
        )
        for _ in range(4)
    ]
    claimed = []
    for claimer in claimers:
        out, err = claimer.communicate(timeout=120)
        assert claimer.returncode == 0, err
        claimed += out.split()
    assert sorted(claimed) == planned(recipe)
    assert [len(runs) for runs in history(sweep.dir, url).values()] == [1] * 40, "a point was enqueued twice"


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.slow
def test_three_workers_share_one_postgres_study_and_never_show_its_password(
    inputs, tmp_path, postgres, pg_url, procs
):
    """Two `posweep run` started together (one with two worker processes) create and share one study.

    The storage URL, password included, is written into the recipe: files, status, report and
    connection errors must all mask it.
    """
    recipe = sweep_recipe(inputs, "pg-grid", 9, storage=pg_url)
    assert postgres.password in recipe.read_text(), "the password checks below would prove nothing"
    results, sweep = tmp_path / "results", tmp_path / "results" / "pg-grid"
    pair = procs.start("run", recipe, "--results", results, "--workers", "2", "-q")
    single = procs.start("run", recipe, "--results", results, "-q")
    for process in (pair, single):
        procs.finish(process, timeout=240)
    assert_ran_once(sweep, pg_url, recipe, procs.outputs())
    status, report = run("status", sweep), run("report", sweep)  # in this process: the same CLI, no startup
    assert status.exit_code == 0 and "9 complete of 9 planned" in status.output
    assert report.exit_code == 0, report.output
    port = free_port()
    wrong_port = postgres.url(pg_url.rsplit("/", 1)[1], port=port)
    refused = run("run", recipe, "--results", results, "--storage", wrong_port)
    assert refused.exit_code == 2 and f"storage postgresql://posweep:***@127.0.0.1:{port}/" in refused.output
    assert run("worker", sweep, "--storage", wrong_port).exit_code == 2
    assert json.loads((sweep / "sweep.json").read_text())["storage"] == pg_url.replace(
        postgres.password, "***"
    )
    assert "posweep:***@" in (sweep / "recipe.yaml").read_text()
    printed = procs.outputs() + "".join(r.output for r in (status, report, refused))
    assert_no_secret(postgres.password, sweep, printed)


def assert_no_secret(secret: str, folder: Path, printed: str) -> None:
    """No file under `folder` (any bytes) and no printed line contains `secret`."""
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert len(files) > 5
    leaks = [str(path.relative_to(folder)) for path in files if secret.encode() in path.read_bytes()]
    assert leaks == [], f"the storage password is written in {leaks}"
    assert secret not in printed, [line for line in printed.splitlines() if secret in line]


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_replaced_and_its_trial_retried(inputs, tmp_path, pg_url, procs):
    recipe = sweep_recipe(inputs, "pg-kill", 5, storage=f"env:{PG_VARIABLE}", train={**TRAIN, "max_steps": 8})
    env = {PG_VARIABLE: pg_url}
    sweep = tmp_path / "results" / "pg-kill"
    # the sweep exists before the runner and the workers start, so they all start cold (a runner started
    # first is warm from its preflight when sweep.json appears, and may finish every trial alone)
    first = procs.start("run", recipe, "--results", tmp_path / "results", "-q", "--max-trials", "1", env=env)
    procs.finish(first, timeout=240)
    runner = procs.start("run", recipe, "--results", tmp_path / "results", "-q", env=env)
    workers = [
        procs.start("worker", sweep, "--storage", f"env:{PG_VARIABLE}", "-q", env=env) for _ in range(2)
    ]
    by_pid = {w.pid: w for w in workers}
    study = study_of(sweep, pg_url)

    def a_worker_mid_trial():
        from optuna.trial import TrialState

        from sweep.engine.queue import ATTR

        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs.get(ATTR, {})
            folder = sweep / "trials" / attrs.get("trial_id", "?")
            started = (folder / "params.json").exists() and not (folder / "metrics.json").exists()
            if attrs.get("pid") in by_pid and started:
                return by_pid[attrs["pid"]], attrs["trial_id"]
        return None

    victim, killed_trial = wait_for(a_worker_mid_trial, 180, "a worker to start a trial", [runner, *workers])
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    for process in [runner, *workers]:
        if process is not victim:
            procs.finish(process, timeout=240)
    assert_all_complete(sweep, recipe, attempts={killed_trial: 2})
    runs = history(sweep, pg_url)
    assert [state for state, _ in runs[killed_trial]] == ["FAIL", "COMPLETE"]
    died = runs[killed_trial][0][1]
    assert (died["state"], died["reason"], died["pid"]) == ("interrupted", "worker_died", victim.pid)
    assert all([state for state, _ in r] == ["COMPLETE"] for t, r in runs.items() if t != killed_trial)


@pytest.mark.slow
def test_the_slurm_dry_run_starts_local_workers_that_finish_the_sweep(
    inputs, tmp_path, postgres, pg_url, procs
):
    """POSWEEP_SUBMITIT_CLUSTER=local: submitit's local executor runs the workers as local processes (the
    README's dry run; test_slurm.py proves SLURM itself); the password URL is passed on the command line."""
    recipe = sweep_recipe(
        inputs,
        "slurm",
        4,
        slurm={"gpus_per_worker": 0, "cpus_per_worker": 1, "mem_gb": 1, "time_min": 10},
    )
    sweep = tmp_path / "results" / "slurm"
    env = {"POSWEEP_SUBMITIT_CLUSTER": "local"}
    started = time.monotonic()
    submit = procs.start(
        "run",
        recipe,
        "--results",
        tmp_path / "results",
        "--launcher",
        "slurm",
        "--workers",
        "2",
        "--storage",
        pg_url,
        env=env,
    )
    output = procs.finish(submit, timeout=120)
    submit_s = time.monotonic() - started
    jobs = re.search(r"submitted 2 SLURM worker jobs for .*: (\d+) (\d+)$", output, re.MULTILINE)
    assert jobs, output
    assert not EVENT.search(output), "the launcher itself ran trials"
    results = [sweep / "slurm" / job / f"{job}_0_result.pkl" for job in jobs.groups()]
    try:
        wait_for(lambda: list(sweep.glob("trials/*/metrics.json")), 240, "a SLURM worker to finish a trial")
        status = procs.finish(procs.start("status", sweep), timeout=60)
        assert re.search(r"\d complete.* of 4 planned", status), status
        wait_for(lambda: all(path.exists() for path in results), 240, "the SLURM worker jobs to finish")
    finally:
        for job in jobs.groups():
            if not (sweep / "slurm" / job / f"{job}_0_result.pkl").exists():
                os.kill(int(job), signal.SIGTERM)
    for path in results:
        assert pickle.loads(path.read_bytes()) == ("success", 0), path.parent
    logs = "".join(path.read_text() for path in sorted((sweep / "slurm").rglob("*_log.*")))
    assert_ran_once(sweep, pg_url, recipe, logs)
    assert_no_secret(postgres.password, sweep, procs.outputs() + logs)
    print(f"slurm: submit returned in {submit_s:.1f}s")


# --------------------------------------------------------------------------- the journal file (one machine)


@pytest.mark.slow
def test_run_killed_at_five_random_moments_resumes_to_exactly_the_plan(inputs, tmp_path, procs):
    """kill -9 of `posweep run` (journal storage), 0-1.5 s after it opened the sweep or started a trial."""
    seed = int(os.environ.get("POSWEEP_KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    recipe = sweep_recipe(inputs, "kill5", 20)
    sweep = tmp_path / "results" / "kill5"
    seen: dict[str, dict] = {}
    kills = []
    for anchor in ("trial", "open", "trial", "trial", "trial"):
        started = time.time_ns()
        process = procs.start("run", recipe, "--results", tmp_path / "results", "-q")

        def anchored(process=process, started=started, anchor=anchor) -> bool:
            watched = sweep.glob("trials/*/params.json") if anchor == "trial" else [sweep / "sweep.json"]
            return process.poll() is not None or any(mtime(path) >= started for path in watched)

        wait_for(anchored, 120, f"posweep run to reach: {anchor}")
        kills.append((anchor, round(rng.uniform(0, 1.5), 2)))
        time.sleep(kills[-1][1])
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        context = f"seed {seed}, kills {kills}"
        for params in sweep.glob("trials/*/params.json"):
            json.loads(params.read_text())
        for trial_id, record in trial_files(sweep).items():
            if record is not None and record["state"] == "complete":
                assert seen.setdefault(trial_id, record) == record, (trial_id, context)
    final = run("run", recipe, "--results", tmp_path / "results", "-q")  # the resume, in this process
    assert final.exit_code == 0, (final.output, context)
    metrics = trial_files(sweep)
    assert sorted(metrics) == planned(recipe), context
    assert all(m["state"] == "complete" for m in metrics.values()), context
    assert all(metrics[t] == m for t, m in seen.items()), f"a complete trial was retrained ({context})"
    runs = history(sweep, None)
    assert all([s for s, _ in r].count("COMPLETE") == 1 for r in runs.values()), (runs, context)
    assert all(s in ("COMPLETE", "FAIL") for r in runs.values() for s, _ in r), (runs, context)
    print(f"{context}; {len(seen)} trials complete before the last run")


@pytest.mark.slow
def test_sigterm_to_a_multi_worker_run_reaches_every_worker_process(inputs, tmp_path, procs):
    """`kill PID` of `posweep run --workers 2` only: the parent passes SIGTERM on; every running trial
    is recorded interrupted and the run exits 143."""
    recipe = sweep_recipe(inputs, "term2", 4, train={**TRAIN, "max_steps": 60})
    sweep = tmp_path / "results" / "term2"
    run = procs.start("run", recipe, "--results", tmp_path / "results", "--workers", "2", "-q")
    wait_for(lambda: len(list(sweep.glob("trials/*/params.json"))) >= 2, 240, "two trials to start", [run])
    time.sleep(0.5)
    signalled = time.monotonic()
    run.send_signal(signal.SIGTERM)
    output = procs.finish(run, timeout=60, code=143)
    assert time.monotonic() - signalled < 10, output
    states = {t: m and m["state"] for t, m in trial_files(sweep).items()}
    assert list(states.values()).count("interrupted") >= 1, (states, output)
    assert set(states.values()) <= {"complete", "interrupted"}, states
    runs = history(sweep, None)
    assert not [t for t, r in runs.items() if any(s == "RUNNING" for s, _ in r)], "a trial was left running"
