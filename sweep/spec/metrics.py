"""The metric catalog: each metric's direction, range, label, unit and value for a failed trial.

Every rule about a metric reads this table: the recipe's objective names and directions, the report's axis
labels and histogram bins, and the value a failed trial counts as. Keys may carry a judge prefix
(`gold.win_rate_vs_sft` is the `gold` judge's win rate); `metric(key)` strips it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

Id = TypeVar("Id")


@dataclass(frozen=True)
class Metric:
    """One metric a trial reports."""

    name: str
    label: str
    unit: str
    direction: Literal["maximize", "minimize"]
    low: float | None = None
    high: float | None = None
    judged: bool = False  # computed from a judge's scores: each secondary judge reports `NAME.metric` too

    @property
    def maximize(self) -> bool:
        """Whether a larger value is better."""
        return self.direction == "maximize"

    @property
    def bounded(self) -> bool:
        """Whether the metric has a fixed range (a fraction such as a win rate)."""
        return self.low is not None and self.high is not None

    @property
    def axis_label(self) -> str:
        """The label with its unit."""
        return f"{self.label} ({self.unit})"

    def failure_value(self, maximize: bool) -> float | None:
        """What a failed trial scores on a bounded metric (its range's worst end); None when unbounded."""
        if not self.bounded:
            return None
        return self.low if maximize else self.high


CATALOG: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("win_rate_vs_sft", "win rate vs SFT", "fraction of prompts", "maximize", 0.0, 1.0, True),
        Metric("lc_win_rate_vs_sft", "length-controlled win rate vs SFT", "fraction", "maximize", 0, 1, True),
        Metric("win_rate_vs_chosen", "win rate vs dataset's chosen", "fraction", "maximize", 0.0, 1.0, True),
        Metric("judge_score_mean", "mean judge score", "judge units", "maximize", judged=True),
        Metric("kl_to_sft", "KL to SFT", "nats per response", "minimize"),
        Metric("kl_to_sft_per_token", "KL to SFT per token", "nats/token", "minimize"),
        Metric("kl_to_sft_mc", "KL to SFT, log-ratio estimate", "nats per response", "minimize"),
        Metric("kl_to_sft_per_token_mc", "KL to SFT per token, log-ratio estimate", "nats/token", "minimize"),
        Metric("length_mean", "mean response length", "tokens", "minimize", 0.0),
        Metric(
            "repeated_3gram_fraction",
            "repeated 3-grams",
            "fraction of a response's 3-grams",
            "minimize",
            0.0,
            1.0,
        ),
        Metric("truncated_fraction", "truncated responses", "fraction", "minimize", 0.0, 1.0),
    )
}
OBJECTIVES = tuple(CATALOG)
"""The metrics a recipe may optimize (`eval.objective`; a judged one with an optional judge prefix)."""
NEEDS_REFERENCE = "win_rate_vs_chosen"


def objective_keys(secondary_judges: Sequence[str], references: bool) -> list[str]:
    """Every `eval.objective` a recipe may name, which is every such key its metrics.json holds: each
    catalog metric (win_rate_vs_chosen only with reference responses), and each judged metric prefixed
    by a secondary judge's name."""
    own = [name for name in CATALOG if references or name != NEEDS_REFERENCE]
    judged = [f"{judge}.{name}" for judge in secondary_judges for name in own if CATALOG[name].judged]
    return own + judged


def selection_value(metrics: dict, key: str, default: float | None) -> float | None:
    """The selection part's value of metric `key` in a trial's metrics (what the study optimizes and what
    picks the best trial), else `default` (a sweep or trial without the split)."""
    value = (metrics.get("selection") or {}).get(key)
    return default if value is None else float(value)


def ranked(candidates: Iterable[tuple[Id, float | None]], maximize: bool) -> list[Id]:
    """Trial ids, best first, by the value that picks trials (each trial's `selection_value`): the one
    ranking of posweep (the kept trial, `status`, the report, `export --best`). Ties go to the smaller trial
    id (a report over several sweeps passes (trial id, row) pairs); a missing or non-finite value is not
    ranked."""
    sign = -1.0 if maximize else 1.0
    finite = [(trial_id, float(v)) for trial_id, v in candidates if v is not None and math.isfinite(v)]
    return [trial_id for trial_id, _ in sorted(finite, key=lambda pair: (sign * pair[1], pair[0]))]


def metric(key: str) -> Metric | None:
    """The catalog entry of a metric key (judge prefix stripped), or None for a metric outside it."""
    return CATALOG.get(key.rsplit(".", 1)[-1])


def maximized(key: str) -> bool:
    """Whether a larger value of `key` is better: the catalog's direction, else minimize KL and lengths."""
    found = metric(key)
    if found is not None:
        return found.maximize
    name = key.rsplit(".", 1)[-1]
    return not ("kl" in name or "length" in name)


def direction(key: str) -> Literal["maximize", "minimize"]:
    """ "maximize" or "minimize" for a metric key."""
    return "maximize" if maximized(key) else "minimize"


def axis_label(key: str) -> str:
    """Axis label with units for a metric key ("gold.win_rate_vs_sft" names its judge)."""
    judge, _, name = key.rpartition(".")
    found = CATALOG.get(name)
    label = found.axis_label if found else name
    return f"{label}, judge '{judge}'" if judge else label


STAGES = (
    *("claim", "setup", "load", "build", "ref_logps", "train"),
    *("generate", "judge", "kl", "evaluate", "save", "cleanup"),
)
"""The stages of a trial's wall time (metrics.json stages_s) in the order a trial meets them; `claim`: the
worker's wait for this trial since its last one ended (or since it was ready), timed by the engine;
`evaluate`: the evaluator's time besides generate/judge/kl."""


def in_stage_order(names: Iterable[str]) -> list[str]:
    """Stage names in the order a trial meets them (unknown names last, in the order given)."""
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda name: STAGES.index(name) if name in STAGES else len(STAGES))
