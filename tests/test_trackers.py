"""Experiment trackers: TensorBoard, MLflow, W&B and Trackio runs per trial: loss curve, final metrics."""

from __future__ import annotations

import importlib.util
import json

import pytest
from test_engine import inputs, run, write_recipe  # noqa: F401  (the module-scoped tiny inputs)

pytestmark = pytest.mark.slow
TRACKERS = [name for name in ("tensorboard", "mlflow", "wandb", "trackio") if importlib.util.find_spec(name)]
STEPS = 3


def needs(name: str) -> None:
    if name not in TRACKERS:
        pytest.skip(f"the {name} extra is not installed (pip install 'posweep[{name}]')")


@pytest.fixture(scope="module")
def tracked(inputs, tmp_path_factory):  # noqa: F811
    """A finished two-trial sweep that reported to every installed tracker; its folder and trial metrics."""
    if not TRACKERS:
        pytest.skip("no tracker extra is installed")
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
        env.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(root))
        env.setenv("WANDB_SILENT", "true")
        methods = {
            "dpo": {"beta": [0.1], "learning_rate": [1e-3]},
            "ipo": {"beta": [0.5], "learning_rate": [1e-3]},
        }
        train = {
            "max_steps": STEPS,
            "per_device_train_batch_size": 4,
            "max_length": 48,
            "report_to": TRACKERS,
        }
        recipe = write_recipe(inputs, "tracked", methods, train=train)
        result = run("run", recipe, "--results", root, "--quiet")
        assert result.exit_code == 0, result.output
    sweep = root / "tracked"
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("trials/*/metrics.json")}
    assert len(metrics) == 2 and all(m["state"] == "complete" for m in metrics.values())
    return root, sweep, metrics


def test_tensorboard_event_files_per_trial_hold_the_loss_curve_and_final_metrics(tracked):
    needs("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, sweep, metrics = tracked
    for trial_id, record in metrics.items():
        events = EventAccumulator(str(sweep / "trials" / trial_id / "tensorboard"))
        events.Reload()
        losses = events.Scalars("train/loss")
        assert [e.step for e in losses] == list(range(1, STEPS + 1))
        assert losses[-1].value == pytest.approx(record["train"]["loss"], rel=1e-6)
        final = events.Scalars("final/win_rate_vs_sft")
        assert [e.value for e in final] == [pytest.approx(record["win_rate_vs_sft"])] and final[
            0
        ].step == STEPS
        assert events.Scalars("final/objective")[0].value == pytest.approx(record["objective"])


def test_mlflow_file_store_has_a_run_per_trial_in_the_sweeps_experiment(tracked):
    needs("mlflow")
    from mlflow.tracking import MlflowClient

    root, sweep, metrics = tracked
    client = MlflowClient(tracking_uri=(root / "mlruns").as_uri())
    experiment = client.get_experiment_by_name(sweep.name)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(metrics)
    for trial_id, record in metrics.items():
        found = runs[trial_id]
        assert found.info.status == "FINISHED"
        assert found.data.tags["posweep.method"] == trial_id.split("-")[0]
        assert found.data.metrics["final/kl_to_sft"] == pytest.approx(record["kl_to_sft"])
        history = client.get_metric_history(found.info.run_id, "loss")
        assert len(history) == STEPS and history[-1].value == pytest.approx(record["train"]["loss"], rel=1e-6)


def test_wandb_offline_writes_a_run_per_trial_with_its_final_metrics(tracked):
    needs("wandb")
    root, sweep, metrics = tracked
    runs = sorted((root / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == len(metrics)
    # the run log holds protobuf records: its strings (names, tags, metric keys) are there verbatim
    records = [path.read_bytes() for path in runs]
    for trial_id in metrics:
        (found,) = [r for r in records if trial_id.encode() in r]
        assert f"method:{trial_id.split('-')[0]}".encode() in found and sweep.name.encode() in found
        assert b"final/objective" in found and b"final/win_rate_vs_sft" in found and b"train/loss" in found


def test_trackio_has_a_run_per_trial_in_the_sweeps_project_with_losses_and_final_metrics(tracked):
    needs("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    _, sweep, metrics = tracked
    assert sorted(SQLiteStorage.get_runs(sweep.name)) == sorted(metrics)
    for trial_id, record in metrics.items():
        logs = SQLiteStorage.get_logs(sweep.name, trial_id)
        losses = [row["train/loss"] for row in logs if "train/loss" in row]
        assert len(losses) == STEPS and losses[-1] == pytest.approx(record["train"]["loss"], rel=1e-6)
        (final,) = [row for row in logs if "final/objective" in row]
        assert final["final/objective"] == pytest.approx(record["objective"])
        assert final["final/kl_to_sft"] == pytest.approx(record["kl_to_sft"])
        assert final["step"] == STEPS
