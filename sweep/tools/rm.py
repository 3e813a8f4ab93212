"""Reward (preference) model training (`posweep rm train`).

The judge-building step of "Investigating on RLHF methodology" (arXiv 2410.01789).

`train_reward_model` turns any causal-LM or sequence-classification checkpoint into a one-output sequence
classifier trained with TRL's `RewardTrainer` (Bradley–Terry loss on chosen/rejected pairs). It holds out a
fraction of the pairs, measures the pairwise accuracy on them (chosen scored above rejected), and saves an
ordinary Hugging Face directory: the model (`config.pad_token_id` set), its tokenizer (pad token set) and
`posweep_rm.json`, a summary with the input format, the held-out accuracy, pair counts, base model,
settings, package versions and times.

Pairs have columns `prompt`, `chosen`, `rejected`, as plain strings or as conversational lists of
{role, content} messages. Every (prompt, response) is built by `sweep.hf.judgeinputs.judge_input` in the
format `--format` picks (auto: the tokenizer's chat template, else a text pair for a cross-encoder, else
prompt + response + eos), for training, held-out scoring and, through the recorded format, every later
use as a judge. Batches are padded with the tokenizer's pad token, which the saved config names, so the
model pools where TRL trains it to and where its own forward reads it: the last token that is not the pad.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from sweep import __version__
from sweep.errors import UserError
from sweep.hf.judgeinputs import RM_SUMMARY_FILE, JudgeInput, judge_input, resolve_format
from sweep.hf.judges import score_inputs
from sweep.hf.loading import load_tokenizer
from sweep.hf.quiet import QUIET_ARGS, quiet_trainer
from sweep.io import atomic_dir, package_versions, utc_now, write_json

SUMMARY_FILE = RM_SUMMARY_FILE
NO_LIMIT = 10**9


def sequence_ids(tokenizer, prompt, response, fmt: str = "auto") -> list[int]:
    """Token ids of one (prompt, response) as a reward model with this tokenizer trains on and reads it."""
    return judge_input(tokenizer, resolve_format(fmt, tokenizer), prompt, response, NO_LIMIT).input_ids


def score(model, tokenizer, prompts: list, responses: list, batch_size: int = 32, fmt: str = "auto"):
    """Reward of each (prompt, response) under a reward model and its tokenizer."""
    fmt = resolve_format(fmt, tokenizer)
    inputs = [judge_input(tokenizer, fmt, p, r, NO_LIMIT) for p, r in zip(prompts, responses, strict=True)]
    return score_inputs(model, inputs, batch_size)


class PairCollator:
    """A batch of chosen rows then rejected rows, right-padded, with token types when the inputs have them."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        rows = [example[f"{side}_ids"] for side in ("chosen", "rejected") for example in examples]
        typed = "chosen_types" in examples[0]
        types = (
            [example[f"{side}_types"] for side in ("chosen", "rejected") for example in examples]
            if typed
            else []
        )
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        token_types = torch.zeros_like(input_ids)
        for row, ids in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            if typed:
                token_types[row, : len(ids)] = torch.tensor(types[row])
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        return {**batch, "token_type_ids": token_types} if typed else batch


def _encoded(pairs, tokenizer, fmt: str):
    """The pairs as judge inputs (chosen_ids, rejected_ids, and token types for a text pair)."""

    def encode(row: dict) -> dict:
        out = {}
        for side in ("chosen", "rejected"):
            item: JudgeInput = judge_input(tokenizer, fmt, row["prompt"], row[side], NO_LIMIT)
            out[f"{side}_ids"] = item.input_ids
            if item.token_type_ids is not None:
                out[f"{side}_types"] = item.token_type_ids
        return out

    return pairs.map(encode, remove_columns=pairs.column_names)


def _check_pairs(pairs, eval_fraction: float) -> int:
    """Validate the pairs and the held-out fraction; return the number of held-out pairs."""
    missing = [column for column in ("prompt", "chosen", "rejected") if column not in pairs.column_names]
    if missing:
        raise UserError(
            f"preference data needs columns prompt, chosen, rejected; missing {', '.join(missing)} "
            f"(found {', '.join(pairs.column_names)})"
        )
    if not 0 < eval_fraction < 1:
        raise UserError(f"the held-out fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    n_heldout = round(len(pairs) * eval_fraction)
    if not 0 < n_heldout < len(pairs):
        raise UserError(
            f"{len(pairs)} preference pairs are too few to hold out a fraction of {eval_fraction}"
        )
    return n_heldout


def _check_free(out_dir: Path) -> None:
    """A UserError unless `out_dir` is free (missing, or an empty directory)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} already exists and is not empty; choose another output directory")


def train_reward_model(
    pairs,
    base_model: str,
    out_dir: str | Path,
    *,
    eval_fraction: float = 0.1,
    epochs: float = 1.0,
    learning_rate: float = 1e-5,
    batch_size: int = 8,
    max_length: int = 1024,
    seed: int = 0,
    tokenizer: str | None = None,
    trust_remote_code: bool = False,
    fmt: str = "auto",
    log: Callable[[str], None] = partial(print, file=sys.stderr),
) -> dict:
    """Train a reward model on preference `pairs` (a `datasets.Dataset`), save it in `out_dir`; return
    its summary (also written to `out_dir/posweep_rm.json`)."""
    from trl import RewardConfig, RewardTrainer

    started, created = time.perf_counter(), utc_now()
    out_dir = Path(out_dir)
    n_heldout = _check_pairs(pairs, eval_fraction)
    processing_class = load_tokenizer(tokenizer or base_model, trust_remote_code)
    try:
        fmt = resolve_format(fmt, processing_class)
    except UserError as error:
        raise UserError(f"{tokenizer or base_model}: {error}") from None
    split = pairs.train_test_split(test_size=n_heldout, seed=seed)
    heldout = [
        [
            judge_input(processing_class, fmt, row["prompt"], row[side], NO_LIMIT)
            for side in ("chosen", "rejected")
        ]
        for row in split["test"]
    ]
    heldout_kept = [pair for pair in heldout if max(len(item.input_ids) for item in pair) <= max_length]
    if not heldout_kept:
        raise UserError(f"every held-out pair is longer than max_length={max_length} tokens")
    on_gpu = torch.cuda.is_available()
    _check_free(out_dir)
    with atomic_dir(out_dir) as build:
        args = RewardConfig(
            output_dir=str(build / "trainer"),
            num_train_epochs=epochs,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            max_length=max_length,
            seed=seed,
            bf16=on_gpu and torch.cuda.is_bf16_supported(),
            activation_checkpointing=on_gpu,
            dataloader_pin_memory=on_gpu,
            trust_remote_code=trust_remote_code,
            remove_unused_columns=False,
            **QUIET_ARGS,
        )
        log(f"training a reward model from {base_model} on {len(split['train'])} pairs ({fmt} inputs)")
        encoded = _encoded(split["train"], processing_class, fmt)
        trainer = RewardTrainer(
            model=base_model,
            args=args,
            train_dataset=encoded,
            processing_class=processing_class,
            data_collator=PairCollator(processing_class.pad_token_id),
        )
        n_train = len(trainer.train_dataset)
        if n_train == 0:
            raise UserError(f"every training pair is longer than max_length={max_length} tokens")
        train_loss = quiet_trainer(trainer, "reward model", log).train().training_loss
        trained = time.perf_counter()
        model = trainer.model
        scores = score_inputs(model, [item for pair in heldout_kept for item in pair])
        margins = [chosen - rejected for chosen, rejected in zip(scores[::2], scores[1::2], strict=True)]
        evaluated = time.perf_counter()
        shutil.rmtree(args.output_dir, ignore_errors=True)
        model.save_pretrained(build)
        processing_class.save_pretrained(build)
        summary = {
            "format": fmt,
            "heldout_accuracy": sum(margin > 0 for margin in margins) / len(margins),
            "mean_margin": sum(margins) / len(margins),
            "n_train": n_train,
            "n_heldout": len(margins),
            "n_dropped_too_long": {
                "train": len(split["train"]) - n_train,
                "heldout": len(heldout) - len(heldout_kept),
            },
            "base_model": base_model,
            "tokenizer": tokenizer or base_model,
            "settings": {
                "eval_fraction": eval_fraction,
                "epochs": epochs,
                "learning_rate": learning_rate,
                "batch_size": batch_size,
                "max_length": max_length,
                "seed": seed,
            },
            "train_loss": train_loss,
            "time_s": {
                "train": round(trained - started, 2),
                "evaluate": round(evaluated - trained, 2),
                "total": round(time.perf_counter() - started, 2),
            },
            "created": created,
            "versions": {
                "posweep": __version__,
                **package_versions("torch", "transformers", "trl"),
            },
        }
        write_json(build / SUMMARY_FILE, summary)
    log(
        f"reward model saved in {out_dir}: held-out accuracy {summary['heldout_accuracy']:.3f} "
        f"({len(margins)} pairs)"
    )
    return summary
