"""Opening a sweep: its folder (a changed plan is refused), its study, its sweep.json and recipe.yaml."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sweep.engine.queue import Sweep, sampled_ids
from sweep.engine.storage import mask_url, open_storage, pruner, sampler, storage_url
from sweep.errors import UserError
from sweep.io import file_lock, git_revision, package_versions, utc_now
from sweep.results import SweepFolder, SweepRecord
from sweep.spec.plan import Plan, plan_recipe
from sweep.spec.recipe import Recipe


def _choose_folder(recipe: Recipe, root: Path, plan: Plan, new: bool) -> Path:
    """The sweep folder for this recipe; refuse (or pick a new folder) when its plan changed."""
    folder = root / recipe.name
    if not SweepFolder(folder).exists():
        return folder
    meta = SweepFolder(folder).read_sweep()
    if meta.plan_hash == plan.hash:
        return folder
    if not new:
        old = meta.plan_sections
        changed = [k for k, v in plan.section_hashes.items() if old.get(k) != v] or ["plan"]
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
        stored = recipe.execution.storage and mask_url(recipe.execution.storage)
        shown = recipe.execution.model_copy(update={"storage": stored})
        sweep.folder.write_recipe(recipe.model_copy(update={"execution": shown}).dump())
        write_sweep_json(sweep)
    return sweep


def write_sweep_json(sweep: Sweep, **timings: Any) -> None:
    """(Re)write sweep.json, keeping the creation time and any earlier timings."""
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
        methods=list(sweep.plan.spaces),
        objective={"metric": sweep.recipe.eval.objective, "direction": sweep.recipe.eval.direction},
        versions=package_versions(),
        git_revision=git_revision(),
        extra={**(old.extra if old is not None else {}), **timings},
    )
    folder.write_sweep(record)


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
