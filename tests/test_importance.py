"""Hyperparameter importance in the report: a planted effect is found; small groups are skipped."""

from __future__ import annotations

import itertools
import math

import pandas as pd
from test_report import make_sweep, quiet, trial

from sweep.report import build_report
from sweep.report.importance import MIN_TRIALS, target_quantile


def planted_trials() -> list[dict]:
    """dpo: 5 betas x 4 learning rates whose win rate depends on beta only; ipo: too few trials."""
    trials = []
    for beta, lr in itertools.product([0.02, 0.05, 0.1, 0.2, 0.5], [1e-6, 1e-5, 1e-4, 1e-3]):
        win = 0.9 - 0.2 * abs(math.log10(beta / 0.1))
        trials.append(trial(f"dpo-b{beta}-lr{lr}", "dpo", {"beta": beta, "learning_rate": lr}, win=win))
    trials += [
        trial(f"ipo-b{b}", "ipo", {"beta": b, "learning_rate": 1e-5}, win=0.5) for b in (0.1, 0.5, 1.0)
    ]
    trials.append(trial("dpo-failed", "dpo", {"beta": 0.3, "learning_rate": 1e-5}, state="failed"))
    return trials


def test_importance_finds_the_planted_hyperparameter_and_skips_small_groups(tmp_path):
    sweep = make_sweep(tmp_path, "planted", planted_trials())
    report = build_report([sweep], console=quiet())
    table = pd.read_csv(report / "importance.csv")
    dpo = table[table["group"] == "dpo"].set_index("param")
    assert set(dpo.index) == {"beta", "learning_rate"} and (dpo["n_trials"] == 20).all()
    assert dpo.loc["beta", "importance"] > 0.9 and dpo.loc["learning_rate", "importance"] < 0.1
    assert math.isclose(dpo["importance"].sum(), 1.0)
    assert dpo.loc["beta", "target_quantile"] == target_quantile(20) == 0.25
    assert "ipo" not in set(table["group"])
    html = (report / "index.html").read_text()
    assert f"ipo: skipped (3 complete trials; importance needs at least {MIN_TRIALS})" in html
    assert (report / "figures" / "param_importance.png").exists() and 'id="param_importance"' in html


def test_target_quantile_keeps_at_least_five_top_trials():
    assert [target_quantile(n) for n in (20, 40, 50, 200)] == [0.25, 0.125, 0.1, 0.1]
