"""The commands around a sweep: reward-model training, data tools, export and the dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sweep.cli.common import ResultsArg, user_errors

rm_app = typer.Typer(help="Reward (preference) models: train a judge.", no_args_is_help=True)


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
