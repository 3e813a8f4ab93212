"""Growing a sweep in place: whether a new recipe only changes the search space of an old one, and how.

Growth keeps what every finished trial means: the model, data, judges, the shared `train` and `eval`
sections, the search strategy and pruner, and each kept method's hyperparameter names (those it leaves
out take the method's defaults) are the same. What may change: grid values, methods, seeds, and
`n_trials` of a random/TPE search (whose kept methods' spaces stay the same, as finished slots were
sampled from them). Trials of removed values or methods stay in the folder, outside the current plan.
"""

from __future__ import annotations

from collections.abc import Mapping

from sweep.spec.recipe import Distribution, Recipe

FIXED_SECTIONS = ("model", "data", "judge", "train", "eval")


def meaning_changes(
    old: Recipe, old_sections: Mapping[str, str], new: Recipe, new_sections: Mapping[str, str]
) -> list[str]:
    """The recipe sections (or `methods.NAME`) whose change alters what a trial means; empty for growth.

    `*_sections` are the plans' section hashes (`Plan.section_hashes`)."""
    changed = [s for s in FIXED_SECTIONS if old_sections.get(s) != new_sections.get(s)]
    if (old.search.strategy, old.search.pruner) != (new.search.strategy, new.search.pruner):
        changed.append("search")
    grid = new.search.strategy == "grid"
    for method in [m for m in new.methods if m in old.methods]:
        before, after = old.space(method), new.space(method)
        same = (set(before), _ranges(before)) == (set(after), _ranges(after)) if grid else before == after
        if not same:
            changed.append(f"methods.{method}")
    return changed


def _ranges(space: Mapping) -> dict:
    return {name: values for name, values in space.items() if isinstance(values, Distribution)}


def _added_removed(before, after) -> dict:
    diff = {"added": [v for v in after if v not in before], "removed": [v for v in before if v not in after]}
    return {key: values for key, values in diff.items() if values}


def growth(old: Recipe, new: Recipe) -> dict:
    """What a grown recipe adds and removes: methods, grid values (`method.name`), seeds, n_trials."""
    changes: dict = {}
    methods = _added_removed(list(old.methods), list(new.methods))
    if methods:
        changes["methods"] = methods
    values = {
        f"{method}.{name}": diff
        for method in new.methods
        if method in old.methods
        for name, axis in new.space(method).items()
        if isinstance(axis, list) and (diff := _added_removed(old.space(method)[name], axis))
    }
    if values:
        changes["values"] = values
    seeds = _added_removed(old.search.seeds, new.search.seeds)
    if seeds:
        changes["seeds"] = seeds
    if old.search.n_trials != new.search.n_trials:
        changes["n_trials"] = {"from": old.search.n_trials, "to": new.search.n_trials}
    return changes
