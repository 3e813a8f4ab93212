"""Recipe -> trial specs and search spaces. Pure Python: no torch, no trl, no I/O.

Grid sweeps expand to the cartesian product of each method's values, once per seed (TR-* `alpha` and
`tau` act together, so they are crossed like any other pair). Random and TPE sweeps sample each
method's space `n_trials` times per seed; their trial ids are known once sampled.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sweep.io import json_digest
from sweep.spec.methods import HYPERPARAMETERS, REGISTRY
from sweep.spec.recipe import Distribution, ParamSpace, Recipe

PLAN_SECTIONS = ("model", "data", "judge", "methods", "search", "train", "eval")


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a method, its hyperparameters as given, a seed, and an optional data variant."""

    trial_id: str
    method: str
    params: Mapping[str, float]
    seed: int
    variant: str | None = None
    slot: str | None = None
    """A random/TPE trial's slot (`Plan.sampled_slots`); a grid trial's slot is its id."""

    def to_json(self) -> dict:
        """A JSON-ready dict of this spec."""
        return {
            "trial_id": self.trial_id,
            "method": self.method,
            "params": dict(self.params),
            "seed": self.seed,
            "variant": self.variant,
            **({"slot": self.slot} if self.slot else {}),
        }


@dataclass(frozen=True)
class Plan:
    """What a recipe expands to."""

    strategy: str
    seeds: tuple[int, ...]
    spaces: Mapping[str, Mapping[str, ParamSpace]]
    variants: tuple[str | None, ...] = (None,)
    trials: tuple[TrialSpec, ...] = ()
    n_trials: int | None = None
    section_hashes: Mapping[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """How many trials the sweep will run."""
        if self.strategy == "grid":
            return len(self.trials)
        return (self.n_trials or 0) * len(self.spaces) * len(self.seeds) * len(self.variants)

    def sampled_slots(self) -> list[dict]:
        """A random/TPE plan's units of work, one per (variant, method, seed, k < n_trials): each slot's key
        (`[variant/]method/s{seed}/{k}`, the same whatever n_trials is), method, seed and variant."""
        return [
            {"slot": f"{variant + '/' if variant else ''}{method}/s{seed}/{k}", "method": method,
             "seed": seed, "variant": variant}
            for variant in self.variants
            for method in self.spaces
            for seed in self.seeds
            for k in range(self.n_trials or 0)
        ]  # fmt: skip

    @property
    def slots(self) -> list[str]:
        """Every planned unit of work's key: a grid trial's id, or a random/TPE slot."""
        if self.strategy == "grid":
            return [t.trial_id for t in self.trials]
        return [slot["slot"] for slot in self.sampled_slots()]

    @property
    def hash(self) -> str:
        """A short digest of everything that decides which trials run and what they mean."""
        return _digest(self.section_hashes)[:16]


def _digest(obj: object) -> str:
    return json_digest(obj, length=64)


def format_value(value: float) -> str:
    """A compact, exact-enough rendering of a hyperparameter value for ids and tables."""
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}"


def trial_id(method: str, params: Mapping[str, float], seed: int, variant: str | None = None) -> str:
    """A readable id, stable across runs and machines: e.g. 'dpo-b0.1-lr5e-07-s0'."""
    order = REGISTRY[method].hyperparameters
    parts = [
        f"{HYPERPARAMETERS[name].abbreviation}{format_value(params[name])}"
        for name in order
        if name in params
    ]
    prefix = f"{variant}-" if variant else ""
    return f"{prefix}{method}-{'-'.join(parts)}-s{seed}"


def sampled_trial_id(method: str, params: Mapping[str, float], seed: int, variant: str | None = None) -> str:
    """Id of a sampled (random/TPE) trial: the readable id plus a digest of the exact values."""
    return f"{trial_id(method, params, seed, variant)}-{_digest(dict(params))[:6]}"


def axis_scale(name: str, values: Sequence[float]) -> tuple[float, float, bool]:
    """The range a hyperparameter's values span and whether it reads on a log scale (the registry's `log`)."""
    low, high = min(values), max(values)
    return low, high, HYPERPARAMETERS[name].log and low > 0


def _grid_points(method: str, space: Mapping[str, list[float]]) -> list[dict[str, float]]:
    """The cartesian product of one method's values."""
    ordered = [name for name in REGISTRY[method].hyperparameters if name in space]
    axes = [space[name] for name in ordered]
    return [dict(zip(ordered, values, strict=True)) for values in itertools.product(*axes)]


def plan_recipe(recipe: Recipe) -> Plan:
    """Expand a validated recipe into a plan."""
    spaces = {method: recipe.space(method) for method in recipe.methods}
    dumped = recipe.model_dump(mode="json")
    section_hashes = {section: _digest(dumped[section])[:16] for section in PLAN_SECTIONS}
    seeds = tuple(recipe.search.seeds)
    variants = tuple(recipe.data.variants)
    if recipe.search.strategy != "grid":
        return Plan(
            recipe.search.strategy,
            seeds,
            spaces,
            variants,
            n_trials=recipe.search.n_trials,
            section_hashes=section_hashes,
        )
    trials = []
    for variant in variants:
        for method, space in spaces.items():
            grid = {name: values for name, values in space.items() if not isinstance(values, Distribution)}
            for point in _grid_points(method, grid):
                trials += [
                    TrialSpec(trial_id(method, point, seed, variant), method, point, seed, variant)
                    for seed in seeds
                ]
    ids = [t.trial_id for t in trials]
    if len(set(ids)) != len(ids):
        trials = [
            TrialSpec(
                sampled_trial_id(t.method, t.params, t.seed, t.variant), t.method, t.params, t.seed, t.variant
            )
            for t in trials
        ]
    return Plan("grid", seeds, spaces, variants, trials=tuple(trials), section_hashes=section_hashes)
