"""Opening a sweep: its folder (grown in place or refused), its study, its sweep.json and recipe.yaml.

A plan that only changes the search space grows the folder in place (`sweep.spec.growth`); sweep.json
keeps one revision per plan; workers follow the folder's current plan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweep.engine.queue import ATTR, Sweep, claim, close, in_current_plan, method_choices, sampled_ids
from sweep.engine.storage import mask_url, open_storage, pruner, sampler, storage_url
from sweep.errors import UserError
from sweep.io import file_lock, git_revision, package_versions, utc_now
from sweep.results import SweepFolder, SweepRecord
from sweep.spec.growth import growth, meaning_changes
from sweep.spec.plan import Plan, plan_recipe
from sweep.spec.recipe import Recipe


def stored_recipe(folder: Path) -> Recipe | None:
    """The recipe a sweep folder's recipe.yaml records, or None when it has none this posweep reads."""
    import pydantic
    import yaml

    text = SweepFolder(folder).read_recipe()
    if text is None:
        return None
    try:
        return Recipe.model_validate(yaml.safe_load(text))
    except (pydantic.ValidationError, yaml.YAMLError):
        return None


def _choose_folder(recipe: Recipe, root: Path, plan: Plan, new: bool) -> Path:
    """The sweep folder for this recipe: the existing one when its plan is the same or only grows; with `new`,
    a new folder for any other plan; else refuse when what a trial means changed."""
    folder = root / recipe.name
    if not SweepFolder(folder).exists():
        return folder
    meta = SweepFolder(folder).read_sweep()
    if meta.plan_hash == plan.hash:
        return folder
    if not new:
        old = stored_recipe(folder)
        sections = meta.plan_sections
        changed = (
            meaning_changes(old, sections, recipe, plan.section_hashes)
            if old is not None
            else [k for k, v in plan.section_hashes.items() if sections.get(k) != v] or ["plan"]
        )
        if not changed:
            return folder
        raise UserError(
            f"{folder} holds a sweep of a different plan (changed: {', '.join(changed)}); restore the recipe "
            f"to resume it, or pass --new to start a new sweep folder"
        )
    index = 2
    while SweepFolder(root / f"{recipe.name}-{index}").exists():
        index += 1
    return root / f"{recipe.name}-{index}"


@contextlib.contextmanager
def removed_on_failure(folder: Path) -> Iterator[None]:
    """If the block fails, remove what it created of `folder` and its missing parents, never what existed."""
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        yield
    except BaseException:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)
        raise


def open_sweep(
    recipe: Recipe, results: Path | None = None, storage: str | None = None, new: bool = False
) -> Sweep:
    """Create or reopen the sweep folder and its Optuna study; write sweep.json and recipe.yaml."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan = plan_recipe(recipe)
    root = Path(results if results is not None else recipe.execution.results_dir)
    folder = _choose_folder(recipe, root, plan, new)
    url = storage_url(storage or recipe.execution.storage)
    with file_lock(SweepFolder(folder).lock):
        study = optuna.create_study(
            storage=open_storage(url, folder),
            study_name=folder.name,
            direction=recipe.eval.direction,
            sampler=sampler(recipe),
            pruner=pruner(recipe),
            load_if_exists=True,
        )
        display = mask_url(url) if url else "journal:study.journal"
        sweep = Sweep(folder, recipe, plan, study, display)
        unknown = sorted(set(plan.spaces) - set(method_choices(sweep)))
        if unknown:
            raise UserError(
                f"{folder}: its study was started by an older posweep that records only methods "
                f"{', '.join(method_choices(sweep))}, so it cannot grow by {', '.join(unknown)}; pass --new"
            )
        previous = stored_recipe(folder)
        stored = recipe.execution.storage and mask_url(recipe.execution.storage)
        shown = recipe.execution.model_copy(update={"storage": stored})
        sweep.folder.write_recipe(recipe.model_copy(update={"execution": shown}).dump())
        write_sweep_json(sweep, previous)
    return sweep


def _revision(number: int, when: str, plan: Plan, changes: dict) -> dict:
    return {
        "revision": number,
        "when": when,
        "plan_hash": plan.hash,
        "planned_total": plan.total,
        **changes,
        "slots": plan.slots,
    }


def _revisions(sweep: Sweep, old: SweepRecord | None, previous: Recipe | None, now: str) -> list[dict]:
    """sweep.json's plan revisions, with one appended when the plan is new or grew since the last one (a
    folder written before revisions were recorded gets its recorded recipe's plan as revision 1)."""
    revisions = list(old.revisions) if old is not None else []
    if not revisions and old is not None and previous is not None:
        revisions = [_revision(1, old.created or now, plan_recipe(previous), {})]
    if revisions and revisions[-1]["plan_hash"] == sweep.plan.hash:
        return revisions
    changes = growth(previous, sweep.recipe) if revisions and previous is not None else {}
    return [*revisions, _revision(len(revisions) + 1, now, sweep.plan, changes)]


def write_sweep_json(sweep: Sweep, previous: Recipe | None = None, **timings: Any) -> None:
    """(Re)write sweep.json, keeping the creation time, the plan's revisions and any earlier timings;
    `previous` is the recipe the folder recorded before this one (what a new revision grew from)."""
    folder = sweep.folder
    old = folder.read_sweep() if folder.exists() else None
    planned = [t.trial_id for t in sweep.plan.trials] if sweep.plan.strategy == "grid" else sampled_ids(sweep)
    now = utc_now()
    record = SweepRecord(
        name=sweep.recipe.name,
        folder=sweep.dir.name,
        created=old.created if old is not None and old.created else now,
        updated=now,
        storage=sweep.storage_display,
        study=sweep.study.study_name,
        plan_hash=sweep.plan.hash,
        plan_sections=dict(sweep.plan.section_hashes),
        strategy=sweep.plan.strategy,
        planned_total=sweep.plan.total,
        planned_trials=planned,
        revisions=_revisions(sweep, old, previous, now),
        methods=list(sweep.plan.spaces),
        objective={"metric": sweep.recipe.eval.objective, "direction": sweep.recipe.eval.direction},
        versions=package_versions(),
        git_revision=git_revision(),
        extra={**(old.extra if old is not None else {}), **timings},
    )
    folder.write_sweep(record)


def current_plan(sweep: Sweep) -> Sweep:
    """`sweep` with the recipe and plan its folder records now (a worker that joined before the plan grew
    takes the grown one); recipe.yaml is written before sweep.json, so a new plan hash has its recipe."""
    if sweep.folder.read_sweep().plan_hash == sweep.plan.hash:
        return sweep
    recipe = stored_recipe(sweep.dir)
    if recipe is None:
        raise UserError(f"{sweep.dir}: recipe.yaml of the grown plan is unreadable; restart this worker")
    return dataclasses.replace(sweep, recipe=recipe, plan=plan_recipe(recipe))


def claim_planned(sweep: Sweep) -> tuple[Sweep, Any]:
    """Take the next WAITING trial of the folder's current plan (`queue.claim`), with that plan's sweep.

    A trial claimed that the current plan no longer has (enqueued by a worker whose plan predated a
    growth that removed it) is closed as outside the plan and the next one taken: never run, never twice.
    """
    while True:
        trial = claim(current_plan(sweep))
        sweep = current_plan(sweep)  # the plan may have grown while this worker claimed
        if trial is None or in_current_plan(sweep, trial):
            return sweep, trial
        close(sweep, trial, dict(trial.user_attrs[ATTR]), "outside_plan", "plan_changed")


def open_sweep_folder(recipe: Recipe, folder: Path, storage: str | None) -> Sweep:
    """Reopen an existing sweep folder (a worker joining a sweep its runner created)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(storage)
    study = optuna.load_study(
        study_name=folder.name,
        storage=open_storage(url, folder),
        sampler=sampler(recipe),
        pruner=pruner(recipe),
    )
    return Sweep(
        folder, recipe, plan_recipe(recipe), study, mask_url(url) if url else "journal:study.journal"
    )


def sweep_storage(folder: Path, storage: str | None) -> str | None:
    """The storage a worker should use for an existing sweep folder: the flag, else the journal file."""
    if storage is not None:
        return storage
    meta = SweepFolder(folder).read_sweep()
    if meta.storage.startswith("journal:"):
        return None
    raise UserError(
        f"{folder}: this sweep's study is in {meta.storage}; pass --storage URL (or env:VAR) to join it"
    )


def record_run(
    sweep: Sweep, trained: int, trials_s: float, setup_s: float, wall: float, workers: int
) -> None:
    """Write a finished run's timings into sweep.json, on the current plan (it may have grown under the run:
    an older one is never written back); a run that trained nothing keeps the last training run's."""
    sweep = current_plan(sweep)
    if not trained:
        write_sweep_json(sweep, last_run=f"trained nothing ({wall:.1f} s): every planned trial had ended")
        return
    overhead = max(0.0, wall - (trials_s + setup_s) / workers)
    write_sweep_json(
        sweep,
        last_run=f"trained {trained} trial(s)",
        wall_s=round(wall, 3),
        trials_s=round(trials_s, 3),
        setup_s=round(setup_s, 3),
        overhead_s=round(overhead, 3),
        overhead_fraction=round(overhead / wall, 4) if wall else None,
    )
