"""One answer to "which trial is best": the kept trial, `status`, the report and `export --best` agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_engine import run

from sweep.engine.status import summarize
from sweep.report import build_report
from sweep.results import SweepFolder, SweepRecord, TrialMetrics, TrialParams, ranked_trials
from sweep.spec.metrics import ranked

ROOT = Path(__file__).resolve().parents[1]
METRIC = "win_rate_vs_sft"


def test_ranked_breaks_ties_by_trial_id_and_skips_missing_values():
    values = [("b", 0.6), ("a", 0.6), ("c", float("nan")), ("d", None), ("e", 0.7)]
    assert ranked(values, maximize=True) == ["e", "a", "b"]
    assert ranked(values, maximize=False) == ["a", "b", "e"]


def plant(folder: Path, trials: dict[str, tuple[float, float, float]], state: str = "complete") -> None:
    """A sweep folder whose trials have (all prompts, selection part, test part) values of the objective."""
    results = SweepFolder(folder)
    results.write_sweep(
        SweepRecord(
            name=folder.name,
            created="2026-01-01T00:00:00+00:00",
            objective={"metric": METRIC, "direction": "maximize"},
            planned_total=len(trials),
        )
    )
    for trial_id, (everything, selection, test) in trials.items():
        trial = results.trial(trial_id)
        trial.start(TrialParams(trial_id=trial_id, method="dpo", params={"beta": 0.1}, seed=0))
        metrics = {METRIC: everything, "selection": {METRIC: selection}, "test": {METRIC: test}}
        trial.write_metrics(
            TrialMetrics(
                trial_id,
                state,
                objective=everything,
                time_s={"total": 1.0},
                finished="2026-01-01T00:01:00+00:00",
                extra=metrics,
            )
        )


def test_the_selection_part_picks_everywhere_not_the_all_prompts_objective(tmp_path):
    """`dpo-a` is best over all prompts, `dpo-b` and `dpo-c` tie best on the selection part: `dpo-b` (the
    smaller id) is the best trial for the ranking, `status`, the report and export's choice."""
    sweep = tmp_path / "planted"
    plant(sweep, {"dpo-a": (0.80, 0.60, 0.99), "dpo-c": (0.70, 0.75, 0.40), "dpo-b": (0.65, 0.75, 0.55)})
    records = SweepFolder(sweep).trials()
    assert [r.trial_id for r in ranked_trials(records, METRIC, True)] == ["dpo-b", "dpo-c", "dpo-a"]
    line = summarize(sweep)
    assert "best dpo-b win_rate_vs_sft=0.5500 held out (picked on selection part: 0.7500)" in line, line
    report = build_report([sweep], out=tmp_path / "report")
    robustness = (report / "robustness.csv").read_text()
    assert ",dpo-b," in robustness and "dpo-a" not in robustness and "dpo-c" not in robustness
    page = (report / "index.html").read_text()
    assert "Best trial: dpo-b (dpo), win_rate_vs_sft 0.5500 on the held-out part" in page
    table = __import__("pandas").read_csv(report / "robustness.csv")
    assert table.loc[0, "best_selected_test"] == pytest.approx(0.55)
    assert table.loc[0, "best_selected_in_sample"] == pytest.approx(0.65)


@pytest.mark.slow
def test_tiny_recipe_keep_best_status_report_and_export_name_one_trial(tmp_path):
    """recipes/tiny.yaml (shortened) with `keep: best`: the kept model, `status`, the report's best trial and
    `export --best` are the trial with the best selection-part win rate (ties to the smaller id), computed
    here from the metrics.json files; export uses the kept weights and does not retrain."""
    recipe = yaml.safe_load((ROOT / "recipes" / "tiny.yaml").read_text())
    recipe["execution"] = {"keep": "best"}
    recipe["train"]["max_steps"] = 6
    recipe["data"]["eval"]["max_prompts"] = 32
    recipe["eval"].update(max_new_tokens=16, bootstrap=100)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = run("run", path, "--results", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "tiny"
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("trials/*/metrics.json")}
    assert len(metrics) == 30 and {m["state"] for m in metrics.values()} == {"complete"}
    picked = {trial_id: m["selection"][METRIC] for trial_id, m in metrics.items()}
    top = max(picked.values())
    expected = min(trial_id for trial_id, value in picked.items() if value == top)
    held_out = metrics[expected]["test"][METRIC]

    assert [p.parent.name for p in sweep.glob("trials/*/model")] == [expected]
    status = run("status", sweep)
    assert f"best {expected} {METRIC}={held_out:.4f} held out" in status.output, status.output
    report = run("report", sweep)
    assert report.exit_code == 0, report.output
    assert f"best trial: {expected} (" in " ".join(report.output.split())
    assert f"Best trial: {expected} (" in (sweep / "report" / "index.html").read_text()
    exported = run("export", sweep, "--best", "--out", tmp_path / "best")
    assert exported.exit_code == 0, exported.output
    assert f"exported {expected} (rank 1 of 30, kept weights)" in exported.output
    assert "retrain" not in exported.output
