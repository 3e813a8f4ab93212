"""Evaluation of a policy on the out-of-distribution prompts against the SFT baseline.

Responses, judge scores, win rates against the SFT model and the dataset's reference responses, KL to the
SFT model, and response lengths.

One `Evaluator` per worker process loads the prompts and judges once and holds the SFT baseline: the SFT
model's responses to the prompts (same decoding), their judge scores, the reference responses' scores,
and the SFT's own metrics, computed once per sweep into `cache/sft_baseline.json` (`sweep.evaluate.baseline`
computes, keys and caches it). It coordinates: it generates and judges, and hands the scored responses
(`sweep.evaluate.evaluated.Evaluated`) to `sweep.evaluate.metrics` for the metrics dict and to
`sweep.evaluate.samples` for samples.jsonl.

Decoding. Prompts are tokenized as TRL tokenizes them for training (plain text by the tokenizer with its
own special tokens; message lists through the chat template with the generation prompt; a plain prompt as
one user message through the template when the policy trained on conversations), left-padded in
batches of `eval.batch_size`, and decoded greedily or sampled with the recipe's temperature and top_p only:
the model's own generation_config (top_k, repetition penalty, ...) is ignored, so every model is decoded
the same way. Sampling is seeded (seed 0, the same for the SFT baseline and every policy). A response
ends at a stop token or after `max_new_tokens` (then it is truncated); its text and its length are its
tokens before the stop without special tokens (the text a judge and a reader see, in tokens).

Selection and test parts. The prompts are split once, by a seeded hash of their index
(`eval.selection_fraction` of them, at least one, form the selection part). Every metric is computed over
all prompts, and again over each part under `selection` and `test` (`sweep.evaluate.metrics`): the study
is told the selection part's objective (`sweep.spec.metrics.selection_value`; metrics.json's `objective`
is all prompts'), which also picks the best trial, and the test part scores the picked trial on prompts it
was not picked on.

Scores. A policy response identical to an SFT response for the same prompt takes that response's stored
score, so identical responses always tie (the SFT model against itself has win rate exactly 0.5); the
others are judged, each distinct (prompt, response) once (`sweep.evaluate.scores.ScoreMemo`).

KL(π‖π_SFT). On responses sampled from the policy at temperature 1 and top_p 1 (the evaluation's own
samples when it decodes that way, else `eval.kl_samples` separate samples per prompt), one teacher-forced
pass of each model gives every next-token distribution along the sample. `kl_to_sft` is the mean over
samples of Σ_t KL(π(·|x,y<t) ‖ π_SFT(·|x,y<t)) over the response positions, the stop token's included;
`kl_to_sft_mc` the mean of log π(y|x) − log π_SFT(y|x); `_per_token` variants divide each sample's value by
its token count; `_se` is each one's standard error over prompts.

samples.jsonl: one line per (prompt, sample), beside the SFT response with the same prompt and sample
number, with each judge's scores and the line's KL samples (`sweep.evaluate.samples` lists its fields).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from sweep.errors import UserError
from sweep.evaluate import estimators
from sweep.evaluate.baseline import baseline_key, cached_baseline, compute_baseline
from sweep.evaluate.estimators import EVAL_SEED
from sweep.evaluate.evaluated import Evaluated, KlSamples, SftArrays, prompt_rows
from sweep.evaluate.generation import Decoding, Response, generate, stop_ids, teacher_forced_kl
from sweep.evaluate.metrics import evaluation_metrics
from sweep.evaluate.samples import sample_records
from sweep.evaluate.scores import ScoreMemo
from sweep.hf.formats import encode_prompt, templated
from sweep.hf.judges import Judge, load_judges
from sweep.results import SftBaseline, SweepFolder, TrialFolder
from sweep.spec.recipe import Recipe


class Evaluator:
    """Evaluates policies against the SFT model on the evaluation prompts; one per worker process.

    It implements `sweep.train.protocol.PolicyEvaluator`, what a trial worker calls on it."""

    def __init__(
        self,
        recipe: Recipe,
        sft_model,
        tokenizer,
        sweep_dir: str | Path,
        device=None,
        log: Callable[[str], None] = print,
        *,
        train_conversational: bool,
    ):
        from sweep.hf.data import load_eval_prompts

        self.recipe, self.settings = recipe, recipe.eval
        self.sft_model, self.tokenizer, self.log = sft_model, tokenizer, log
        self.sweep_dir = Path(sweep_dir)
        self.items = load_eval_prompts(recipe.data.eval)
        self.templated = templated(train_conversational, not isinstance(self.items[0].prompt, str))
        self.prompt_ids = [encode_prompt(tokenizer, item.prompt, self.templated) for item in self.items]
        self.has_references = self._check_references()
        self.eos_ids = stop_ids(sft_model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        self.special_ids = set(tokenizer.all_special_ids)
        self.decoding = Decoding.of(self.settings)
        self.selection = estimators.selection_mask(
            len(self.items), self.settings.selection_fraction, self.settings.selection_seed
        )
        self.judges: list[Judge] = load_judges(recipe.judges, device)
        self.memo = ScoreMemo([item.prompt for item in self.items])
        self.baseline: SftBaseline = self._baseline()
        shape = (len(self.items), self.settings.samples_per_prompt)
        self.sft_arrays = SftArrays.of(self.baseline, shape)
        rows = prompt_rows(range(len(self.items)), self.settings.samples_per_prompt)
        for name, scores in self.baseline.scores.items():
            self.memo.remember(name, rows, self.baseline.responses, scores)

    def _check_references(self) -> bool:
        missing = sum(item.reference is None for item in self.items)
        if 0 < missing < len(self.items):
            raise UserError(
                f"data.eval: {missing} of {len(self.items)} evaluation prompts have no reference response"
            )
        return missing == 0

    def _generate(
        self, model, prompts: Sequence[int], samples: int, decoding: Decoding, seed: int
    ) -> list[Response]:
        return generate(
            model,
            [self.prompt_ids[index] for index in prompts],
            samples,
            decoding,
            self.settings.batch_size,
            self.pad_id,
            self.eos_ids,
            seed,
        )

    def _shown(self, response: Response) -> list[int]:
        """A response's tokens as its text shows them: up to its stop token, special tokens left out (what
        `decode(..., skip_special_tokens=True)` drops). Its length is the response's length."""
        return [token for token in response.ids[: response.length] if token not in self.special_ids]

    def _text(self, response: Response) -> str:
        return self.tokenizer.decode(self._shown(response))

    def _respond(
        self, model, prompts: np.ndarray, times: dict[str, float]
    ) -> tuple[Evaluated, list[Response]]:
        """`model`'s responses to `prompts` (indices into the evaluation prompts), scored by every judge,
        and the responses as generated; the seconds generating and judging took go into `times`."""
        samples, count = self.settings.samples_per_prompt, len(prompts)
        start = perf_counter()
        responses = self._generate(model, prompts, samples, self.decoding, EVAL_SEED)
        shown = [self._shown(response) for response in responses]
        texts = [self.tokenizer.decode(ids) for ids in shown]
        times["generate"] = perf_counter() - start
        start = perf_counter()
        rows = prompt_rows(prompts, samples)
        scores = {judge.name: self.memo.scores(judge, rows, texts) for judge in self.judges}
        times["judge"] = perf_counter() - start
        evaluated = Evaluated(
            prompts=prompts,
            scores={name: values.reshape(count, samples) for name, values in scores.items()},
            lengths=np.asarray([len(ids) for ids in shown], dtype=float).reshape(count, samples),
            texts=texts,
            shown=shown,
            ended=[response.ended for response in responses],
        )
        return evaluated, responses

    def _baseline(self) -> SftBaseline:
        """The cached SFT baseline when its key matches, else computed and cached (one worker at a time)."""
        key = baseline_key(
            self.recipe, self.items, self.prompt_ids, str(next(self.sft_model.parameters()).dtype)
        )
        return cached_baseline(SweepFolder(self.sweep_dir), key, self._compute_baseline, self.log)

    def _compute_baseline(self, key: str) -> SftBaseline:
        every = np.arange(len(self.items))
        return compute_baseline(
            key,
            self.recipe,
            self.items,
            self.judges,
            lambda: self._respond(self.sft_model, every, {})[0],
            self.has_references,
        )

    # ----------------------------------------------------------------------------------- evaluation

    def evaluate(self, policy, trial_dir: str | Path) -> dict:
        """Full evaluation: write trial_dir/samples.jsonl and return the flat metrics dict."""
        evaluated, metrics = self._run(policy, np.arange(len(self.items)), with_kl=True)
        metrics["judge_formats"] = {judge.name: judge.format for judge in self.judges}
        records = sample_records(
            self.items, self.judges, evaluated, self.sft_arrays, own_kl=self.decoding.samples_model
        )
        TrialFolder(Path(trial_dir)).write_samples(records)
        return metrics

    def quick(self, policy) -> float:
        """The objective on the first `eval.quick_prompts` prompts of the selection part (what a pruner
        sees: the held-out part stays unseen by every decision); no files written."""
        prompts = np.flatnonzero(self.selection)[: self.settings.quick_prompts]
        needs_kl = self.settings.objective.rsplit(".", 1)[-1].startswith("kl_")
        return self.objective(self._run(policy, prompts, with_kl=needs_kl)[1])

    def objective(self, metrics: dict) -> float:
        """The value of `eval.objective` over all prompts in a metrics dict (NaN when it is missing)."""
        value = metrics.get(self.settings.objective)
        return math.nan if value is None else float(value)

    def _kl(self, policy, prompts: np.ndarray, responses: list[Response]) -> KlSamples:
        """The KL samples: the evaluation's own responses when they are samples of the policy, else
        `eval.kl_samples` fresh ones per prompt, each through one teacher-forced pass of both models."""
        if self.decoding.samples_model:
            rows = prompt_rows(prompts, self.settings.samples_per_prompt)
        else:
            per_prompt = self.settings.kl_samples
            free = Decoding(self.settings.max_new_tokens, do_sample=True)
            responses = self._generate(policy, prompts, per_prompt, free, EVAL_SEED + 1)
            rows = prompt_rows(prompts, per_prompt)
        passes = teacher_forced_kl(
            policy,
            self.sft_model,
            [self.prompt_ids[index] for index in rows],
            responses,
            self.settings.batch_size,
            self.pad_id,
        )
        samples = [
            {
                "response": self._text(response),
                "tokens": len(response.ids),
                "logp_policy": p.logp_policy,
                "logp_sft": p.logp_sft,
                "kl_exact": p.kl_exact,
            }
            for response, p in zip(responses, passes, strict=True)
        ]
        return KlSamples(rows, samples)

    def _run(self, policy, prompts: np.ndarray, with_kl: bool) -> tuple[Evaluated, dict]:
        """`policy`'s scored responses to `prompts` (indices into the evaluation prompts), with their KL
        samples when `with_kl`, and their metrics (over the given prompts, and over their selection and
        test parts) with the seconds each step took."""
        times: dict[str, float] = {}
        evaluated, responses = self._respond(policy, prompts, times)
        if with_kl:
            start = perf_counter()
            evaluated = replace(evaluated, kl=self._kl(policy, prompts, responses))
            times["kl"] = perf_counter() - start
        metrics = evaluation_metrics(
            evaluated, self.selection, self.sft_arrays, self.judges, self.settings.bootstrap
        )
        metrics["time_s"] = {name: round(seconds, 3) for name, seconds in times.items()}
        return evaluated, metrics


def evaluator_factory(
    recipe: Recipe, sweep_dir: str | Path, device, log: Callable[[str], None]
) -> Callable[[Any, Any, bool], Evaluator]:
    """What a trial worker calls with its SFT model and tokenizer to get the sweep's evaluator (an
    `EvaluatorFactory` of `sweep.train.protocol`)."""

    def build(sft_model, tokenizer, train_conversational: bool) -> Evaluator:
        return Evaluator(
            recipe, sft_model, tokenizer, sweep_dir, device, log, train_conversational=train_conversational
        )

    return build
