"""The results-folder contract: typed records round-trip with a schema version; old folders still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweep.cli import app
from sweep.io import read_json
from sweep.report import load_trials
from sweep.results import (
    SCHEMA_VERSION,
    SftBaseline,
    SweepFolder,
    SweepRecord,
    TrialFolder,
    TrialMetrics,
    TrialParams,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sweep-v0"
"""A results folder written by posweep before records carried schema versions (see fixtures/README.md)."""


@pytest.fixture
def old_sweep(tmp_path) -> Path:
    """A writable copy of the fixture (the report writes into the sweep folder)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "smoke"))


def test_the_old_folder_is_read_as_written(old_sweep):
    folder = SweepFolder(old_sweep)
    meta = folder.read_sweep()
    assert meta.schema_version == 0 and meta.name == "smoke" and meta.planned_total == 13
    trials = folder.trials()
    assert len(trials) == 13 and {t.state for t in trials} == {"complete"}
    for trial in trials:
        written = read_json(old_sweep / "trials" / trial.folder / "metrics.json")
        assert trial.metrics.objective == written["objective"]
        assert trial.metrics.to_json() == {"schema_version": 0, **written}
        assert trial.params.to_json() == {
            "schema_version": 0,
            **read_json(folder.trial(trial.folder).params_json),
        }
    baseline = folder.read_baseline()
    written = read_json(old_sweep / "cache" / "sft_baseline.json")
    assert baseline.length_mean == written["metrics"]["length_mean"]
    assert baseline.responses == written["responses"]


def test_status_and_report_read_an_old_folder(old_sweep):
    runner = CliRunner()
    status = runner.invoke(app, ["status", str(old_sweep)])
    assert status.exit_code == 0, status.output
    assert "13 complete of 13 planned" in status.output
    report = runner.invoke(app, ["report", str(old_sweep)])
    assert report.exit_code == 0, report.output
    trials = load_trials([old_sweep])
    assert len(trials) == 13 and "schema_version" not in trials.columns
    for row in trials.itertuples():
        written = read_json(old_sweep / "trials" / row.trial_id / "metrics.json")
        assert row.objective == written["objective"]
    assert (old_sweep / "report" / "index.html").is_file()


def test_records_round_trip_and_carry_the_schema_version(tmp_path):
    folder = TrialFolder(tmp_path / "trials" / "t1")
    params = TrialParams("t1", "dpo", {"beta": 0.1}, 0, None, {"loss_type": ["sigmoid"]}, 2)
    folder.start(params)
    metrics = TrialMetrics("t1", "complete", 0.75, time_s={"total": 1.5}, extra={"kl_to_sft": 0.25})
    folder.write_metrics(metrics)
    folder.write_samples([{"prompt_index": 0, "response": "hi"}])
    on_disk = read_json(folder.metrics_json)
    assert on_disk["schema_version"] == SCHEMA_VERSION and on_disk["kl_to_sft"] == 0.25
    assert read_json(folder.params_json)["schema_version"] == SCHEMA_VERSION
    assert folder.read_params() == params and folder.read_metrics() == metrics
    assert folder.read_samples() == [{"schema_version": SCHEMA_VERSION, "prompt_index": 0, "response": "hi"}]
    sweep = SweepFolder(tmp_path)
    record = SweepRecord(
        "s", objective={"metric": "kl_to_sft", "direction": "minimize"}, extra={"wall_s": 3.0}
    )
    sweep.write_sweep(record)
    assert sweep.read_sweep() == record and not record.maximize
    assert read_json(sweep.sweep_json)["wall_s"] == 3.0
    baseline = SftBaseline("k", lengths=[2, 4])
    sweep.write_baseline(baseline)
    assert sweep.read_baseline() == baseline and baseline.length_mean == 3.0


def test_a_restarted_trial_starts_from_an_empty_folder(tmp_path):
    folder = TrialFolder(tmp_path / "t")
    folder.start(TrialParams("t"))
    folder.write_metrics(TrialMetrics("t", "failed"))
    folder.write_traceback("boom")
    folder.start(TrialParams("t", attempt=2))
    assert sorted(p.name for p in folder.path.iterdir()) == ["params.json"]
    assert folder.read_metrics() is None and folder.read_params().attempt == 2


def test_invalid_json_is_one_line_naming_the_file(tmp_path):
    sweep = SweepFolder(tmp_path)
    sweep.sweep_json.write_text("{not json")
    with pytest.raises(Exception, match=r"sweep.json is not valid JSON"):
        sweep.read_sweep()
    sweep.baseline_json.parent.mkdir()
    sweep.baseline_json.write_text("[1, 2")
    assert sweep.read_baseline() is None  # an unreadable cache is recomputed, not an error


def test_unknown_keys_survive_a_round_trip():
    data = {"trial_id": "t", "state": "complete", "objective": 1.0, "future_field": {"a": 1}}
    assert json.loads(json.dumps(TrialMetrics.from_json(data).to_json()))["future_field"] == {"a": 1}
