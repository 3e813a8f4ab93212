"""`posweep report` on hand-made sweep folders: golden robustness table, estimator, figures, HTML."""

from __future__ import annotations

import io
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from sweep.errors import UserError
from sweep.io import write_json, write_text
from sweep.report import build_report, expected_best_of_k, load_trials
from sweep.report.load import load_sweeps, read_trials
from sweep.report.robustness import expected_best_band, resolve_objective, robustness_table

RECIPE = "name: {name}\n# a <comment> & note\nmethods: [dpo, ipo]\n"
ALL_FIGURES = {
    "performance_hist",
    "expected_best_of_k",
    "response_length_dist",
    "kl_dist",
    "norm_kl_dist",
    "kl_vs_score",
}


def trial(trial_id, method, params, state="complete", win=None, seed=0, variant=None, **metrics):
    """A trial spec for `make_sweep`; state "running" writes params.json only."""
    return {
        "trial_id": trial_id,
        "method": method,
        "params": params,
        "state": state,
        "win": win,
        "seed": seed,
        "variant": variant,
        "metrics": metrics,
    }


def make_sweep(
    root: Path, name: str, trials: list[dict], planned: int | None = None, sft_length=None
) -> Path:
    """Write a sweep folder in the results layout, with the sweep.io helpers."""
    sweep_dir = root / name
    ids = [t["trial_id"] for t in trials]
    write_json(
        sweep_dir / "sweep.json",
        {
            "name": name,
            "created": "2025-01-01T00:00:00+00:00",
            "updated": "2025-01-01T01:00:00+00:00",
            "storage": "sqlite:///x.db",
            "plan_hash": "abc",
            "strategy": "grid",
            "planned_trials": ids + [f"planned-{i}" for i in range((planned or len(ids)) - len(ids))],
            "objective": {"metric": "win_rate_vs_sft", "direction": "maximize"},
            "methods": sorted({t["method"] for t in trials}),
            "versions": {"trl": "1.16.0"},
            "git_revision": None,
        },
    )
    write_text(sweep_dir / "recipe.yaml", RECIPE.format(name=name))
    if sft_length is not None:
        write_json(sweep_dir / "cache" / "sft_baseline.json", {"metrics": {"length_mean": sft_length}})
    for spec in trials:
        trial_dir = sweep_dir / "trials" / spec["trial_id"]
        write_json(
            trial_dir / "params.json",
            {
                "trial_id": spec["trial_id"],
                "method": spec["method"],
                "params": spec["params"],
                "trl_fields": {},
                "seed": spec["seed"],
                "variant": spec["variant"],
            },
        )
        if spec["state"] == "running":
            continue
        failed = spec["state"] in ("failed", "diverged")
        metrics = {
            "trial_id": spec["trial_id"],
            "state": spec["state"],
            "objective": spec["win"],
            "error": {"type": "RuntimeError", "message": "boom", "reason": "exception"} if failed else None,
            "time_s": {"train": 1.5, "total": 2.0},
            "started": "2025-01-01T00:00:00+00:00",
            "finished": "2025-01-01T00:00:02+00:00",
            "attempt": 1,
        }
        if spec["win"] is not None:
            metrics.update(
                win_rate_vs_sft=spec["win"], win_rate_vs_sft_ci=[spec["win"] - 0.1, spec["win"] + 0.1]
            )
        metrics.update(spec["metrics"])
        write_json(trial_dir / "metrics.json", metrics)
    return sweep_dir


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def golden_trials() -> list[dict]:
    dpo = {"beta": 0.1, "learning_rate": 1e-6}
    return [
        trial("dpo-0", "dpo", dpo, win=0.6, length_mean=100.0, kl_to_sft=1.0),
        trial(
            "dpo-1", "dpo", {"beta": 0.5, "learning_rate": 1e-6}, win=0.5, length_mean=200.0, kl_to_sft=2.0
        ),
        trial(
            "dpo-2", "dpo", {"beta": 0.01, "learning_rate": 1e-6}, win=0.4, length_mean=300.0, kl_to_sft=3.0
        ),
        trial("dpo-3", "dpo", {"beta": 0.1, "learning_rate": 1e-5}, state="failed"),
        trial("dpo-4", "dpo", {"beta": 0.5, "learning_rate": 1e-5}, state="diverged"),
        trial("ipo-0", "ipo", {"beta": 0.1}, win=0.7),
        trial("ipo-1", "ipo", {"beta": 0.2}, win=0.66),
        trial("ipo-2", "ipo", {"beta": 0.3}, state="pruned", win=0.2),
        trial("ipo-3", "ipo", {"beta": 0.4}, state="running"),
        trial("ipo-4", "ipo", {"beta": 0.5}, state="interrupted"),
    ]


@pytest.fixture(scope="module")
def golden_report(tmp_path_factory):
    """The golden sweep reported with --failures-as-worst (failed trials scored like diverged ones)."""
    return build_report(
        [make_sweep(tmp_path_factory.mktemp("golden"), "golden", golden_trials())],
        console=quiet(),
        failures_as_worst=True,
    )


def test_robustness_golden(golden_report):
    report = golden_report
    table = pd.read_csv(report / "robustness.csv").set_index("method")
    assert "sweep" not in table.columns and "variant" not in table.columns
    # dpo: failed and diverged enter as a win rate of 0 -> sorted values 0, 0, 0.4, 0.5, 0.6
    dpo = table.loc["dpo"]
    assert (dpo["n_trials"], dpo["n_complete"], dpo["n_failed"], dpo["n_diverged"], dpo["n_scored"]) == (
        5,
        3,
        1,
        1,
        5,
    )
    assert dpo["best"] == pytest.approx(0.6) and dpo["worst"] == 0 and dpo["median"] == pytest.approx(0.4)
    assert dpo["mean"] == pytest.approx(1.5 / 5)
    assert dpo["iqr"] == pytest.approx(
        0.5 - 0.0
    )  # quartiles at sorted positions 1 and 3 (linear interpolation)
    assert dpo["frac_within_0.05_of_method_best"] == pytest.approx(1 / 5)  # only 0.6 is >= 0.55
    assert dpo["frac_within_0.05_of_overall_best"] == 0  # overall best is ipo's 0.7: nothing >= 0.65
    assert dpo["expected_best_k1"] == pytest.approx(0.3)
    # k = 3 of 5: P(max is the i-th smallest) = C(i-1, 2) / C(5, 3) = 1/10, 3/10, 6/10 for i = 3, 4, 5
    assert dpo["expected_best_k3"] == pytest.approx(0.4 * 0.1 + 0.5 * 0.3 + 0.6 * 0.6)
    assert dpo["expected_best_k5"] == pytest.approx(0.6)
    assert dpo["mean_length_tokens"] == pytest.approx(200.0) and dpo["mean_kl_to_sft"] == pytest.approx(2.0)
    assert dpo["best_trial"] == "dpo-0" and dpo["best_params"] == "beta=0.1 learning_rate=1e-06"
    # ipo: pruned, running and interrupted trials are counted, not scored -> 0.66, 0.7
    ipo = table.loc["ipo"]
    counts = (
        ipo["n_trials"],
        ipo["n_complete"],
        ipo["n_pruned"],
        ipo["n_running"],
        ipo["n_interrupted"],
        ipo["n_scored"],
    )
    assert counts == (5, 2, 1, 1, 1, 2)
    assert (ipo["best"], ipo["median"], ipo["worst"]) == pytest.approx((0.7, 0.68, 0.66))
    assert ipo["mean"] == pytest.approx(0.68)
    assert ipo["iqr"] == pytest.approx(0.02)  # quartiles at positions 0.25 and 0.75
    assert ipo["frac_within_0.05_of_method_best"] == pytest.approx(1.0)
    assert ipo["frac_within_0.05_of_overall_best"] == pytest.approx(1.0)
    assert ipo["expected_best_k1"] == pytest.approx(0.68)
    assert math.isnan(ipo["expected_best_k3"])  # more trials than the method has
    assert math.isnan(ipo["mean_length_tokens"])
    assert ipo["best_params"] == "beta=0.1"


def test_trials_csv_columns(golden_report):
    report = golden_report
    trials = pd.read_csv(report / "trials.csv")
    assert len(trials) == 10
    for column in (
        "sweep",
        "trial_id",
        "method",
        "seed",
        "variant",
        "state",
        "objective",
        "param.beta",
        "param.learning_rate",
        "win_rate_vs_sft",
        "win_rate_vs_sft_ci_lo",
        "win_rate_vs_sft_ci_hi",
        "time_s.train",
        "time_s.total",
        "started",
        "finished",
        "error_type",
    ):
        assert column in trials.columns, column
    running = trials.set_index("trial_id").loc["ipo-3"]
    assert running["state"] == "running" and pd.isna(running["objective"])
    assert trials.set_index("trial_id").loc["dpo-0", "win_rate_vs_sft_ci_hi"] == pytest.approx(0.7)


@pytest.mark.parametrize("maximize", [True, False])
def test_expected_best_of_k_matches_brute_force(maximize):
    values = np.array([0.3, 0.1, 0.7, 0.7, 0.2, 0.9, 0.5])
    pick = max if maximize else min
    ks = range(1, len(values) + 1)
    brute = [np.mean([pick(c) for c in itertools.combinations(values, k)]) for k in ks]
    estimate = expected_best_of_k(values, list(ks), maximize)
    np.testing.assert_allclose(estimate, brute, rtol=1e-12)
    assert estimate[0] == pytest.approx(values.mean())
    assert estimate[-1] == pick(values)


def test_expected_best_of_k_large_n_and_band():
    values = np.random.default_rng(1).normal(size=3000)
    curve = expected_best_of_k(values, [1, 10, 3000, 3001])
    assert curve[0] == pytest.approx(values.mean()) and curve[2] == pytest.approx(values.max())
    assert np.isnan(curve[3])
    low, high = expected_best_band(values[:50], [1, 5, 50])
    assert np.all(low <= high) and low[0] < values[:50].mean() < high[0]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """A sweep with every kind of data: two methods, β/γ/lr grids, seeds, KL, lengths, SFT baseline."""
    trials = []
    grids = {
        "dpo": [{"beta": b, "learning_rate": lr} for b in (0.01, 0.1, 0.5) for lr in (1e-6, 5e-6)],
        "simpo": [{"beta": 2.0, "gamma_beta_ratio": g, "learning_rate": 1e-6} for g in (0.3, 0.5, 0.7)],
    }
    for method, points in grids.items():
        for index, (params, seed) in enumerate(itertools.product(points, (0, 1))):
            win = 0.3 + 0.4 * params["beta"] / (1 + params["beta"]) + 0.05 * seed
            trials.append(
                trial(
                    f"{method}-{index}",
                    method,
                    params,
                    win=win,
                    seed=seed,
                    length_mean=150.0 + index,
                    kl_to_sft=1.0 + index,
                    kl_to_sft_per_token=(1.0 + index) / 150,
                )
            )
    trials.append(trial("dpo-x", "dpo", {"beta": 0.5, "learning_rate": 5e-6}, state="diverged"))
    root = tmp_path_factory.mktemp("full")
    report = build_report([make_sweep(root, "full", trials, sft_length=140.0)], console=quiet())
    return report


def test_every_figure_written(full_report):
    sensitivity = {
        "sensitivity_dpo_beta",
        "sensitivity_dpo_learning_rate",
        "sensitivity_simpo_gamma_beta_ratio",
    }
    written = {p.stem for p in (full_report / "figures").iterdir()}
    assert written == ALL_FIGURES | sensitivity
    for name in written:
        assert (full_report / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert "<svg" in (full_report / "figures" / f"{name}.svg").read_text()


def test_html_embeds_figures_table_and_recipe(full_report):
    html = (full_report / "index.html").read_text()
    figures = {p.stem for p in (full_report / "figures").glob("*.png")}
    assert html.count("data:image/png;base64,") == len(figures)
    for name in figures:
        assert f'id="{name}"' in html and f"figures/{name}.svg" in html
    assert "<table" in html and "best params" in html and "<td>simpo</td>" in html
    assert "# a &lt;comment&gt; &amp; note" in html  # the recipe, HTML-escaped
    assert "worst value" in html  # the note on failed and diverged trials
    assert "Sweep still running" not in html and "<td>19/19</td>" in html
    assert "http://" not in html and "https://" not in html


def test_figures_skipped_without_data(tmp_path):
    trials = [
        trial("dpo-0", "dpo", {"beta": 0.1}, win=0.5),
        trial("dpo-1", "dpo", {"beta": 0.1}, win=0.6, seed=1),
    ]
    report = build_report([make_sweep(tmp_path, "bare", trials)], console=quiet())
    assert {p.name for p in (report / "figures").iterdir()} == {
        "performance_hist.png",
        "performance_hist.svg",
        "expected_best_of_k.png",
        "expected_best_of_k.svg",
    }
    html = (report / "index.html").read_text()
    assert "kl_dist" not in html and "sensitivity_" not in html


def test_one_method_one_trial(tmp_path):
    report = build_report(
        [make_sweep(tmp_path, "one", [trial("t0", "dpo", {"beta": 0.1}, win=0.5)])], console=quiet()
    )
    table = pd.read_csv(report / "robustness.csv")
    assert (
        len(table) == 1
        and table.loc[0, "expected_best_k1"] == 0.5
        and pd.isna(table.loc[0, "expected_best_k3"])
    )
    assert (report / "index.html").is_file()


def test_running_sweep_reports_progress(tmp_path):
    trials = [
        trial("t0", "dpo", {"beta": 0.1}, win=0.5),
        trial("t1", "dpo", {"beta": 0.5}, win=0.4),
        trial("t2", "dpo", {"beta": 1.0}, state="running"),
    ]
    sweep_dir = make_sweep(tmp_path, "live", trials, planned=4)
    console = quiet()
    report = build_report([sweep_dir], console=console)
    assert report == sweep_dir / "report"
    html = (report / "index.html").read_text()
    assert "2/4" in html and "Sweep still running" in html
    assert load_trials([sweep_dir])["state"].value_counts().to_dict() == {"complete": 2, "running": 1}
    assert "2/3" in console.file.getvalue()  # the console table: finished/all trials


def test_two_sweeps_compared(tmp_path):
    first = make_sweep(tmp_path, "a", [trial("t0", "dpo", {"beta": 0.1}, win=0.5)])
    second = make_sweep(
        tmp_path,
        "b",
        [trial("t0", "dpo", {"beta": 0.1}, win=0.7), trial("t1", "ipo", {"beta": 0.1}, win=0.2)],
    )
    out = tmp_path / "compare"
    assert build_report([first, second], out=out, console=quiet()) == out
    table = pd.read_csv(out / "robustness.csv")
    assert list(table[["sweep", "method"]].itertuples(index=False, name=None)) == [
        ("a", "dpo"),
        ("b", "dpo"),
        ("b", "ipo"),
    ]
    assert set(pd.read_csv(out / "trials.csv")["sweep"]) == {"a", "b"}
    assert "dpo (a)" in (out / "figures" / "performance_hist.svg").read_text()  # labels carry the sweep
    assert not (first / "report").exists()


def test_variants_are_separate_rows(tmp_path):
    trials = [
        trial("t0", "dpo", {"beta": 0.1}, win=0.5, variant="short"),
        trial("t1", "dpo", {"beta": 0.1}, win=0.7, variant="long"),
    ]
    report = build_report([make_sweep(tmp_path, "v", trials)], console=quiet())
    table = pd.read_csv(report / "robustness.csv")
    assert list(table["variant"]) == ["long", "short"] and list(table["best"]) == [0.7, 0.5]


def test_metric_option_direction_and_worst_value(tmp_path):
    trials = [
        trial("t0", "dpo", {"beta": 0.1}, win=0.5, judge_score_mean=2.0, kl_to_sft=3.0),
        trial("t1", "dpo", {"beta": 0.5}, win=0.6, judge_score_mean=-1.0, kl_to_sft=5.0),
        trial("t2", "dpo", {"beta": 1.0}, state="failed"),
    ]
    sweeps = load_sweeps([make_sweep(tmp_path, "m", trials)])
    for metric, expected in (("judge_score_mean", (2.0, -1.0, 0.0)), ("kl_to_sft", (3.0, 5.0, 13 / 3))):
        scored, objective = resolve_objective(sweeps, read_trials(sweeps), metric, failures_as_worst=True)
        row = robustness_table(scored, objective, ["method"]).iloc[0]
        # judge score is maximized and a failed trial scores the lowest value seen; KL is minimized and a
        # failed trial scores the highest value seen
        assert objective.maximize == (metric == "judge_score_mean")
        assert (row["best"], row["worst"], row["mean"]) == pytest.approx(expected)


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"no sweep\.json"):
        build_report([tmp_path], console=quiet())
    empty = tmp_path / "empty"
    write_json(empty / "sweep.json", {"name": "empty", "objective": {"metric": "win_rate_vs_sft"}})
    with pytest.raises(UserError, match="no trials"):
        build_report([empty], console=quiet())
    sweep_dir = make_sweep(tmp_path, "ok", [trial("t0", "dpo", {"beta": 0.1}, win=0.5)])
    with pytest.raises(UserError, match="did you mean 'win_rate_vs_sft'"):
        build_report([sweep_dir], metric="win_rate_vs_stf", console=quiet())


def test_stage_times_figure_and_table_are_the_means_of_stages_s(tmp_path):
    stages = {
        "dpo-0": {"setup": 0.1, "build": 0.3, "train": 1.0, "generate": 0.5},
        "dpo-1": {"setup": 0.3, "build": 0.5, "train": 2.0, "generate": 0.7},
        "simpo-0": {"claim": 0.05, "setup": 0.2, "build": 0.4, "train": 1.5, "kl": 0.25},
    }  # only a later trial has a claim stage (a folder grown by a newer posweep): still the first column
    trials = [trial(t, t.split("-")[0], {"beta": 0.1}, win=0.5, stages_s=s) for t, s in stages.items()]
    report = build_report([make_sweep(tmp_path, "timed", trials)], console=quiet())
    assert (report / "figures" / "stage_times.png").read_bytes().startswith(b"\x89PNG")
    html = (report / "index.html").read_text()
    assert 'id="stage_times"' in html and "Where the time went" in html
    section = html[html.index("Where the time went") :]
    section = section[: section.index("</table>")]
    header = re.findall(r"<th>([^<]+)</th>", section[: section.index("</thead>")])
    rows = re.findall(r"<tr>\s*<th>([^<]*)</th>(.*?)</tr>", section[section.index("<tbody>") :], re.S)
    cells = {name: map(float, re.findall(r"<td>([^<]*)</td>", body)) for name, body in rows}
    table = pd.DataFrame({name: dict(zip(header, values)) for name, values in cells.items()}).T
    assert table.loc["dpo", "train"] == 1.5 and table.loc["dpo", "generate"] == 0.6
    assert table.loc["simpo", "kl"] == 0.25 and table.loc["dpo", "kl"] == 0.0  # a stage a method lacks
    assert header[:3] == ["claim", "setup", "build"] and header[-1] == "total"
    assert table.loc["dpo", "total"] == 2.7 and table.loc["simpo", "total"] == 2.4
    columns = pd.read_csv(report / "trials.csv").columns
    assert [c for c in columns if c.startswith("stage_s.")][:2] == ["stage_s.setup", "stage_s.build"]
