"""Optuna storage: a journal file in the sweep folder or a database URL, samplers, pruners, masked URLs.

A password in a storage URL is never printed: `mask_url` shows it as ***, and driver errors go through
`_masked` before they reach the user.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from sweep.errors import UserError
from sweep.io import first_line
from sweep.spec.recipe import Recipe

QUERY_PASSWORD = re.compile(r"(?i)(^|&)(password=)([^&]*)")
CONNECT_TIMEOUT_S = 15
"""A database server that does not answer within this many seconds is unreachable (the preflight says so)."""


def mask_url(url: str) -> str:
    """A storage URL with its password (user:PASSWORD@host or ?password=PASSWORD) replaced by ***."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = QUERY_PASSWORD.sub(r"\1\2***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _masked(text: str, url: str) -> str:
    """`text` (say, a driver's error message) with every password of `url`, raw or decoded, as ***."""
    parts = urlsplit(url)
    secrets = {match[3] for match in QUERY_PASSWORD.finditer(parts.query)} | {parts.password or ""}
    for secret in sorted(secrets | {unquote(s) for s in secrets}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def storage_url(value: str | None) -> str | None:
    """A storage URL from the recipe or a flag; `env:VAR` reads it from the environment."""
    if value and value.startswith("env:"):
        name = value[4:]
        if not os.environ.get(name):
            raise UserError(f"storage: environment variable {name} is not set")
        return os.environ[name]
    return value


class _FlockLock:
    """A journal-file lock held with flock(2): the kernel releases it when its holder dies (kill -9)."""

    def __init__(self, path: str):
        self._path = path
        self._handle = None

    def acquire(self) -> bool:
        """Block until this process holds the lock."""
        self._handle = open(self._path, "a")  # noqa: SIM115 (held until release)
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        return True

    def release(self) -> None:
        """Let the next writer in."""
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _with_driver(url: str) -> str:
    """A bare postgresql:// URL with an installed driver (SQLAlchemy 2.1 defaults to psycopg 3)."""
    from importlib.util import find_spec

    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or find_spec("psycopg") is not None:
        return url
    return f"postgresql+psycopg2://{rest}" if find_spec("psycopg2") is not None else url


def open_storage(url: str | None, sweep_dir: Path):
    """The Optuna storage: a journal file inside the sweep folder by default, else any storage URL."""
    import optuna

    if url is None:
        from optuna.storages.journal import JournalFileBackend

        path = str(sweep_dir / "study.journal")
        return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=_FlockLock(path + ".lock")))
    try:
        return optuna.storages.RDBStorage(_with_driver(url), engine_kwargs=_engine_options(url))
    except Exception as error:  # SQLAlchemy raises many types for a bad URL or an unreachable server
        message = first_line(error)
        raise UserError(f"storage {mask_url(url)}: {_masked(message, url)}") from None


def _engine_options(url: str) -> dict:
    options: dict = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "postgres")):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return options


def check_reachable(url: str) -> None:
    """Connect to a database storage once, creating nothing (a UserError with the password masked)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(_with_driver(url), **_engine_options(url))
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as error:  # as in open_storage
        raise UserError(f"storage {mask_url(url)}: {_masked(first_line(error), url)}") from None


def sampler(recipe: Recipe, trial_number: int = 0):
    """The sampler of one trial: TPE or random, seeded with the recipe's first seed plus the trial's number,
    so no two trials of a study draw the same sample (a resumed or grown sweep, workers started together)."""
    import optuna

    seed = recipe.search.seeds[0] + trial_number
    if recipe.search.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, recipe.search.n_trials or 10))
    return optuna.samplers.RandomSampler(seed=seed)


def pruner(recipe: Recipe):
    """The study's pruner (`search.pruner`)."""
    import optuna

    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3),
        "hyperband": optuna.pruners.HyperbandPruner,
    }[recipe.search.pruner]()
