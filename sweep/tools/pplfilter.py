"""Perplexity filtering of preference data for a target model (`posweep data ppl-filter`).

A preference dataset is usually off-policy: its responses come from other models, and
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
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from sweep.errors import UserError
from sweep.hf.data import load_pair_rows, read_rows
from sweep.hf.formats import pair_token_ids
from sweep.hf.loading import load_causal_lm, load_tokenizer, resolve_device
from sweep.io import utc_now, write_bytes, write_json, write_jsonl, write_text, write_via
from sweep.spec.recipe import TrainData
from sweep.tools.datastats import RESPONSES, distribution

DEFAULT_KEEP = 0.5


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
    from sweep.evaluate.generation import Response, sequence_logps

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


def local_file(source: TrainData) -> Path | None:
    """The local data file behind a source, or None for a Hub dataset."""
    path = Path(source.path).expanduser()
    return path if path.is_file() else None


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
        write_via(out, lambda tmp: pq.write_table(table, tmp))
    else:
        import pandas as pd

        frame = pd.read_csv(source_file, dtype=str, keep_default_na=False).iloc[list(kept)]
        write_via(out, lambda tmp: frame.to_csv(tmp, index=False))


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
