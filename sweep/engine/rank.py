"""One rank of a launched trial: `python -m sweep.engine.rank JOB`, started by `accelerate launch`.

Every rank builds the same `sweep.train.trial.Worker` and trains the trial in the process group that
accelerate set up (RANK, WORLD_SIZE, LOCAL_RANK; gloo on CPU). Rank 0 writes the trial's files and alone
evaluates the trained policy; the other ranks write theirs into a private scratch folder that vanishes with
them, and read the sweep's shared cache (tokenized data, reference log-probs) like any worker. A rank whose
trial failed exits 1, so the launcher ends the whole group and the engine records the trial failed. Every
rank watches the worker that launched it and has the launcher stop the group if that worker dies.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import yaml

from sweep.engine.launch import LOG_PREFIX, watch_worker
from sweep.engine.workers import configure_process
from sweep.evaluate.evaluator import evaluator_factory
from sweep.results import SweepFolder, TrialFolder
from sweep.spec.plan import TrialSpec
from sweep.spec.recipe import Recipe
from sweep.train.trial import Worker


class RankFolder(SweepFolder):
    """The sweep folder as a rank other than 0 sees it: the shared cache, its trial files in `scratch`."""

    def __init__(self, path: str | Path, scratch: str | Path):
        super().__init__(path)
        self.scratch = Path(scratch)

    def trial(self, trial_id: str) -> TrialFolder:
        return TrialFolder(self.scratch / trial_id)

    def record_training_data(self, counts: dict[str, dict[str, int]]) -> None:
        """Rank 0 records the training data."""


def main(job_file: str) -> int:
    """Run this rank's part of the trial that `job_file` describes; 0 unless the trial failed."""
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    recipe = Recipe.model_validate(yaml.safe_load(job["recipe"]))
    spec = TrialSpec(**job["spec"])
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = "cpu" if job["device"] == "cpu" else f"cuda:{local_rank}"
    configure_process(os.environ)
    watch_worker(job["worker"])
    if device != "cpu":
        torch.cuda.set_device(local_rank)
    if rank == 0:
        result = Worker(
            recipe, job["sweep"], device, _relay, evaluator_factory(recipe, job["sweep"], device, _relay)
        ).run(spec, attempt=job["attempt"], waited_s=job["waited_s"])
        return 0 if result.state != "failed" else 1
    quiet = recipe.model_copy(
        update={
            "execution": recipe.execution.model_copy(update={"keep": "none"}),
            "train": recipe.train.model_copy(update={"report_to": []}),
        }
    )
    with tempfile.TemporaryDirectory(prefix=f"posweep-rank{rank}-") as scratch:
        results = RankFolder(job["sweep"], scratch)
        worker = Worker(quiet, job["sweep"], device, _stderr, results=results)
        result = worker.run(spec, attempt=job["attempt"])
        failure = results.trial(spec.trial_id).traceback
        if result.state == "failed" and failure.is_file():
            print(f"rank {rank}: {failure.read_text(encoding='utf-8')}", file=sys.stderr, flush=True)
    return 0 if result.state != "failed" else 1


def _relay(line: str) -> None:
    print(f"{LOG_PREFIX}{line}", flush=True)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1]))
    except Exception:  # a rank that cannot even start its trial says why, and ends the group
        traceback.print_exc()
        sys.exit(1)
