"""`--smoke`: a recipe turned into its CI smoke sweep (one short trial per method on the user's own model).

The transform works on the raw YAML mapping, before `--set` overrides and before validation, so a
`--set` can change any of what it chose. Each method keeps one point: the middle value of each grid axis
(index (n-1)//2 of n values, the registry's space when the recipe gives none); random and TPE search run
one trial. Only the first seed and the first training-data variant run. Training stops after
SMOKE_STEPS optimizer steps on at most SMOKE_PAIRS pairs; evaluation uses at most SMOKE_PROMPTS prompts
and SMOKE_NEW_TOKENS new tokens. The sweep goes into its own folder, NAME-smoke.
"""

from __future__ import annotations

import copy
from typing import Any

from sweep.spec.methods import REGISTRY

SMOKE_STEPS = 2
SMOKE_PAIRS = 8
SMOKE_PROMPTS = 4
SMOKE_NEW_TOKENS = 16


def _middle(values: Any) -> Any:
    """The middle value of a grid axis (a range or a single value is kept)."""
    if isinstance(values, list) and values:
        return [values[(len(values) - 1) // 2]]
    return values


def _section(raw: dict, key: str) -> dict:
    """raw[key] as a mapping to edit (a missing one is created; a wrong one is left to validation)."""
    value = raw.setdefault(key, {})
    return value if isinstance(value, dict) else {}


def _at_most(section: dict, key: str, limit: int) -> None:
    current = section.get(key)
    section[key] = min(current, limit) if isinstance(current, int) and current > 0 else limit


def smoke_recipe(raw: dict) -> dict:
    """A copy of a raw recipe mapping turned into its smoke sweep."""
    result = copy.deepcopy(raw)
    if isinstance(result.get("name"), str):
        result["name"] = f"{result['name']}-smoke"
    search = _section(result, "search")
    grid = search.get("strategy", "grid") == "grid"
    if not grid:
        search["n_trials"] = 1
    if isinstance(search.get("seeds"), list) and search["seeds"]:
        search["seeds"] = search["seeds"][:1]
    methods = result.get("methods")
    if grid and isinstance(methods, dict):
        for method, space in methods.items():
            if not space and method in REGISTRY:
                space = {name: list(values) for name, values in REGISTRY[method].space.items()}
            if isinstance(space, dict):
                methods[method] = {name: _middle(values) for name, values in space.items()}
    data = _section(result, "data")
    train = data.get("train")
    if isinstance(train, dict) and "path" not in train and train:
        first = next(iter(train))
        data["train"] = train = {first: train[first]}
        train = train[first]
    if isinstance(train, dict):
        _at_most(train, "max_samples", SMOKE_PAIRS)
    _at_most(_section(data, "eval"), "max_prompts", SMOKE_PROMPTS)
    _section(result, "train")["max_steps"] = SMOKE_STEPS
    _at_most(_section(result, "eval"), "max_new_tokens", SMOKE_NEW_TOKENS)
    return result
