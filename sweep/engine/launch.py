"""Launched trials: one trial over k processes, `accelerate launch`ed by the worker that claims it.

The worker keeps the claim (one per trial, not per rank) and its heartbeat; `TrialGroup.run` writes the
trial's job file, starts `accelerate launch` (torch.distributed underneath: NCCL on GPUs, gloo on CPU) on
`sweep.engine.rank` in a session of its own, waits, and reads the metrics.json rank 0 wrote. The group's
rendezvous port is chosen free, under a per-host lock in the sweep folder held until the group listens on it,
so two groups starting at once never pick the same port. A group that exits non-zero (a rank's exception or
NaN, a killed rank: the launcher then stops the others) is a failed trial, retried as any other. SIGTERM or
Ctrl-C to the worker is forwarded to the launcher, which stops every rank; what is still alive after
`STOP_S` seconds is killed, and the trial is recorded interrupted. A worker killed outright (SIGKILL, the
OOM killer) cannot forward anything, so every rank watches it (`watch_worker`) and, once it is gone, sends
the launcher the SIGTERM the worker would have sent: no orphaned group keeps training a trial that a rerun
claims again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from sweep.errors import UserError
from sweep.io import file_lock, utc_now, write_json
from sweep.results import SweepFolder
from sweep.spec.launching import read_accelerate_config, zero_stage
from sweep.spec.plan import TrialSpec
from sweep.spec.recipe import Recipe
from sweep.train.config import autocast_dtype
from sweep.train.outcome import Outcome, TrialResult, metrics_record, result_from

STOP_S = 8.0
"""How long the ranks get to stop after a SIGTERM before they are killed."""
RENDEZVOUS_S = 120.0
"""How long the port lock waits for a starting group to listen on its port."""
TAIL_CHARS = 20_000
LOG_PREFIX = "POSWEEP_LOG "
"""Lines of rank 0's log carry this prefix in the launcher's output, for the engine to relay."""
MIXED_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "none": "no"}


def gpu_groups(gpus: Sequence[int | str], k: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES of each trial group: consecutive runs of k of these GPUs."""
    if len(gpus) % k:
        raise UserError(
            f"execution.processes_per_trial: {k} does not divide the {len(gpus)} GPUs this machine shows"
        )
    return [",".join(str(gpu) for gpu in gpus[start : start + k]) for start in range(0, len(gpus), k)]


def gpu_envs(gpus: list[int], k: int, workers: int | None) -> list[dict[str, str]]:
    """One environment per worker, its trial group's GPUs in CUDA_VISIBLE_DEVICES; `workers` (default: one
    per group) beyond the groups share them round-robin."""
    groups = gpu_groups(gpus, k)
    count = workers or len(groups)
    return [{"CUDA_VISIBLE_DEVICES": groups[i % len(groups)], "POSWEEP_DEVICE": "cuda"} for i in range(count)]


class TrialGroup:
    """Runs claimed trials as process groups (the engine's side of launched trials), as `Worker.run` does."""

    def __init__(self, recipe: Recipe, sweep_dir: str | Path, device: str, log: Callable[[str], None]):
        self.recipe, self.device, self.log = recipe, device, log
        self.results = SweepFolder(sweep_dir)
        self.setup_s = 0.0

    def run(self, spec: TrialSpec, attempt: int = 1, report=None, waited_s: float = 0.0) -> TrialResult:
        """Run one trial over `execution.processes_per_trial` processes and return rank 0's result (`report`
        is unused: recipes with a pruner are rejected for launched trials; rank 0 records `waited_s`)."""
        folder = self.results.trial(spec.trial_id)
        recorded = folder.read_metrics()
        if recorded is not None and recorded.state == "complete":
            return result_from(recorded)
        started, clock = utc_now(), time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="posweep-group-") as scratch:
            job, output = Path(scratch) / "job.json", Path(scratch) / "output.log"
            write_json(job, {
                "recipe": self.recipe.dump(), "sweep": str(self.results.path), "spec": spec.to_json(),
                "attempt": attempt, "waited_s": waited_s, "device": self.device,
                "worker": identity(psutil.Process()),
            })  # fmt: skip
            with output.open("wb") as sink:
                launcher = self._start(job, sink)
                try:
                    code = launcher.wait()
                except KeyboardInterrupt:
                    stop_group(launcher)
                    self._record(spec, Outcome(state="interrupted"), started, clock, attempt, launcher)
                    raise
            text = output.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            if line.startswith(LOG_PREFIX):
                self.log(line[len(LOG_PREFIX) :])
        recorded = folder.read_metrics()
        if code == 0 and recorded is not None:
            return result_from(recorded)
        if recorded is not None and recorded.state == "failed":
            return result_from(recorded)  # rank 0 recorded its own failure
        message = f"the trial's process group exited with code {code} (a rank failed or was killed)"
        outcome = Outcome(
            state="failed", error={"type": "ProcessGroupError", "message": message, "reason": "rank"}
        )
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_traceback(f"{message}; the launcher's output ends:\n{text[-TAIL_CHARS:]}")
        self.log(f"{spec.trial_id}: failed: {message}")
        return self._record(spec, outcome, started, clock, attempt, launcher)

    def _start(self, job: Path, sink) -> subprocess.Popen:
        """Start the trial's group on a free port."""
        lock = self.results.cache / f"ports-{socket.gethostname()}.lock"
        return start_group(lock, lambda port: launch_command(self.recipe, port, self.device, job), sink)

    def _record(
        self, spec, outcome: Outcome, started: str, clock: float, attempt: int, launcher
    ) -> TrialResult:
        """Write the trial's metrics.json for a group that could not (killed, interrupted)."""
        worker = {"pid": os.getpid(), "launcher_pid": launcher.pid}
        record = metrics_record(spec.trial_id, outcome, started, clock, attempt, worker)
        folder = self.results.trial(spec.trial_id)
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_metrics(record)
        return result_from(record)


def launch_command(recipe: Recipe, port: int, device: str, job: Path) -> list[str]:
    """`accelerate launch` of one trial's ranks: k processes on one machine, rendezvous on `port`."""
    execution = recipe.execution
    precision = MIXED_PRECISION[autocast_dtype(recipe.train.precision, device)]
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", str(execution.processes_per_trial), "--num_machines", "1",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
        "--mixed_precision", precision, "--dynamo_backend", "no",
    ]  # fmt: skip
    if execution.accelerate_config is not None:
        command += ["--config_file", execution.accelerate_config]
        if zero_stage(read_accelerate_config(execution.accelerate_config)) is not None:
            command += ["--gradient_accumulation_steps", str(recipe.train.gradient_accumulation_steps)]
    elif execution.processes_per_trial > 1:
        command.append("--multi_gpu")  # torch.distributed.run underneath; the ranks pick gloo on CPU
    return [*command, "-m", "sweep.engine.rank", str(job)]


def start_group(lock: Path, command: Callable[[int], list[str]], sink) -> subprocess.Popen:
    """Start `command(port)` on a free port in a session of its own, holding `lock` until something listens
    on the port (or the command ended), so that groups starting at once on one host never share a port."""
    with file_lock(lock):
        port = free_port()
        launcher = subprocess.Popen(
            command(port), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + RENDEZVOUS_S
            while launcher.poll() is None and not listening(port) and time.monotonic() < deadline:
                time.sleep(0.1)
        except BaseException:  # a SIGTERM or Ctrl-C while it starts
            stop_group(launcher)
            raise
    return launcher


def free_port() -> int:
    """A TCP port no one listens on now (the caller holds the port lock until its group binds it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def listening(port: int) -> bool:
    """Whether a socket on this host listens on `port` (read from /proc/net, nothing connects)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def descendants(pid: int) -> list[int]:
    """The pids of every live process below `pid` (children, grandchildren, ...)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def identity(process: psutil.Process) -> dict:
    """What tells a process from a later one that reuses its pid: the pid and its start time."""
    return {"pid": process.pid, "started": process.create_time()}


def running(process: dict) -> bool:
    """Whether the process of `identity` still runs (not gone, not a zombie, its pid not reused)."""
    try:
        found = psutil.Process(process["pid"])
        return found.create_time() == process["started"] and found.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def watch_worker(worker: dict, every: float = 0.25) -> threading.Thread:
    """Start a daemon thread in a rank that stops the whole group once the worker that launched it is gone:
    SIGTERM to the launcher (this rank's parent), which stops every rank; SIGTERM to this rank when the
    launcher is gone too."""
    launcher = identity(psutil.Process().parent())

    def watch() -> None:
        while running(worker):
            time.sleep(every)
        os.kill(launcher["pid"] if running(launcher) else os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="posweep-watch-worker", daemon=True)
    thread.start()
    return thread


def stop_group(launcher: subprocess.Popen, grace: float = STOP_S) -> None:
    """SIGTERM to the launcher's process group (it stops its ranks); kill whatever is left after `grace`."""
    ranks = descendants(launcher.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(launcher.pid, signal.SIGTERM)
    try:
        launcher.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        ranks += descendants(launcher.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
    for pid in ranks:  # the ranks run in sessions of their own: a killed launcher would leave them behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
