"""The SFT baseline: its record computed from the SFT model's responses, its key, and the one-writer cache.

The SFT model's responses, scores and metrics on the evaluation prompts (and the reference responses'
scores) are computed once per sweep into `cache/sft_baseline.json`, keyed by a hash of the model and the
dtype it computes in, the prompts and the token ids generated from, the decoding settings and the judges; a
file lock makes concurrent workers compute it once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter

import numpy as np

from sweep.evaluate.estimators import EVAL_SEED, response_metrics
from sweep.evaluate.evaluated import Evaluated
from sweep.evaluate.metrics import judges_metrics
from sweep.hf.judges import Judge
from sweep.io import file_lock, json_digest, package_versions, utc_now
from sweep.results import SftBaseline, SweepFolder
from sweep.spec.recipe import Recipe

BASELINE_FORMAT = 3
BASELINE_FIELDS = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "samples_per_prompt",
    "batch_size",
    "bootstrap",
)


def baseline_key(recipe: Recipe, items: Sequence, prompt_ids: list[list[int]], dtype: str) -> str:
    """The hash that names one SFT baseline (a change to any input computes it anew)."""
    payload = {
        "format": BASELINE_FORMAT,
        "seed": EVAL_SEED,
        "model": recipe.model.model_dump(mode="json", exclude={"lora"}),
        "dtype": dtype,
        "eval_data": recipe.data.eval.model_dump(mode="json"),
        "prompts": [[item.prompt, item.reference] for item in items],
        "prompt_ids": prompt_ids,
        "eval": {name: getattr(recipe.eval, name) for name in BASELINE_FIELDS},
        "judges": [judge.model_dump(mode="json") for judge in recipe.judges],
        "versions": package_versions("torch", "transformers"),
    }
    return json_digest(payload)


def cached_baseline(
    folder: SweepFolder, key: str, compute: Callable[[str], SftBaseline], log: Callable[[str], None]
) -> SftBaseline:
    """The baseline cached under `key`, else `compute(key)`, stored; one worker computes at a time."""
    with file_lock(folder.baseline_json.with_name(folder.baseline_json.name + ".lock")):
        cached = folder.read_baseline()
        if cached is not None and cached.key == key:
            log(f"SFT baseline: reused {folder.baseline_json.relative_to(folder.path)}")
            return cached
        baseline = compute(key)
        folder.write_baseline(baseline)
    log(f"SFT baseline: generated {len(baseline.responses)} responses ({baseline.time_s:.1f} s)")
    return baseline


def compute_baseline(
    key: str,
    recipe: Recipe,
    items: Sequence,
    judges: Sequence[Judge],
    respond: Callable[[], Evaluated],
    has_references: bool,
) -> SftBaseline:
    """The baseline named `key`: the SFT model's responses to every prompt of `items` (`respond()`, scored
    by every judge), the reference responses' scores (when `has_references`), and the SFT's own metrics."""
    start = perf_counter()
    sft = respond()
    reference_scores = None
    if has_references:
        prompts, answers = [item.prompt for item in items], [item.reference for item in items]
        reference_scores = {
            judge.name: np.asarray(judge.score(prompts, answers))[:, None] for judge in judges
        }
    metrics = response_metrics(sft.lengths.ravel(), sft.texts, sft.ended, sft.shown)
    metrics.update(
        judges_metrics(
            judges, sft.scores, sft.scores, sft.lengths, sft.lengths, reference_scores, recipe.eval.bootstrap
        )
    )
    return SftBaseline(
        key=key,
        created=utc_now(),
        time_s=round(perf_counter() - start, 3),
        model=recipe.model.path,
        n_prompts=len(items),
        samples_per_prompt=sft.samples_per_prompt,
        responses=sft.texts,
        lengths=[len(ids) for ids in sft.shown],
        ended=sft.ended,
        scores={name: values.ravel().tolist() for name, values in sft.scores.items()},
        reference_scores={name: values.ravel().tolist() for name, values in reference_scores.items()}
        if reference_scores
        else None,
        metrics=metrics,
    )
