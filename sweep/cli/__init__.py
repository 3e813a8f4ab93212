"""The `posweep` command line. Parses arguments and calls the stages; heavy imports stay inside commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from sweep.cli.common import RecipeArg, ResultsArg, SetOpt, SmokeOpt, user_errors
from sweep.cli.tools import dashboard, data_app, export, rm_app

app = typer.Typer(
    name="posweep",
    help="Sweep preference-optimization (*PO) methods and hyperparameters with TRL; report robustness.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.command()
@user_errors
def validate(
    files: Annotated[list[Path], typer.Argument(help="recipe files", show_default=False)],
    deep: Annotated[
        bool, typer.Option("--deep", help="also run the preflight: model, data, judges (writes nothing)")
    ] = False,
    results: Annotated[Path | None, typer.Option(help="results root to check (with --deep)")] = None,
    sets: SetOpt = None,
    smoke: SmokeOpt = False,
) -> None:
    """Check recipes: exit 0 when all are valid, 2 when any is not (every problem is listed)."""
    from sweep.spec.plan import plan_recipe
    from sweep.spec.validate import RecipeError, load_recipe

    failed = False
    for file in files:
        try:
            loaded = load_recipe(file, sets or [], smoke)
            plan = plan_recipe(loaded)
        except RecipeError as error:
            typer.echo(str(error), err=True)
            failed = True
            continue
        if deep:
            from sweep.builtin import resolve
            from sweep.engine.preflight import preflight
            from sweep.errors import UserError
            from sweep.hf.loading import resolve_device

            device = "cpu" if loaded.execution.devices == "cpu" else resolve_device("auto").type
            try:
                preflight(loaded.located(resolve), results, None, device, typer.echo)
            except UserError as error:
                typer.echo(f"{file}: error: {error}", err=True)
                failed = True
                continue
        typer.echo(f"{file}: ok ({plan.total} trials, {plan.strategy})")
    if failed:
        raise typer.Exit(2)


@app.command()
@user_errors
def plan(recipe: RecipeArg, sets: SetOpt = None, smoke: SmokeOpt = False) -> None:
    """Print the trials a recipe expands to (id, method, hyperparameters, seed) and the total."""
    from rich.console import Console
    from rich.table import Table

    from sweep.spec.plan import format_value, plan_recipe
    from sweep.spec.recipe import Distribution
    from sweep.spec.validate import load_recipe

    planned = plan_recipe(load_recipe(recipe, sets or [], smoke))
    console = Console(width=max(Console().width, 100))
    if planned.strategy == "grid":
        table = Table("trial id", "method", "hyperparameters", "seed", box=None, pad_edge=False)
        for trial in planned.trials:
            params = "  ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
            table.add_row(trial.trial_id, trial.method, params, str(trial.seed))
    else:
        table = Table("method", "search space", box=None, pad_edge=False)
        for method, space in planned.spaces.items():
            parts = []
            for name, values in space.items():
                if isinstance(values, Distribution):
                    scale = " log" if values.log else ""
                    parts.append(f"{name}~[{format_value(values.low)}, {format_value(values.high)}]{scale}")
                else:
                    parts.append(f"{name} in {{{', '.join(format_value(v) for v in values)}}}")
            table.add_row(method, "  ".join(parts))
    console.print(table)
    extra = (
        "" if planned.strategy == "grid" else f" ({planned.n_trials} per method and seed, {planned.strategy})"
    )
    console.print(f"total: {planned.total} trials{extra}; plan hash {planned.hash}")


@app.command()
def methods() -> None:
    """List the *PO methods posweep knows: TRL trainer, hyperparameters and defaults."""
    from rich.console import Console
    from rich.table import Table

    from sweep.spec.methods import REGISTRY
    from sweep.spec.plan import format_value

    table = Table("method", "TRL trainer", "hyperparameters (default)", "reference", "data", "about")
    for entry in REGISTRY.values():
        params = ", ".join(f"{k}={format_value(v)}" for k, v in entry.defaults.items())
        table.add_row(
            entry.name, entry.trainer.replace(":", "."), params, entry.reference, entry.data, entry.summary
        )
    Console(width=max(Console().width, 160)).print(table)


@app.command()
@user_errors
def run(
    recipe: RecipeArg,
    results: Annotated[
        Path | None, typer.Option(help="results root (default: execution.results_dir)")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="trials at a time (or SLURM array size); on CPU, more than one pays only beyond 4 cores",
        ),
    ] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL or env:VAR")] = None,
    max_trials: Annotated[int | None, typer.Option(min=1, help="stop after this many trials")] = None,
    new: Annotated[bool, typer.Option("--new", help="start a new sweep folder if the plan changed")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar; a line per trial")] = False,
    launcher: Annotated[str, typer.Option(help="local: run here; slurm: submit a worker array")] = "local",
    sets: SetOpt = None,
    smoke: SmokeOpt = False,
) -> None:
    """Run (or resume) a sweep: train and evaluate every trial, writing results/<name>/.

    A preflight first loads the model, data and judges, generates and scores the SFT baseline and checks
    the results folder and storage; on bad input nothing is written.

    Exit codes: 0 every planned trial ended complete, diverged or pruned; 1 at least one trial failed after
    its retries (the last line names them and where their errors are) or the results folder filled up;
    2 bad input (recipe, data, judges, storage, results folder), nothing written; 130 Ctrl-C;
    143 SIGTERM (the running trial is marked interrupted; rerun to resume it).
    """
    from sweep.builtin import resolve
    from sweep.engine.folder import open_sweep, removed_on_failure
    from sweep.engine.preflight import preflight
    from sweep.engine.queue import reconcile
    from sweep.engine.workers import run_sweep
    from sweep.errors import UserError
    from sweep.spec.validate import load_recipe

    loaded = load_recipe(recipe, sets or [], smoke)
    if launcher == "local":
        code = run_sweep(
            loaded,
            results=results,
            workers=workers,
            storage=storage,
            max_trials=max_trials,
            new=new,
            quiet=quiet,
            locate=resolve,
        )
        raise typer.Exit(code)
    if launcher != "slurm":
        raise UserError(f"--launcher must be local or slurm, got {launcher!r}")
    from sweep.engine.slurm import submit_workers

    checked = preflight(loaded.located(resolve), results, storage, "cpu", typer.echo)
    root = Path(results if results is not None else loaded.execution.results_dir)
    with removed_on_failure(root / loaded.name):
        sweep = open_sweep(loaded, results, storage, new)
        checked.hand_over(sweep.folder)
    counts = reconcile(sweep)
    spec = loaded.execution.slurm
    jobs = submit_workers(
        sweep, storage or loaded.execution.storage, workers or loaded.execution.workers, spec, locate=resolve
    )
    typer.echo(
        f"submitted {len(jobs)} SLURM worker jobs for {sweep.dir} ({counts['queued']} trials queued): "
        f"{' '.join(jobs)}"
    )
    typer.echo(f"follow progress with: posweep status {sweep.dir}")


@app.command()
@user_errors
def worker(
    sweep_dir: ResultsArg,
    storage: Annotated[str | None, typer.Option(help="the sweep's Optuna storage URL or env:VAR")] = None,
    max_trials: Annotated[int | None, typer.Option(min=1, help="stop after this many trials")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar; a line per trial")] = False,
) -> None:
    """Join a running sweep (on this or another machine) and run trials; exit codes as posweep run's."""
    from sweep.builtin import resolve
    from sweep.engine.workers import run_worker

    raise typer.Exit(run_worker(sweep_dir, storage, max_trials, quiet, locate=resolve))


@app.command()
@user_errors
def status(sweep_dir: ResultsArg) -> None:
    """Show a sweep's trial states, objectives, counts, elapsed and remaining time.

    Exit code: 1 when the sweep has finished and a trial failed after its retries, else 0 (as posweep run).
    """
    from sweep.engine.status import print_status

    raise typer.Exit(print_status(sweep_dir))


@app.command()
@user_errors
def report(
    sweep_dirs: Annotated[list[Path], typer.Argument(help="one or more sweep folders", show_default=False)],
    out: Annotated[Path | None, typer.Option(help="output folder (default: FIRST_DIR/report)")] = None,
    metric: Annotated[str | None, typer.Option(help="objective metric key (default: the sweep's)")] = None,
    failures_as_worst: Annotated[
        bool, typer.Option(help="count failed trials (exception, OOM, dead worker) as the worst value")
    ] = False,
    all_trials: Annotated[
        bool, typer.Option(help="include trials outside the current plan (values a grown recipe removed)")
    ] = False,
) -> None:
    """Write robustness tables, figures and a self-contained index.html for finished or running sweeps."""
    from sweep.report import build_report

    folder = build_report(
        list(sweep_dirs), out=out, metric=metric, failures_as_worst=failures_as_worst, all_trials=all_trials
    )
    typer.echo(f"report: {folder / 'index.html'}")


app.command()(export)
app.command()(dashboard)
app.add_typer(rm_app, name="rm")
app.add_typer(data_app, name="data")


def main() -> None:
    """Entry point for `python -m sweep`."""
    app(prog_name="posweep")


if __name__ == "__main__":
    sys.exit(main())
