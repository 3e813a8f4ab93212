"""Length statistics of preference data (`posweep data stats`).

Length statistics. Preference datasets often prefer the longer response, and DPO exploits that bias:
"A Practical Analysis of Human Alignment with *PO" (arXiv 2407.15229) finds DPO drifting to long
responses. `length_stats` measures it: prompt/chosen/rejected length distributions in words (and in tokens
of a model's tokenizer), the fraction of pairs whose chosen response is longer, shorter, or as long as
the rejected one (fractions of all pairs; they sum to 1), the mean and median of chosen - rejected, rows
repeated exactly (prompt, chosen and rejected identical to an earlier row), rows whose prompt appeared in
an earlier row, pairs whose two responses are identical, and empty (blank) responses. For conversational
rows a response's text is the content of its assistant messages, joined by newlines; a prompt's text is
the content of all its messages. Token counts are those of the same text (no special tokens or template).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from sweep.errors import UserError
from sweep.hf.data import is_conversational, load_pair_rows
from sweep.hf.loading import load_tokenizer
from sweep.spec.recipe import TrainData

RESPONSES = ("chosen", "rejected")
QUANTILES = {"p10": 10, "p25": 25, "median": 50, "p75": 75, "p90": 90}
QUANTILE_COLUMNS = ("mean", "std", "min", *QUANTILES, "max")
CHECKS = ("duplicate_rows", "repeated_prompts", "identical_responses", "empty_chosen", "empty_rejected")


def _content_text(content: Any) -> str:
    """A message's text (the text parts of multimodal content)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def field_text(value: str | list[dict], response: bool) -> str:
    """Text of a prompt or response: the string, or its messages' content (a response's: assistant only)."""
    if isinstance(value, str):
        return value
    messages = [m for m in value if not response or m["role"] == "assistant"]
    return "\n".join(_content_text(m["content"]) for m in messages)


def distribution(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation, min, quantiles and max of a non-empty list of numbers."""
    array = np.asarray(values, dtype=float)
    quantiles = np.percentile(array, list(QUANTILES.values()))
    return {
        "mean": float(array.mean()),
        "std": float(array.std()),
        "min": float(array.min()),
        **{name: float(q) for name, q in zip(QUANTILES, quantiles, strict=True)},
        "max": float(array.max()),
    }


def _comparison(lengths: dict[str, list[int]]) -> dict[str, Any]:
    """Length distributions, chosen-vs-rejected fractions and difference for one unit (words or tokens)."""
    chosen, rejected = np.asarray(lengths["chosen"]), np.asarray(lengths["rejected"])
    difference = chosen - rejected
    return {
        **{field: distribution(values) for field, values in lengths.items()},
        "chosen_longer_fraction": float((difference > 0).mean()),
        "tie_fraction": float((difference == 0).mean()),
        "rejected_longer_fraction": float((difference < 0).mean()),
        "difference_mean": float(difference.mean()),
        "difference_median": float(np.median(difference)),
    }


def length_stats(rows: Sequence[dict], tokenizer=None) -> dict[str, Any]:
    """Length-bias, duplicate and empty-response statistics of preference rows (prompt, chosen, rejected)."""
    if not rows:
        raise UserError("no preference pairs to describe")
    texts = {
        field: [field_text(row[field], field != "prompt") for row in rows] for field in ("prompt", *RESPONSES)
    }
    words = {field: [len(text.split()) for text in values] for field, values in texts.items()}
    tokens = None
    if tokenizer is not None:
        tokens = {
            field: [len(ids) for ids in tokenizer(values, add_special_tokens=False)["input_ids"]]
            for field, values in texts.items()
        }
    row_keys = [json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True) for row in rows]
    unique_prompts = len({json.dumps(row["prompt"], sort_keys=True) for row in rows})
    return {
        "pairs": len(rows),
        "format": "conversational" if is_conversational(rows[0]) else "plain",
        "words": _comparison(words),
        "tokens": _comparison(tokens) if tokens is not None else None,
        "duplicate_rows": len(rows) - len(set(row_keys)),
        "unique_prompts": unique_prompts,
        "repeated_prompts": len(rows) - unique_prompts,
        "identical_responses": sum(row["chosen"] == row["rejected"] for row in rows),
        "empty_chosen": sum(not text.strip() for text in texts["chosen"]),
        "empty_rejected": sum(not text.strip() for text in texts["rejected"]),
    }


def dataset_stats(source: TrainData, model: str | None) -> dict[str, Any]:
    """`length_stats` of a data source (tokens too when a model's tokenizer is named), with its origin."""
    rows = load_pair_rows(source, where="DATA")
    tokenizer = load_tokenizer(model) if model else None
    return {"data": source.path, "split": source.split, "model": model, **length_stats(rows, tokenizer)}


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def print_stats(stats: dict[str, Any]) -> None:
    """The statistics as rich tables on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 100))
    tokens = f", tokens of {stats['model']}" if stats["tokens"] else ""
    console.print(f"{stats['data']} ({stats['split']}): {stats['pairs']} pairs, {stats['format']}{tokens}\n")
    for unit in ("words", "tokens"):
        figures = stats[unit]
        if figures is None:
            continue
        table = Table(f"length ({unit})", *QUANTILE_COLUMNS, box=None, pad_edge=False)
        for field in ("prompt", *RESPONSES):
            table.add_row(field, *(_number(figures[field][column]) for column in QUANTILE_COLUMNS))
        console.print(table)
        console.print(
            f"  chosen longer {figures['chosen_longer_fraction']:.1%}, ties {figures['tie_fraction']:.1%}, "
            f"rejected longer {figures['rejected_longer_fraction']:.1%}; chosen - rejected: "
            f"mean {_number(figures['difference_mean'])}, median {_number(figures['difference_median'])}\n"
        )
    table = Table("rows", "count", box=None, pad_edge=False)
    for key in CHECKS:
        table.add_row(key.replace("_", " "), str(stats[key]))
    console.print(table)
