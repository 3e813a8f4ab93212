"""Experiment trackers of a trial (`train.report_to`): one run per trial, named by its id, grouped by sweep.

TRL's own callbacks log the training curve (`report_to` is passed to TRL); this module opens each
trial's run first, so the run carries posweep's name, group and tags, and logs the trial's final
evaluation metrics (as `final/<metric>`) into the same run before closing it:

- tensorboard: a log folder per trial, `trials/<id>/tensorboard/` (`tensorboard --logdir NAME/trials`);
- mlflow: experiment = the sweep folder's name, run name = the trial id, tags posweep.method/variant/seed;
  where runs go is MLflow's usual MLFLOW_TRACKING_URI;
- wandb: group = the sweep folder's name, run name = the trial id, tags method/variant/seed; project
  WANDB_PROJECT (default "posweep"); WANDB_MODE=offline writes runs locally.
- trackio: project = the sweep folder's name, run name = the trial id (TRL's callback opens the run
  from those TrainingArguments; the final metrics resume it); runs go to TRACKIO_DIR (default under
  HF_HOME), or to a Space when TRACKIO_SPACE_ID is set (`trackio show` opens the dashboard).

Without `report_to` (the default) nothing is tracked, as before.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sweep.errors import UserError
from sweep.spec.plan import TrialSpec

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}


def check_installed(report_to: Sequence[str]) -> None:
    """Raise a UserError naming the extra to install for a tracker whose package is missing."""
    for name in report_to:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"train.report_to: {name} needs its package: pip install 'posweep[{name}]'")


def final_values(metrics: dict[str, Any], objective: float | None) -> dict[str, float]:
    """The numbers of a trial's final evaluation (and its objective), keyed `final/<name>`."""
    values = {
        f"final/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if objective is not None:
        values["final/objective"] = float(objective)
    return {key: value for key, value in values.items() if math.isfinite(value)}


class TrackedRun:
    """The tracker runs of one trial: opened on enter, closed on exit (marked failed on an exception)."""

    def __init__(self, report_to: Sequence[str], sweep: str, spec: TrialSpec, log_dir: Path):
        self.report_to = list(report_to)
        self.sweep, self.spec, self.log_dir = sweep, spec, Path(log_dir)
        self.tags = {"posweep.method": spec.method, "posweep.seed": str(spec.seed)}
        if spec.variant:
            self.tags["posweep.variant"] = spec.variant
        self._wandb = None
        self._mlflow = None

    def __enter__(self) -> TrackedRun:
        check_installed(self.report_to)
        if "mlflow" in self.report_to:
            import mlflow

            mlflow.set_experiment(self.sweep)
            self._mlflow = mlflow.start_run(run_name=self.spec.trial_id, tags=self.tags)
        if "wandb" in self.report_to:
            import wandb

            self._wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "posweep"),
                group=self.sweep,
                name=self.spec.trial_id,
                tags=[f"{key.removeprefix('posweep.')}:{value}" for key, value in self.tags.items()],
                config={"trial_id": self.spec.trial_id, **self.spec.params},
                reinit="finish_previous",
            )
        return self

    @contextlib.contextmanager
    def building_trainer(self) -> Iterator[None]:
        """While the trainer is built: TRL's TensorBoard callback reads its folder from the environment."""
        if "tensorboard" not in self.report_to:
            yield
            return
        saved = os.environ.get("TENSORBOARD_LOGGING_DIR")
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.log_dir)
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("TENSORBOARD_LOGGING_DIR")
            else:
                os.environ["TENSORBOARD_LOGGING_DIR"] = saved

    def log_final(self, metrics: dict[str, Any], objective: float | None, step: int) -> None:
        """Log the trial's final evaluation metrics into each of its runs."""
        values = final_values(metrics, objective)
        if "tensorboard" in self.report_to:
            from torch.utils.tensorboard import SummaryWriter

            with contextlib.closing(SummaryWriter(log_dir=str(self.log_dir))) as writer:
                for key, value in values.items():
                    writer.add_scalar(key, value, step)
        if self._mlflow is not None:
            import mlflow

            mlflow.log_metrics(values, step=step, run_id=self._mlflow.info.run_id)
        if self._wandb is not None:
            self._wandb.log(values)
            self._wandb.summary.update(values)
        if "trackio" in self.report_to:
            import trackio

            trackio.init(project=self.sweep, name=self.spec.trial_id, resume="allow")
            trackio.log(values, step=step)
            trackio.finish()

    def __exit__(self, exc_type, *exc: object) -> None:
        failed = exc_type is not None
        if self._mlflow is not None:
            import mlflow

            mlflow.end_run(status="FAILED" if failed else "FINISHED")
        if self._wandb is not None:
            self._wandb.finish(exit_code=1 if failed else 0)
