"""Data derived from a built-in task on first use, through the same code users run on their own data."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sweep.io import file_lock, read_jsonl, write_jsonl

PPL_KEEP = 0.5


def ensure_ppl_filtered(folder: Path, log: Callable[[str], None] = partial(print, file=sys.stderr)) -> Path:
    """The training pairs the SFT policy finds most natural: the lower half by pair perplexity.

    Computed once per build with the code of `posweep data ppl-filter --keep 0.5`, so one sweep can
    compare the full and the filtered data as two variants (recipes/variants.yaml).
    """
    target = folder / "data" / "train-ppl50.jsonl"
    if target.exists():
        return target
    with file_lock(target.with_suffix(".lock")):
        if target.exists():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sweep.tools.pplfilter import pair_perplexities, select_pairs

        rows = read_jsonl(folder / "data" / "train.jsonl")
        log(f"filtering builtin:toy/train by perplexity under builtin:toy (keeping {PPL_KEEP:.0%})")
        tokenizer = AutoTokenizer.from_pretrained(folder / "sft")
        model = AutoModelForCausalLM.from_pretrained(folder / "sft").eval()
        with torch.inference_mode():
            perplexities = pair_perplexities(rows, model, tokenizer, batch_size=128, device="cpu")
        write_jsonl(target, [rows[index] for index in select_pairs(perplexities, keep=PPL_KEEP)])
    return target
