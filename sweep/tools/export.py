"""`posweep export`: one trial's model as a standalone Hugging Face folder with a model card.

The folder holds the model (a LoRA adapter merged into its base unless `adapter=True`), the tokenizer
with its chat template, a generation config that decodes as evaluation did (the same stop tokens, pad
token, token budget and sampling settings) and a README.md model card: method, hyperparameters, seed,
data, the trial's metrics with their intervals, its rank in the sweep and package versions.

A trial whose weights were not kept (`execution.keep`) is retrained from its params and seed through the
same trial code the sweep ran (`sweep.train.trial.Worker`), in a scratch sweep folder beside the output,
and the card says so. The folder is written atomically: it appears complete or not at all.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from sweep.errors import UserError
from sweep.io import atomic_dir, package_versions, utc_now, write_text
from sweep.results import SweepFolder, SweepRecord, TrialRecord, ranked_trials
from sweep.spec.plan import TrialSpec, format_value
from sweep.spec.recipe import Locate, Recipe, as_given

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Exported:
    """What `export_trial` wrote: the folder, the trial, its rank among complete trials, whether retrained."""

    path: Path
    trial_id: str
    rank: int
    complete: int
    retrained: bool


def _choose(ranked: list[TrialRecord], folder: SweepFolder, trial_id: str | None) -> TrialRecord:
    if trial_id is None:
        if not ranked:
            raise UserError(f"{folder.path}: no trial has completed yet, so there is no best one")
        return ranked[0]
    found = next((record for record in ranked if record.trial_id == trial_id), None)
    if found is not None:
        return found
    known = {record.trial_id: record.state for record in folder.trials()}
    if trial_id in known:
        raise UserError(f"{folder.path}: trial {trial_id} is {known[trial_id]}, not complete")
    raise UserError(f"{folder.path}: no trial {trial_id!r} (see `posweep status {folder.path}`)")


def _recipe(folder: SweepFolder) -> Recipe:
    text = folder.read_recipe()
    if text is None:
        raise UserError(f"{folder.path} has no recipe.yaml")
    return Recipe.model_validate(yaml.safe_load(text))


def _device(recipe: Recipe) -> str:
    import torch

    return "cuda" if recipe.execution.devices != "cpu" and torch.cuda.is_available() else "cpu"


def retrain(recipe: Recipe, record: TrialRecord, scratch: Path, log: Callable[[str], None]) -> Path:
    """Train the trial again from its params and seed with the sweep's trial code; return its model folder."""
    from sweep.train.trial import Worker

    keep_all = recipe.execution.model_copy(update={"keep": "all"})
    worker = Worker(
        recipe.model_copy(update={"execution": keep_all}), scratch, device=_device(recipe), log=log
    )
    params = record.params
    spec = TrialSpec(record.trial_id, params.method, params.params, params.seed, params.variant)
    result = worker.run(spec)
    if result.state != "complete":
        raise UserError(
            f"retraining {record.trial_id} ended {result.state}: {(result.error or {}).get('message')}"
        )
    return SweepFolder(scratch).trial(record.trial_id).model


def _load(recipe: Recipe, weights: Path, adapter: bool):
    """The trial's model and tokenizer; a LoRA adapter merged into the SFT weights unless `adapter`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sweep.hf.loading import load_policy

    remote = recipe.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(weights, trust_remote_code=remote)
    if not (weights / ADAPTER_CONFIG).is_file():
        if adapter:
            raise UserError("--adapter: this trial trained the full model, it has no LoRA adapter")
        return AutoModelForCausalLM.from_pretrained(
            weights, dtype="auto", trust_remote_code=remote
        ), tokenizer
    try:
        from peft import PeftModel
    except ImportError:
        raise UserError("the trial trained a LoRA adapter; its export needs peft: pip install peft") from None

    model = PeftModel.from_pretrained(load_policy(recipe.model, recipe.model.path), weights)
    return (model if adapter else model.merge_and_unload()), tokenizer


def generation_config(recipe: Recipe, model, tokenizer):
    """A GenerationConfig that decodes as evaluation did: its stop tokens, pad token, budget and sampling."""
    from transformers import GenerationConfig

    from sweep.evaluate.generation import stop_ids

    eos = stop_ids(model, tokenizer)
    spec = recipe.eval
    sampling = {"temperature": spec.temperature, "top_p": spec.top_p, "top_k": 0} if spec.do_sample else {}
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        max_new_tokens=spec.max_new_tokens,
        do_sample=spec.do_sample,
        **sampling,
    )


def _metric_lines(metrics: dict) -> list[str]:
    lines = []
    for key, value in sorted(metrics.items()):
        if key.endswith("_ci") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        interval = metrics.get(f"{key}_ci")
        shown = f"[{interval[0]:.4g}, {interval[1]:.4g}]" if isinstance(interval, list) else ""
        lines.append(f"| {key} | {value:.4g} | {shown} |")
    return lines


def _held_out(record: TrialRecord, metric: str) -> str:
    value = record.part_value(metric, "test")
    return "" if value is None else f"; held-out (test part) value {value:.4g}"


def model_card(
    recipe: Recipe, meta: SweepRecord, record: TrialRecord, rank: int, complete: int, retrained: bool
):
    """README.md of the exported folder: what the model is, how it was trained and how it scored."""
    params, metrics = record.params, record.metrics
    method = params.method
    rows = [f"| {name} | {format_value(value)} |" for name, value in params.params.items()]
    now = package_versions()
    versions = [
        f"| {name} | {meta.versions.get(name, '')} | {now.get(name, '')} |"
        for name in sorted({*meta.versions, *now})
    ]
    provenance = (
        "Its weights were not kept by the sweep, so `posweep export` retrained it from the recorded "
        "hyperparameters and seed with the sweep's own trial code."
        if retrained
        else "These are the weights the sweep kept for this trial."
    )
    front = {"library_name": "transformers", "tags": ["posweep", "trl", method]}
    data = yaml.safe_dump(recipe.model_dump(mode="json")["data"], sort_keys=False).strip()
    objective = f"{meta.metric} ({'maximize' if meta.maximize else 'minimize'})"
    return "\n".join(
        [
            f"---\n{yaml.safe_dump(front, sort_keys=False).strip()}\n---",
            f"# {record.trial_id}",
            "",
            f"Trial `{record.trial_id}` of the posweep sweep `{meta.name}` (plan {meta.plan_hash}): "
            f"{method} fine-tuning of `{recipe.model.path}` with TRL. {provenance}",
            "",
            f"Rank **{rank} of {complete}** complete trials by {objective} on the selection part of "
            f"the evaluation prompts{_held_out(record, meta.metric)}; over all prompts "
            f"{metrics.objective:.4g}.",
            "",
            "## Training",
            "",
            f"- method: `{method}`; seed: {params.seed}; data variant: {params.variant or '(single)'}",
            "",
            "| hyperparameter | value |",
            "|---|---|",
            *rows,
            "",
            f"TRL fields: `{json.dumps(params.trl_fields, sort_keys=True)}`",
            "",
            "Data (the recipe's `data` section):",
            "",
            f"```yaml\n{data}\n```",
            "",
            "## Evaluation",
            "",
            "Metrics of this trial on the sweep's evaluation prompts (intervals: bootstrap 95%).",
            "",
            "| metric | value | interval |",
            "|---|---|---|",
            *_metric_lines(metrics.metrics),
            "",
            "The generation config decodes as the evaluation did (stop tokens, token budget, sampling).",
            "",
            f"## Versions (exported {utc_now()})",
            "",
            "| package | sweep | export |",
            "|---|---|---|",
            *versions,
            "",
        ]
    )


def export_trial(
    sweep_dir: str | Path,
    out: str | Path,
    trial_id: str | None = None,
    adapter: bool = False,
    locate: Locate = as_given,
    log: Callable[[str], None] = print,
) -> Exported:
    """Write trial `trial_id` (default: the current plan's best complete one) as a Hugging Face folder."""
    folder = SweepFolder(sweep_dir).require()
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; export writes a new folder")
    meta = folder.read_sweep()
    records = folder.trials() if trial_id is not None else folder.plan_trials()[0]
    ranked = ranked_trials(records, meta.metric, meta.maximize)
    record = _choose(ranked, folder, trial_id)
    given = _recipe(folder)
    recipe = given.located(locate)
    kept = folder.trial(record.folder).model
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.retrain.", dir=out.parent) as scratch:
        retrained = not kept.is_dir()
        if retrained:
            log(f"{record.trial_id}: weights not kept; retraining it from its params and seed")
        weights = retrain(recipe, record, Path(scratch), log) if retrained else kept
        model, tokenizer = _load(recipe, weights, adapter)
        with atomic_dir(out) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            generation_config(recipe, model, tokenizer).save_pretrained(staging)
            rank = ranked.index(record) + 1
            write_text(staging / "README.md", model_card(given, meta, record, rank, len(ranked), retrained))
    return Exported(out, record.trial_id, rank, len(ranked), retrained)


def push_folder(folder: str | Path, repo: str, private: bool = False) -> str:
    """Upload an exported folder to the Hub repository `repo` (created if missing); return its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="posweep export")
    return f"https://huggingface.co/{repo}"
