"""The SFT baseline's cache: its key (what the SFT responses depend on) and the one-writer cache file.

The SFT model's responses, scores and metrics on the evaluation prompts are computed once per sweep into
`cache/sft_baseline.json`, keyed by a hash of the model and the dtype it computes in, the prompts and the
token ids generated from, the decoding settings and the judges; a file lock makes concurrent workers
compute it once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sweep.evaluate.estimators import EVAL_SEED
from sweep.io import file_lock, json_digest, package_versions
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
