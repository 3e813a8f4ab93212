"""Every Optuna and submitit private attribute posweep relies on (tests/test_optuna_internals.py).

Each function names what it needs from the library; when a library release moves one of these
attributes, the contract test for it fails instead of a sweep.
"""

from __future__ import annotations

from typing import Any


def study_storage(study: Any) -> Any:
    """The Optuna storage a study reads and writes (Optuna: `Study._storage`)."""
    return study._storage


def study_id(study: Any) -> int:
    """The storage's id of a study (Optuna: `Study._study_id`)."""
    return study._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of a trial, frozen or live (Optuna: `FrozenTrial._trial_id`, `Trial._trial_id`)."""
    return trial._trial_id


def storage_engine(storage: Any) -> Any:
    """The SQLAlchemy engine behind a database storage, or None (Optuna: `_CachedStorage._backend`)."""
    return getattr(getattr(storage, "_backend", storage), "engine", None)


def fix_params(trial: Any, params: dict) -> None:
    """Fix `params` on a live trial; those it was enqueued with win (Optuna: `Trial._fixed_params`)."""
    trial._fixed_params = {**params, **trial._fixed_params}


def submitit_requeue_signal() -> int:
    """The signal submitit requeues a job on (submitit: `JobEnvironment._usr_sig`)."""
    from submitit import JobEnvironment

    return JobEnvironment._usr_sig()
