"""The `posweep` command line. Parses arguments and calls the stages; heavy imports stay inside commands."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="posweep",
    help="Sweep preference-optimization (*PO) methods and hyperparameters with TRL; report robustness.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
rm_app = typer.Typer(help="Reward (preference) models: train a judge.", no_args_is_help=True)
app.add_typer(rm_app, name="rm")

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
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


@app.command()
@user_errors
def validate(
    files: Annotated[list[Path], typer.Argument(help="recipe files", show_default=False)],
    deep: Annotated[
        bool, typer.Option("--deep", help="also run the preflight: model, data, judges (writes nothing)")
    ] = False,
    results: Annotated[Path | None, typer.Option(help="results root to check (with --deep)")] = None,
) -> None:
    """Check recipes: exit 0 when all are valid, 2 when any is not (every problem is listed)."""
    from sweep.spec.plan import plan_recipe
    from sweep.spec.validate import RecipeError, load_recipe

    failed = False
    for file in files:
        try:
            loaded = load_recipe(file)
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
def plan(recipe: RecipeArg) -> None:
    """Print the trials a recipe expands to (id, method, hyperparameters, seed) and the total."""
    from rich.console import Console
    from rich.table import Table

    from sweep.spec.plan import format_value, plan_recipe
    from sweep.spec.recipe import Distribution
    from sweep.spec.validate import load_recipe

    planned = plan_recipe(load_recipe(recipe))
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
    workers: Annotated[int | None, typer.Option(min=1, help="trials at a time (or SLURM array size)")] = None,
    storage: Annotated[str | None, typer.Option(help="Optuna storage URL or env:VAR")] = None,
    max_trials: Annotated[int | None, typer.Option(min=1, help="stop after this many trials")] = None,
    new: Annotated[bool, typer.Option("--new", help="start a new sweep folder if the plan changed")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar; a line per trial")] = False,
    launcher: Annotated[str, typer.Option(help="local: run here; slurm: submit a worker array")] = "local",
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

    loaded = load_recipe(recipe)
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
) -> None:
    """Write robustness tables, figures and a self-contained index.html for finished or running sweeps."""
    from sweep.report import build_report

    folder = build_report(list(sweep_dirs), out=out, metric=metric, failures_as_worst=failures_as_worst)
    typer.echo(f"report: {folder / 'index.html'}")


@app.command()
@user_errors
def export(
    sweep_dir: ResultsArg,
    out: Annotated[Path, typer.Option(help="the model folder to write (must not exist)")],
    best: Annotated[bool, typer.Option("--best", help="the best complete trial")] = False,
    trial: Annotated[str | None, typer.Option(help="the trial id to export")] = None,
    adapter: Annotated[bool, typer.Option("--adapter", help="keep a LoRA adapter unmerged")] = False,
    push_to_hub: Annotated[str | None, typer.Option(help="then upload the folder to this Hub repo")] = None,
) -> None:
    """Write a trial's model as a Hugging Face folder with a model card (retrained when not kept)."""
    from sweep.builtin import resolve
    from sweep.errors import UserError
    from sweep.tools.export import export_trial, push_folder

    if best == (trial is not None):
        raise UserError("pass exactly one of --best or --trial ID")
    done = export_trial(sweep_dir, out, trial, adapter, resolve, lambda line: typer.echo(line, err=True))
    how = "retrained" if done.retrained else "kept weights"
    typer.echo(f"exported {done.trial_id} (rank {done.rank} of {done.complete}, {how}) to {done.path}")
    if push_to_hub:
        typer.echo(f"uploaded: {push_folder(done.path, push_to_hub)}")


@app.command()
@user_errors
def dashboard(
    sweep_dir: ResultsArg,
    port: Annotated[int, typer.Option(min=0, max=65535, help="port on 127.0.0.1")] = 8080,
    storage: Annotated[str | None, typer.Option(help="the sweep's Optuna storage URL or env:VAR")] = None,
) -> None:
    """Serve optuna-dashboard over a sweep's study on 127.0.0.1 until Ctrl-C."""
    from sweep.tools.dashboard import dashboard_server

    server = dashboard_server(sweep_dir, storage, port)
    typer.echo(f"optuna-dashboard: http://127.0.0.1:{server.server_port}/dashboard/ (Ctrl-C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


@rm_app.command("train")
@user_errors
def rm_train(
    data: Annotated[
        str, typer.Argument(help="preference data: local file, Hub id, or builtin:NAME", show_default=False)
    ],
    model: Annotated[str, typer.Option(help="base model (directory or Hub id)", show_default=False)],
    out: Annotated[Path, typer.Option(help="output directory for the reward model", show_default=False)],
    split: Annotated[str, typer.Option(help="dataset split")] = "train",
    prompt: Annotated[str, typer.Option(help="prompt column")] = "prompt",
    chosen: Annotated[str, typer.Option(help="chosen column")] = "chosen",
    rejected: Annotated[str, typer.Option(help="rejected column")] = "rejected",
    max_samples: Annotated[int | None, typer.Option(min=1, help="use at most this many pairs")] = None,
    eval_fraction: Annotated[float, typer.Option(min=0.01, max=0.9, help="held-out fraction")] = 0.1,
    epochs: Annotated[float, typer.Option(min=0.01, help="training epochs")] = 1.0,
    learning_rate: Annotated[float, typer.Option(min=0.0, help="learning rate")] = 1e-5,
    batch_size: Annotated[int, typer.Option(min=1, help="per-device batch size")] = 8,
    max_length: Annotated[int, typer.Option(min=8, help="maximum tokens of prompt + response")] = 1024,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    trust_remote_code: Annotated[bool, typer.Option(help="run the model repository's own code")] = False,
    input_format: Annotated[
        str, typer.Option("--format", help="judge input: auto | pair | chat | raw (recorded for scoring)")
    ] = "auto",
) -> None:
    """Train a reward model with TRL's RewardTrainer; the output folder is usable as a recipe judge."""
    from sweep.builtin import resolve
    from sweep.hf.data import load_pairs
    from sweep.spec.recipe import PairColumns, TrainData
    from sweep.tools.rm import train_reward_model

    source = TrainData(
        path=resolve(data),
        split=split,
        max_samples=max_samples,
        columns=PairColumns(prompt=prompt, chosen=chosen, rejected=rejected),
    )
    pairs = load_pairs(source, where="DATA")
    summary = train_reward_model(
        pairs,
        resolve(model),
        out,
        eval_fraction=eval_fraction,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        trust_remote_code=trust_remote_code,
        fmt=input_format,
    )
    typer.echo(
        f"reward model: {out} (held-out pairwise accuracy {summary['heldout_accuracy']:.3f} "
        f"on {summary['n_heldout']} pairs)"
    )


data_app = typer.Typer(
    help="Preference data: length-bias statistics and perplexity filtering for a target model.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")
DataArg = Annotated[
    str, typer.Argument(help="preference data: local file, Hub id, or builtin:NAME", show_default=False)
]
SplitOpt = Annotated[str, typer.Option(help="dataset split")]
PromptOpt = Annotated[str, typer.Option(help="prompt column")]
ChosenOpt = Annotated[str, typer.Option(help="chosen column")]
RejectedOpt = Annotated[str, typer.Option(help="rejected column")]


def _pair_source(data: str, split: str, prompt: str, chosen: str, rejected: str):
    """A preference-data source from the command line (a `builtin:` reference built on first use)."""
    from sweep.builtin import resolve
    from sweep.spec.recipe import PairColumns, TrainData

    return TrainData(
        path=resolve(data), split=split, columns=PairColumns(prompt=prompt, chosen=chosen, rejected=rejected)
    )


@data_app.command("stats")
@user_errors
def data_stats(
    data: DataArg,
    model: Annotated[
        str | None, typer.Option(help="count tokens too, with this model's tokenizer (directory or Hub id)")
    ] = None,
    split: SplitOpt = "train",
    prompt: PromptOpt = "prompt",
    chosen: ChosenOpt = "chosen",
    rejected: RejectedOpt = "rejected",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")] = False,
) -> None:
    """Length bias, duplicates and empty responses of preference data (tokens too with --model)."""
    import json

    from sweep.builtin import resolve
    from sweep.tools.datastats import dataset_stats, print_stats

    stats = dataset_stats(_pair_source(data, split, prompt, chosen, rejected), model and resolve(model))
    if as_json:
        typer.echo(json.dumps(stats))
    else:
        print_stats(stats)


@data_app.command("ppl-filter")
@user_errors
def data_ppl_filter(
    data: DataArg,
    model: Annotated[str, typer.Option(help="target (SFT) model: directory or Hub id", show_default=False)],
    out: Annotated[Path, typer.Option(help="filtered data file (the input's format)", show_default=False)],
    keep: Annotated[
        float | None, typer.Option(help="keep this fraction of pairs, lowest perplexity first [default: 0.5]")
    ] = None,
    max_ppl: Annotated[float | None, typer.Option(help="keep pairs whose perplexity is at most this")] = None,
    max_ratio: Annotated[
        float | None, typer.Option(help="keep pairs whose chosen/rejected perplexity ratio is at most this")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="responses per forward pass")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N")] = "auto",
    split: SplitOpt = "train",
    prompt: PromptOpt = "prompt",
    chosen: ChosenOpt = "chosen",
    rejected: RejectedOpt = "rejected",
) -> None:
    """Keep the pairs a target model finds natural (lowest perplexity); write them, a summary and a plot."""
    from sweep.tools.pplfilter import criterion, filter_file

    rule = criterion(keep, max_ppl, max_ratio)
    source = _pair_source(data, split, prompt, chosen, rejected)
    from sweep.builtin import resolve

    summary = filter_file(source, resolve(model), out, rule, batch_size, device)
    typer.echo(
        f"kept {summary['kept']} of {summary['pairs']} pairs ({summary['kept_fraction']:.1%}): {out} "
        f"(summary {out}.summary.json, histogram {out}.ppl.png)"
    )


def main() -> None:
    """Entry point for `python -m sweep`."""
    app(prog_name="posweep")


if __name__ == "__main__":
    sys.exit(main())
