"""Preference-data tools: length statistics and perplexity filtering (`posweep data stats|ppl-filter`).

Length statistics. Preference datasets often prefer the longer response, and DPO exploits that bias:
"A Practical Analysis of Human Alignment with *PO" (arXiv 2407.15229) finds DPO drifting to long
responses. `length_stats` measures it: prompt/chosen/rejected length distributions in words (and in tokens
of a model's tokenizer), the fraction of pairs whose chosen response is longer, shorter, or as long as
the rejected one (fractions of all pairs; they sum to 1), the mean and median of chosen - rejected, rows
repeated exactly (prompt, chosen and rejected identical to an earlier row), rows whose prompt appeared in
an earlier row, pairs whose two responses are identical, and empty (blank) responses. For conversational
rows a response's text is the content of its assistant messages, joined by newlines; a prompt's text is
the content of all its messages. Token counts are those of the same text (no special tokens or template).

Perplexity filter. A preference dataset is usually off-policy: its responses come from other models, and
the policy being aligned may find some of them very unlikely. Such pairs give large, noisy DPO gradients
(the implicit reward moves far to fit text the policy would never write). Keeping the pairs the SFT
policy finds natural fits the dataset to that model cheaply, an approximation of on-policy data without
generating and labelling new responses ("Investigating on RLHF methodology", arXiv 2410.01789).

- A response's perplexity is exp(-mean log-prob of its tokens) under the target model, teacher-forced with
  the prompt as context, tokenized as TRL's DPOTrainer tokenizes the row: plain rows are prompt + response
  text with the tokenizer's EOS appended to the response (the EOS is scored, as DPO trains on it);
  conversational rows go through the chat template, the prompt with the generation prompt, and the
  response is what the template renders after it (its end-of-turn tokens included). A response with no
  tokens has no perplexity (NaN) and its pair is never kept.
- The pair score is the larger of the chosen and rejected perplexities: DPO's gradient on a pair depends on
  both responses' log-ratios, so one very unlikely response is enough to make the pair off-policy; a mean
  would let a fluent response hide an implausible one.
- Exactly one criterion: `keep` q keeps the ceil(q·n) pairs with the lowest pair score (ties by original
  order); `max_ppl` X keeps pairs whose score is at most X; `max_ratio` R (at least 1) keeps pairs whose
  chosen/rejected perplexity ratio is at most R, dropping pairs whose chosen response the model finds much
  less natural than the rejected one (the pairs that pull the policy furthest from itself).
- Output: the input file's own rows (same format, columns and values; original order), minus the dropped
  ones; JSONL for a Hub dataset. Beside it, `<out>.summary.json` (counts, criterion, model, perplexity
  quantiles before/after) and `<out>.ppl.png` (histogram of pair perplexity before/after).
- The model runs in eval mode on `device` (auto: cuda when available), bfloat16 on a GPU that supports it,
  else float32; sequences are sorted by length and left-padded in batches of `batch_size`.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from sweep.data import is_conversational, load_pair_rows, read_rows
from sweep.errors import UserError
from sweep.io import utc_now, write_bytes, write_json, write_jsonl, write_text
from sweep.recipe import TrainData

RESPONSES = ("chosen", "rejected")
QUANTILES = {"p10": 10, "p25": 25, "median": 50, "p75": 75, "p90": 90}
QUANTILE_COLUMNS = ("mean", "std", "min", *QUANTILES, "max")
CHECKS = ("duplicate_rows", "repeated_prompts", "identical_responses", "empty_chosen", "empty_rejected")
DEFAULT_KEEP = 0.5


# --------------------------------------------------------------------------- statistics


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


def load_tokenizer(name: str):
    """A model's tokenizer only (directory, Hub id or builtin:NAME; no remote code), with a pad token."""
    from sweep import rm
    from sweep.builtin import resolve

    return rm.load_tokenizer(resolve(name))


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


# --------------------------------------------------------------------------- perplexity


def _common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    length = 0
    for token, other_token in zip(ids, other, strict=False):
        if token != other_token:
            break
        length += 1
    return length


def pair_token_ids(tokenizer, pair: dict) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids of a preference row, as TRL's DPOTrainer tokenizes it."""
    if is_conversational(pair):
        if not tokenizer.chat_template:
            raise UserError("the data are conversations but the model's tokenizer has no chat template")

        def encode(messages: list[dict], **options) -> list[int]:
            encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)
            return list(encoded["input_ids"])

        prompt = encode(pair["prompt"], add_generation_prompt=True)
        full = [encode(pair["prompt"] + pair[field]) for field in RESPONSES]
    else:
        eos = tokenizer.eos_token or ""
        prompt = tokenizer(pair["prompt"])["input_ids"]
        full = [
            tokenizer(pair["prompt"] + pair[field] + ("" if pair[field].endswith(eos) else eos))["input_ids"]
            for field in RESPONSES
        ]
    start = min(_common_prefix_length(prompt, ids) for ids in full)
    return list(prompt[:start]), list(full[0][start:]), list(full[1][start:])


def resolve_device(name: str | Any):
    """`auto` is cuda when available, else cpu; anything else as given (cuda must be available)."""
    from sweep.judges import judge_device

    return judge_device(name, None) if isinstance(name, str) else name


def pair_perplexities(
    rows: Sequence[dict],
    model,
    tokenizer,
    batch_size: int = 8,
    device: str | Any = "auto",
    progress: Callable[[int], None] | None = None,
) -> list[tuple[float, float]]:
    """Per-token perplexity of each row's (chosen, rejected) response under `model`, prompt as context.

    `progress` is called with the number of responses scored after each batch.
    """
    from sweep.evaluate import Response, sequence_logps

    model.to(resolve_device(device))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts, responses = [], []
    for row in rows:
        prompt, *answers = pair_token_ids(tokenizer, row)
        prompts += [prompt, prompt]
        responses += [Response(tuple(ids), True) for ids in answers]
    scored = sorted(
        (index for index, response in enumerate(responses) if response.ids),
        key=lambda index: len(prompts[index]) + len(responses[index].ids),
    )
    perplexity = [math.nan] * len(responses)
    for start in range(0, len(scored), batch_size):
        batch = scored[start : start + batch_size]
        logps = sequence_logps(
            model, [prompts[i] for i in batch], [responses[i] for i in batch], len(batch), pad_id
        )
        for index, logp in zip(batch, logps, strict=True):
            perplexity[index] = math.exp(-logp / len(responses[index].ids))
        if progress is not None:
            progress(len(batch))
    return [(perplexity[2 * row], perplexity[2 * row + 1]) for row in range(len(rows))]


def pair_score(chosen: float, rejected: float) -> float:
    """A pair's perplexity: the larger of its two responses' (NaN when either is NaN)."""
    return math.nan if math.isnan(chosen) or math.isnan(rejected) else max(chosen, rejected)


def criterion(
    keep: float | None = None, max_ppl: float | None = None, max_ratio: float | None = None
) -> dict:
    """The one filtering criterion given, checked (none given: keep the lower half)."""
    given = {
        key: value
        for key, value in {"keep": keep, "max_ppl": max_ppl, "max_ratio": max_ratio}.items()
        if value is not None
    }
    if not given:
        return {"keep": DEFAULT_KEEP}
    if len(given) > 1:
        raise UserError(
            f"give one filtering criterion, not {' and '.join('--' + k.replace('_', '-') for k in given)}"
        )
    if keep is not None and not 0 < keep <= 1:
        raise UserError(f"--keep must be a fraction in (0, 1], got {keep:g}")
    if max_ppl is not None and not max_ppl > 0:
        raise UserError(f"--max-ppl must be positive, got {max_ppl:g}")
    if max_ratio is not None and not max_ratio >= 1:
        raise UserError(f"--max-ratio must be at least 1 (chosen/rejected perplexity), got {max_ratio:g}")
    return given


def select_pairs(
    perplexities: Sequence[tuple[float, float]],
    keep: float | None = None,
    max_ppl: float | None = None,
    max_ratio: float | None = None,
) -> list[int]:
    """Indices (ascending) of the pairs one criterion keeps; pairs without a perplexity are never kept."""
    rule = criterion(keep, max_ppl, max_ratio)
    scores = [pair_score(chosen, rejected) for chosen, rejected in perplexities]
    if "keep" in rule:
        count = math.ceil(round(rule["keep"] * len(scores), 9))
        ranked = sorted((i for i, s in enumerate(scores) if not math.isnan(s)), key=lambda i: scores[i])
        return sorted(ranked[:count])
    if "max_ppl" in rule:
        return [i for i, s in enumerate(scores) if s <= rule["max_ppl"]]
    return [i for i, (c, r) in enumerate(perplexities) if c / r <= rule["max_ratio"]]


# --------------------------------------------------------------------------- filtering a file


def local_file(source: TrainData) -> Path | None:
    """The local data file behind a source (builtin references resolved), or None for a Hub dataset."""
    from sweep.builtin import is_builtin, resolve

    location = resolve(source.path) if is_builtin(source.path) else source.path
    path = Path(location).expanduser()
    return path if path.is_file() else None


def _replace_with(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` atomically through a writer that takes a file name (a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_subset(source_file: Path, kept: Sequence[int], out: Path) -> None:
    """Write the kept rows of a local data file to `out` in the file's own format, values untouched."""
    suffix = source_file.suffix.lower()
    if suffix == ".jsonl":
        with source_file.open(encoding="utf-8") as handle:
            lines = [line.rstrip("\r\n") for line in handle if line.strip()]
        write_text(out, "".join(lines[i] + "\n" for i in kept))
    elif suffix == ".json":
        data = json.loads(source_file.read_text(encoding="utf-8"))
        if isinstance(data, list):
            data = [data[i] for i in kept]
        else:
            key = "data" if "data" in data else "rows"
            data[key] = [data[key][i] for i in kept]
        write_text(out, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(source_file).take(list(kept))
        _replace_with(out, lambda tmp: pq.write_table(table, tmp))
    else:
        import pandas as pd

        frame = pd.read_csv(source_file, dtype=str, keep_default_na=False).iloc[list(kept)]
        _replace_with(out, lambda tmp: frame.to_csv(tmp, index=False))


def _quantiles(values: Sequence[float]) -> dict[str, float] | None:
    finite = [v for v in values if math.isfinite(v)]
    return distribution(finite) if finite else None


def histogram_png(before: Sequence[float], after: Sequence[float], title: str) -> bytes:
    """PNG of the pair-perplexity histograms of all pairs and kept pairs (log scale over a decade or more)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    finite = np.asarray([v for v in before if math.isfinite(v)], dtype=float)
    kept = np.asarray([v for v in after if math.isfinite(v)], dtype=float)
    low, high = (finite.min(), finite.max()) if finite.size else (1.0, 2.0)
    high = max(high, low * 1.01)
    log_scale = high / low >= 10
    bins = np.geomspace(low, high, 41) if log_scale else np.linspace(low, high, 41)
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.hist(finite, bins=bins, alpha=0.45, color="tab:gray", label=f"all pairs (n={finite.size})")
    ax.hist(kept, bins=bins, alpha=0.75, color="tab:blue", label=f"kept pairs (n={kept.size})")
    if log_scale:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlabel("pair perplexity (max of chosen and rejected, per token)")
    ax.set_ylabel("pairs")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def load_causal_lm(name: str, device: str | Any):
    """The target model (directory, Hub id or builtin:NAME; no remote code) on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    from sweep.builtin import resolve
    from sweep.judges import judge_dtype

    target = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve(name), dtype=judge_dtype("auto", target), trust_remote_code=False
        )
    except (OSError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot load model {name!r}: {message}") from None
    return model.to(target).eval()


def filter_file(
    source: TrainData,
    model_name: str,
    out: str | Path,
    rule: dict,
    batch_size: int = 8,
    device: str = "auto",
) -> dict[str, Any]:
    """Perplexity-filter preference data for `model_name`; write the subset, its summary and histogram."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out = Path(out)
    source_file = local_file(source)
    suffix = ".jsonl" if source_file is None else source_file.suffix.lower()
    if out.suffix.lower() != suffix:
        origin = "a Hub dataset" if source_file is None else f"the input ({source_file.name})"
        raise UserError(f"--out must end in {suffix}, the format of {origin}; got {out.name}")
    if source_file is not None and out.resolve() == source_file.resolve():
        raise UserError(f"--out {out} is the input file; write the filtered data elsewhere")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    started = perf_counter()
    pairs = load_pair_rows(source, where="DATA")
    tokenizer = load_tokenizer(model_name)
    model = load_causal_lm(model_name, device)
    columns = (TextColumn("perplexity"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("perplexity", total=2 * len(pairs))
        perplexities = pair_perplexities(
            pairs, model, tokenizer, batch_size, model.device, progress=lambda n: bar.advance(task, n)
        )
    kept = select_pairs(perplexities, **rule)
    if source_file is None:
        rows = read_rows(source, where="DATA")
        write_jsonl(out, [rows[i] for i in kept])
    else:
        write_subset(source_file, kept, out)
    scores = [pair_score(*pair) for pair in perplexities]
    kept_scores = [scores[i] for i in kept]
    summary = {
        "data": source.path,
        "split": source.split,
        "output": str(out),
        "format": suffix.lstrip("."),
        "model": model_name,
        "device": str(model.device),
        "criterion": rule,
        "pair_score": "max(chosen, rejected) per-token perplexity",
        "pairs": len(pairs),
        "kept": len(kept),
        "dropped": len(pairs) - len(kept),
        "kept_fraction": len(kept) / len(pairs),
        "unscored": sum(math.isnan(s) for s in scores),
        "pair_perplexity": {"before": _quantiles(scores), "after": _quantiles(kept_scores)},
        **{
            f"{field}_perplexity": {
                "before": _quantiles([pair[side] for pair in perplexities]),
                "after": _quantiles([perplexities[i][side] for i in kept]),
            }
            for side, field in enumerate(RESPONSES)
        },
        "time_s": round(perf_counter() - started, 3),
        "created": utc_now(),
    }
    write_json(f"{out}.summary.json", summary)
    title = f"{source.path}: {len(kept)} of {len(pairs)} pairs kept ({_rule_text(rule)}) for {model_name}"
    write_bytes(f"{out}.ppl.png", histogram_png(scores, kept_scores, title))
    return summary


def _rule_text(rule: dict) -> str:
    ((key, value),) = rule.items()
    return f"{key.replace('_', '-')} {value:g}"
