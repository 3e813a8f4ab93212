"""A throwaway one-node SLURM cluster for tests: munged, slurmctld and slurmd as root in a temporary folder.

This host is the controller and the only compute node (127.0.0.1, free ports; its CPUs and memory as
configured), partition `posweep`. The node also has two GPUs for SLURM to schedule, /dev/null and
/dev/zero: SLURM counts them out to jobs and sets CUDA_VISIBLE_DEVICES, nothing runs on them (the jobs
train on the CPU). Nothing needs cgroups, so it runs in containers: processes are tracked by
proctrack/linuxproc, tasks are not bound (task/none). There is no accounting database (slurmdbd), so
`sacct` has nothing to read: `squeue` and `scontrol show job` show the jobs, and SLURM logs every job end
(completed, cancelled, requeued) to a jobcomp/filetxt file. KillWait is 10 s (SIGTERM to SIGKILL), and a
requeued job may start again after 5 s (AuthInfo's `cred_expire`; SLURM's default is 120 s), picked up by a
scheduler that runs every second. Clients find the cluster through SLURM_CONF, which `slurm_cluster` sets
for its block (the jobs inherit it).

Debian's `slurm-wlm` and `munge` provide the programs (.ci/run installs them). Where they are missing,
or the cluster does not start, the tests skip, except under CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from services import free_port, unavailable

PARTITION = "posweep"
KILL_WAIT_S = 10
REQUEUE_DELAY_S = 5
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
GPU_FILES = ("/dev/null", "/dev/zero")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")

FIELD = re.compile(r"(\S+?)=(\S*)")


def find_programs() -> dict[str, str]:
    """Each daemon and client program by name (sbin included); those not found are left out."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return {name: found for name in DAEMONS + CLIENTS if (found := shutil.which(name, path=path))}


def fields(line: str) -> dict[str, str]:
    """The KEY=VALUE fields of one line of `scontrol -o show ...` or of the jobcomp file."""
    return dict(FIELD.findall(line))


class SlurmCluster:
    """One SLURM cluster owned by a test session; `env` reaches it, `jobs` and `ended` report on it."""

    def __init__(self, programs: dict[str, str]):
        self.programs = programs
        self.root = Path(tempfile.mkdtemp(prefix="posweep-slurm-"))
        self.root.chmod(0o755)  # munged wants its socket's folders searchable by all
        self.conf = self.root / "slurm.conf"
        self.jobcomp = self.root / "log" / "jobcomp.txt"
        self.node = socket.gethostname().split(".")[0]
        self.cpus = len(os.sched_getaffinity(0))
        self.env = {"SLURM_CONF": str(self.conf)}
        self.daemons: dict[str, subprocess.Popen] = {}

    def _config(self) -> str:
        run, log = self.root / "run", self.root / "log"
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        controller_port = free_port()
        while (node_port := free_port()) == controller_port:
            pass
        lines = {
            "ClusterName": "posweep-test",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": controller_port,
            "SlurmdPort": node_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={run / 'munge.socket'},cred_expire={REQUEUE_DELAY_S}",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": run / "slurmctld.pid",
            "SlurmdPidFile": run / "slurmd.pid",
            "SlurmctldLogFile": log / "slurmctld.log",
            "SlurmdLogFile": log / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "SlurmdParameters": "config_overrides",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU_Memory",
            "SchedulerType": "sched/builtin",
            "SchedulerParameters": "sched_interval=1",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/filetxt",
            "JobCompLoc": self.jobcomp,
            "KillWait": KILL_WAIT_S,
            "MinJobAge": 600,
            "ReturnToService": 2,
            "MpiDefault": "none",
            "GresTypes": "gpu",
        }
        node = (
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={memory_mb} "
            f"Gres=gpu:{len(GPU_FILES)} State=UNKNOWN"
        )
        partition = f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=60 State=UP"
        return "".join(f"{key}={value}\n" for key, value in lines.items()) + f"{node}\n{partition}\n"

    def _start(self, name: str, *args: str) -> None:
        log = (self.root / "log" / f"{name}.out").open("w")
        self.daemons[name] = subprocess.Popen(
            [self.programs[name], *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()

    def start(self) -> None:
        """Write a munge key and slurm.conf, start the daemons (foreground), wait until the node is idle and
        a job (`srun true`) has run."""
        for folder in ("munge", "run", "log", "state", "spool"):
            (self.root / folder).mkdir()
        (self.root / "munge").chmod(0o700)
        (self.root / "run").chmod(0o755)
        key = self.root / "munge" / "munge.key"
        with os.fdopen(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as handle:
            handle.write(secrets.token_bytes(1024))
        self.conf.write_text(self._config())
        gpus = "".join(f"Name=gpu File={path}\n" for path in GPU_FILES)
        (self.root / "gres.conf").write_text("AutoDetect=off\n" + gpus)  # slurmd reads it beside slurm.conf
        munge, run, log = self.root / "munge", self.root / "run", self.root / "log"
        self._start(
            "munged",
            "--foreground",
            f"--key-file={key}",
            f"--socket={run / 'munge.socket'}",
            f"--pid-file={run / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}",
            f"--log-file={log / 'munged.log'}",
        )
        self._wait(lambda: (run / "munge.socket").exists(), "munged's socket")
        self._start("slurmctld", "-D", "-f", str(self.conf))
        self._wait(lambda: self.command("scontrol", "ping", check=False).returncode == 0, "slurmctld")
        self._start("slurmd", "-D", "-f", str(self.conf))
        self._wait(self.idle, f"node {self.node} to be idle in sinfo")
        self.command("srun", "--time=1", "--mem=16M", "true")  # a job runs: slurmstepd works here

    def _wait(self, condition, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            dead = [name for name, daemon in self.daemons.items() if daemon.poll() is not None]
            if dead or time.monotonic() > deadline:
                problem = f"{', '.join(dead)} exited" if dead else f"no {what} after {START_TIMEOUT_S}s"
                raise RuntimeError(f"{problem}; {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of every daemon's log (what a failed start prints)."""
        tails = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            tails.append(f"{path.name}: " + " | ".join(text))
        return "; ".join(tails)

    def command(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client on this cluster."""
        result = subprocess.run(
            [self.programs[name], *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, **self.env},
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
        return result

    def idle(self) -> bool:
        """Whether the node is up and runs nothing."""
        state = self.command("sinfo", "-h", "-N", "-n", self.node, "-o", "%t", check=False)
        return state.returncode == 0 and state.stdout.strip() == "idle"

    def jobs(self, job_id: str) -> list[dict[str, str]]:
        """`scontrol -d show job` of a job (each task of an array), as KEY=VALUE fields (GRES: the GPUs it
        holds, as gpu:N(IDX:...)); [] once forgotten."""
        shown = self.command("scontrol", "-d", "-o", "show", "job", job_id, check=False)
        return [fields(line) for line in shown.stdout.splitlines() if line.strip()]

    def queued(self) -> list[str]:
        """Every job id squeue lists (array tasks as ARRAY_TASK)."""
        return self.command("squeue", "-h", "-o", "%i").stdout.split()

    def ended(self) -> list[dict[str, str]]:
        """The jobcomp log: one record per job end (JobState COMPLETED, CANCELLED, REQUEUED, ...)."""
        if not self.jobcomp.exists():
            return []
        return [fields(line) for line in self.jobcomp.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        """Cancel every job and wait for its processes, stop the daemons (SIGKILL after a while), kill any
        process of a job still left."""
        if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.command("scancel", "--user", str(os.geteuid()), check=False)
                deadline = time.monotonic() + KILL_WAIT_S + 20
                while (self.queued() or self.leftovers()) and time.monotonic() < deadline:
                    time.sleep(0.2)
        for name in reversed(DAEMONS):
            daemon = self.daemons.get(name)
            if daemon is not None and daemon.poll() is None:
                daemon.terminate()
                try:
                    daemon.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
        for process in self.leftovers():
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[psutil.Process]:
        """Live processes of this cluster's jobs: slurmstepd (not a child of slurmd; it holds a socket and the
        log of this cluster's folder) and the jobs' own (this cluster's SLURM_CONF and a job id in their
        environment); the daemons and their children are not counted."""
        daemons = set()
        for daemon in self.daemons.values():
            with contextlib.suppress(psutil.Error):
                daemons |= {daemon.pid, *(child.pid for child in psutil.Process(daemon.pid).children(True))}
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.pid in daemons or process.status() == psutil.STATUS_ZOMBIE:
                    continue
                env = process.environ()
                job = env.get("SLURM_CONF") == str(self.conf) and "SLURM_JOB_ID" in env
                if job or self._holds_files_of_cluster(process):
                    found.append(process)
        return found

    def _holds_files_of_cluster(self, process: psutil.Process) -> bool:
        paths = [f.path for f in process.open_files()]
        paths += [c.laddr for c in process.net_connections("unix") if isinstance(c.laddr, str)]
        return any(Path(path).is_relative_to(self.root) for path in paths if path)


@contextlib.contextmanager
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A started cluster, SLURM_CONF pointing at it inside the block; always stopped and removed afterwards.
    Skips (or fails under CI) without SLURM."""
    programs = find_programs()
    missing = [name for name in DAEMONS + CLIENTS if name not in programs]
    if missing:
        unavailable(
            "SLURM", f"{', '.join(missing)} not found (apt-get install slurm-wlm munge, or run .ci/run)"
        )
    if os.geteuid() != 0:
        unavailable("SLURM", "slurmd must run as root to start jobs (run the tests as root)")
    cluster = SlurmCluster(programs)
    previous = os.environ.get("SLURM_CONF")
    try:
        try:
            cluster.start()
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
            unavailable("SLURM", f"could not start a one-node cluster: {error}")
        os.environ.update(cluster.env)
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        cluster.stop()


def main() -> int:
    """`python tests/slurm.py` (as root): the tests' cluster, up until Ctrl-C, to try posweep's SLURM path."""
    import pytest

    try:
        with slurm_cluster() as cluster:
            print(f"one-node SLURM cluster up, partition {PARTITION}, {cluster.cpus} CPUs; in another shell:")
            print(f"  export SLURM_CONF={cluster.conf}")
            print("Ctrl-C stops it (and cancels its jobs)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    except pytest.skip.Exception as error:
        print(error.msg)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
