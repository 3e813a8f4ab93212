"""How much of the KL estimators' standard error any estimator could remove, per kept trial of a sweep.

    python benchmarks/kl_variance.py RESULTS/NAME [--samples 16] [--trials ID ...]

For each trial whose full weights were kept (`execution.keep: all` or `best`), draws `--samples` policy
samples per evaluation prompt (temperature 1, the recipe's max_new_tokens) and splits the variance of
both estimators, the exact next-token KL summed along a sample (`kl_to_sft`) and the log-ratio
(`kl_to_sft_mc`), into within-prompt and between-prompt parts (one-way random effects). The between-prompt
part is the spread of the true per-prompt KL: every unbiased estimator carries it, so with one sample per
prompt no estimator's standard error over prompts can fall below sqrt(between / prompts), and the ratio
SE(mc) / SE(any) is at most sqrt(var(mc) / between). Printed per trial: KL, the ratio of the exact
estimator at one sample per prompt (what `make demo` records), and that ceiling.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import yaml
from transformers import AutoModelForCausalLM

from sweep.builtin import resolve
from sweep.evaluate.generation import Decoding, generate, stop_ids, teacher_forced_kl
from sweep.hf.data import load_eval_prompts
from sweep.hf.formats import encode_prompt
from sweep.hf.loading import load_policy, load_policy_tokenizer
from sweep.results import SweepFolder
from sweep.spec.recipe import Recipe

SEED = 1


def variance_parts(values: np.ndarray) -> tuple[float, float]:
    """(within-prompt, between-prompt) variance of a (prompts, samples) array, by the method of moments."""
    within = float(values.var(axis=1, ddof=1).mean())
    return within, float(values.mean(axis=1).var(ddof=1)) - within / values.shape[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--samples", type=int, default=16, help="policy samples per prompt (at least 2)")
    parser.add_argument("--trials", nargs="*", help="trial ids (default: every trial with kept weights)")
    args = parser.parse_args()
    folder = SweepFolder(args.sweep).require()
    recipe = Recipe.model_validate(yaml.safe_load(folder.read_recipe())).located(resolve)
    model = recipe.model
    tokenizer = load_policy_tokenizer(model, model.tokenizer or model.path, same_repo=not model.tokenizer)
    sft = load_policy(model, model.path).eval()
    prompts = [encode_prompt(tokenizer, item.prompt) for item in load_eval_prompts(recipe.data.eval)]
    eos = stop_ids(sft, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    decoding = Decoding(recipe.eval.max_new_tokens, do_sample=True)
    rows = [prompt for prompt in prompts for _ in range(args.samples)]
    kept = [t.trial_id for t in folder.trials() if (folder.trial(t.trial_id).path / "model").is_dir()]
    print(f"{len(prompts)} prompts x {args.samples} samples; SE ratios at one sample per prompt")
    print(f"{'trial':34s} {'KL':>7s} {'exact':>7s} {'ceiling':>8s} {'between share':>14s}")
    for trial_id in args.trials or kept:
        policy = AutoModelForCausalLM.from_pretrained(folder.trial(trial_id).path / "model").eval()
        responses = generate(policy, prompts, args.samples, decoding, recipe.eval.batch_size, pad, eos, SEED)
        passes = teacher_forced_kl(policy, sft, rows, responses, recipe.eval.batch_size, pad)
        exact = np.array([p.kl_exact for p in passes]).reshape(len(prompts), args.samples)
        ratio = np.array([p.logp_policy - p.logp_sft for p in passes]).reshape(exact.shape)
        (exact_within, between), mc_variance = variance_parts(exact), sum(variance_parts(ratio))
        exact_variance = exact_within + between
        print(
            f"{trial_id:34s} {exact.mean():7.3f} {math.sqrt(mc_variance / exact_variance):7.2f} "
            f"{math.sqrt(mc_variance / max(between, 1e-12)):8.2f} {between / exact_variance:14.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
