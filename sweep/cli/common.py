"""What every posweep command shares: argument types and the one-line handling of user errors."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="PATH=VALUE",
        help="override a recipe value, YAML-typed (train.max_steps=2, judge.0.batch_size=4); repeatable",
        show_default=False,
    ),
]
SmokeOpt = Annotated[
    bool,
    typer.Option(
        "--smoke",
        help="the recipe's CI smoke sweep: one short trial per method on a few pairs and prompts, "
        "into NAME-smoke (--set applies after it)",
    ),
]
ResultsArg = Annotated[Path, typer.Argument(help="a sweep folder (results/<name>)", show_default=False)]


def _fail(message: str, code: int) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def user_errors(command):
    """Turn UserError into its message on stderr and exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from sweep.errors import UserError
        from sweep.spec.validate import RecipeError

        try:
            return command(*args, **kwargs)
        except RecipeError as error:
            _fail(str(error), 2)
        except UserError as error:
            _fail(f"error: {error}", 2)

    return wrapper
