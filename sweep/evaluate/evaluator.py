"""Evaluation of a policy on the out-of-distribution prompts against the SFT baseline.

Responses, judge scores, win rates against the SFT model and the dataset's reference responses, KL to the
SFT model, and response lengths.

One `Evaluator` per worker process loads the prompts and judges once and holds the SFT baseline: the SFT
model's responses to the prompts (same decoding), their judge scores, the reference responses' scores,
and the SFT's own metrics, computed once per sweep into `cache/sft_baseline.json` (`sweep.evaluate.baseline`
keys and caches it).

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
all prompts, and again over each part under `selection` and `test`: the study is told the selection
part's objective (`sweep.spec.metrics.selection_value`; metrics.json's `objective` is all prompts'),
which also picks the best trial, and the test part scores the picked trial on prompts it was not picked on.

Scores. A policy response identical to an SFT response for the same prompt takes that response's stored
score, so identical responses always tie (the SFT model against itself has win rate exactly 0.5).

KL(π‖π_SFT). On responses sampled from the policy at temperature 1 and top_p 1 (the evaluation's own
samples when it decodes that way, else `eval.kl_samples` separate samples per prompt), one teacher-forced
pass of each model gives every next-token distribution along the sample. `kl_to_sft` is the mean over
samples of Σ_t KL(π(·|x,y<t) ‖ π_SFT(·|x,y<t)) over the response positions, the stop token's included;
`kl_to_sft_mc` the mean of log π(y|x) − log π_SFT(y|x); `_per_token` variants divide each sample's value by
its token count; `_se` is each one's standard error over prompts.

samples.jsonl: one line per (prompt, sample) with prompt_index, sample, prompt, reference (when the data
have references), response, score, sft_response, sft_score, reference_score, `NAME.score`,
`NAME.sft_score`, `NAME.reference_score` for each secondary judge, length, sft_length, words, truncated,
and `kl`: the KL samples drawn for this line, each {response, tokens, logp_policy, logp_sft, kl_exact} (the
line's own response when the evaluation samples at temperature 1, else the prompt's KL samples on its
first line).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter

import numpy as np

from sweep.errors import UserError
from sweep.evaluate import estimators
from sweep.evaluate.baseline import baseline_key, cached_baseline
from sweep.evaluate.estimators import EVAL_SEED, judge_metrics, response_metrics
from sweep.evaluate.generation import Decoding, Response, generate, stop_ids, teacher_forced_kl
from sweep.hf.formats import encode_prompt, templated
from sweep.hf.judges import Judge, load_judges
from sweep.io import utc_now
from sweep.results import SftBaseline, SweepFolder, TrialFolder
from sweep.spec.recipe import Recipe


class Evaluator:
    """Evaluates policies against the SFT model on the evaluation prompts; one per worker process."""

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
        self.known_scores: dict[str, dict[tuple[int, str], float]] = {}
        self.baseline = self._baseline()
        shape = (len(self.items), self.settings.samples_per_prompt)
        self.sft_lengths = np.asarray(self.baseline["lengths"], dtype=float).reshape(shape)
        self.sft_scores = {name: np.asarray(s).reshape(shape) for name, s in self.baseline["scores"].items()}
        references = self.baseline["reference_scores"] or {}
        self.reference_scores = {name: np.asarray(s)[:, None] for name, s in references.items()}
        for name, scores in self.baseline["scores"].items():
            self.known_scores[name] = dict(
                zip(zip(self._rows(range(len(self.items))), self.baseline["responses"]), scores)
            )

    def _check_references(self) -> bool:
        missing = sum(item.reference is None for item in self.items)
        if 0 < missing < len(self.items):
            raise UserError(
                f"data.eval: {missing} of {len(self.items)} evaluation prompts have no reference response"
            )
        return missing == 0

    def _rows(self, prompts: Sequence[int], per_prompt: int | None = None) -> list[int]:
        """The prompt index of each response to `prompts`, prompt-major."""
        per_prompt = per_prompt or self.settings.samples_per_prompt
        return [int(index) for index in prompts for _ in range(per_prompt)]

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

    def _scores(self, judge: Judge, rows: list[int], texts: list[str]) -> np.ndarray:
        """Judge scores; a response already scored for its prompt (an SFT response, a repeat) is reused."""
        known = self.known_scores.get(judge.name, {})
        keys = list(zip(rows, texts))
        missing = list(dict.fromkeys(key for key in keys if key not in known))
        fresh = judge.score([self.items[index].prompt for index, _ in missing], [text for _, text in missing])
        found = {**dict(zip(missing, fresh)), **known}
        return np.asarray([found[key] for key in keys], dtype=float)

    def _judged(
        self,
        scores: dict,
        sft_scores: dict,
        lengths: np.ndarray,
        sft_lengths: np.ndarray,
        references: dict | None,
    ) -> dict:
        """Every judge's metrics, the secondary judges' prefixed with their name."""
        metrics = {}
        for judge in self.judges:
            prefix = "" if judge.primary else f"{judge.name}."
            reference = references[judge.name] if references else None
            found = judge_metrics(
                scores[judge.name],
                sft_scores[judge.name],
                lengths,
                sft_lengths,
                reference,
                self.settings.bootstrap,
            )
            metrics.update({prefix + name: value for name, value in found.items()})
        return metrics

    # ----------------------------------------------------------------------------------- SFT baseline

    def _baseline(self) -> dict:
        """The cached SFT baseline when its key matches, else computed and cached (one worker at a time)."""
        key = baseline_key(
            self.recipe, self.items, self.prompt_ids, str(next(self.sft_model.parameters()).dtype)
        )
        return cached_baseline(SweepFolder(self.sweep_dir), key, self._compute_baseline, self.log).to_json()

    def _compute_baseline(self, key: str) -> SftBaseline:
        start = perf_counter()
        count, samples = len(self.items), self.settings.samples_per_prompt
        responses = self._generate(self.sft_model, range(count), samples, self.decoding, EVAL_SEED)
        shown = [self._shown(response) for response in responses]
        texts = [self.tokenizer.decode(ids) for ids in shown]
        rows = self._rows(range(count))
        scores = {judge.name: self._scores(judge, rows, texts) for judge in self.judges}
        references = None
        if self.has_references:
            prompts, answers = [item.prompt for item in self.items], [item.reference for item in self.items]
            references = {
                judge.name: np.asarray(judge.score(prompts, answers))[:, None] for judge in self.judges
            }
        lengths = np.asarray([len(ids) for ids in shown], dtype=float).reshape(count, samples)
        own = {name: values.reshape(count, samples) for name, values in scores.items()}
        ended = [response.ended for response in responses]
        metrics = response_metrics(lengths.ravel(), texts, ended, shown)
        metrics.update(self._judged(own, own, lengths, lengths, references))
        return SftBaseline(
            key=key,
            created=utc_now(),
            time_s=round(perf_counter() - start, 3),
            model=self.recipe.model.path,
            n_prompts=count,
            samples_per_prompt=samples,
            responses=texts,
            lengths=[len(ids) for ids in shown],
            ended=ended,
            scores={name: values.tolist() for name, values in scores.items()},
            reference_scores={name: values.ravel().tolist() for name, values in references.items()}
            if references
            else None,
            metrics=metrics,
        )

    # ----------------------------------------------------------------------------------- evaluation

    def evaluate(self, policy, trial_dir: str | Path) -> dict:
        """Full evaluation: write trial_dir/samples.jsonl and return the flat metrics dict."""
        metrics, records = self._run(policy, np.arange(len(self.items)), with_kl=True)
        metrics["judge_formats"] = {judge.name: judge.format for judge in self.judges}
        TrialFolder(Path(trial_dir)).write_samples(records)
        return metrics

    def quick(self, policy) -> float:
        """The objective on the first `eval.quick_prompts` prompts of the selection part (what a pruner
        sees: the held-out part stays unseen by every decision); no files written."""
        prompts = np.flatnonzero(self.selection)[: self.settings.quick_prompts]
        needs_kl = self.settings.objective.rsplit(".", 1)[-1].startswith("kl_")
        return self.objective(self._run(policy, prompts, with_kl=needs_kl)[0])

    def objective(self, metrics: dict) -> float:
        """The value of `eval.objective` over all prompts in a metrics dict (NaN when it is missing)."""
        value = metrics.get(self.settings.objective)
        return math.nan if value is None else float(value)

    def _kl(self, policy, prompts: np.ndarray, responses: list[Response]) -> tuple[list[int], list[dict]]:
        """Each KL sample's prompt index and record."""
        if self.decoding.samples_model:
            rows = self._rows(prompts)
        else:
            per_prompt = self.settings.kl_samples
            free = Decoding(self.settings.max_new_tokens, do_sample=True)
            responses = self._generate(policy, prompts, per_prompt, free, EVAL_SEED + 1)
            rows = self._rows(prompts, per_prompt)
        prompts = [self.prompt_ids[index] for index in rows]
        passes = teacher_forced_kl(
            policy, self.sft_model, prompts, responses, self.settings.batch_size, self.pad_id
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
        return rows, samples

    def _metrics(self, chosen: np.ndarray, outputs: dict) -> dict:
        """Every metric over the chosen rows of the evaluated (prompts, samples) arrays."""
        per_prompt = self.settings.samples_per_prompt
        lines = (chosen[:, None] * per_prompt + np.arange(per_prompt)).ravel()
        prompts = outputs["prompts"][chosen]
        lengths = outputs["lengths"][chosen]
        metrics = self._judged(
            {name: values[chosen] for name, values in outputs["scores"].items()},
            {name: values[prompts] for name, values in self.sft_scores.items()},
            lengths,
            self.sft_lengths[prompts],
            {name: values[prompts] for name, values in self.reference_scores.items()}
            if self.has_references
            else None,
        )
        if outputs["kl"] is not None:
            wanted = set(prompts.tolist())
            kept_rows, kept = zip(*[pair for pair in zip(*outputs["kl"], strict=True) if pair[0] in wanted])
            metrics.update(
                estimators.kl_metrics(
                    [sample["kl_exact"] for sample in kept],
                    [sample["logp_policy"] for sample in kept],
                    [sample["logp_sft"] for sample in kept],
                    [sample["tokens"] for sample in kept],
                    kept_rows,
                )
            )
        texts = [outputs["texts"][line] for line in lines]
        shown = [outputs["shown"][line] for line in lines]
        ended = [outputs["ended"][line] for line in lines]
        metrics.update(response_metrics(lengths.ravel(), texts, ended, shown))
        return metrics

    def _run(self, policy, prompts: np.ndarray, with_kl: bool) -> tuple[dict, list[dict]]:
        """Metrics (over the given prompts, and over their selection and test parts) and samples.jsonl
        records of `policy` on `prompts` (indices into the evaluation prompts)."""
        samples, count = self.settings.samples_per_prompt, len(prompts)
        rows = self._rows(prompts)
        times = {}
        start = perf_counter()
        responses = self._generate(policy, prompts, samples, self.decoding, EVAL_SEED)
        shown = [self._shown(response) for response in responses]
        texts = [self.tokenizer.decode(ids) for ids in shown]
        times["generate"] = perf_counter() - start
        start = perf_counter()
        scores = {judge.name: self._scores(judge, rows, texts) for judge in self.judges}
        times["judge"] = perf_counter() - start
        outputs = {
            "prompts": prompts,
            "scores": {name: values.reshape(count, samples) for name, values in scores.items()},
            "lengths": np.asarray([len(ids) for ids in shown], dtype=float).reshape(count, samples),
            "texts": texts,
            "shown": shown,
            "ended": [response.ended for response in responses],
            "kl": None,
        }
        kl_lines: list[list[dict]] = [[] for _ in rows]
        if with_kl:
            start = perf_counter()
            outputs["kl"] = kl_rows, kl_samples = self._kl(policy, prompts, responses)
            first_line = {int(index): position * samples for position, index in enumerate(prompts)}
            for position, (index, sample) in enumerate(zip(kl_rows, kl_samples, strict=True)):
                kl_lines[position if self.decoding.samples_model else first_line[index]].append(sample)
            times["kl"] = perf_counter() - start
        metrics = self._metrics(np.arange(count), outputs)
        selection = self.selection[prompts] if self.selection[prompts].any() else np.ones(count, dtype=bool)
        for part, chosen in (("selection", selection), ("test", ~selection)):
            if chosen.any():
                found = self._metrics(np.flatnonzero(chosen), outputs)
                metrics[part] = {key: value for key, value in found.items() if not isinstance(value, list)}
        metrics["time_s"] = {name: round(seconds, 3) for name, seconds in times.items()}
        return metrics, self._records(rows, responses, texts, scores, kl_lines)

    def _records(
        self,
        rows: list[int],
        responses: list[Response],
        texts: list[str],
        scores: dict,
        kl_lines: list[list[dict]],
    ) -> list[dict]:
        records = []
        samples = self.settings.samples_per_prompt
        for line, (index, response, text) in enumerate(zip(rows, responses, texts, strict=True)):
            sample = line % samples
            sft_line = index * samples + sample  # the SFT baseline holds every prompt's responses
            record = {"prompt_index": index, "sample": sample, "prompt": self.items[index].prompt}
            if self.has_references:
                record["reference"] = self.items[index].reference
            record["response"] = text
            record["sft_response"] = self.baseline["responses"][sft_line]
            for judge in self.judges:
                prefix = "" if judge.primary else f"{judge.name}."
                record[prefix + "score"] = float(scores[judge.name][line])
                record[prefix + "sft_score"] = float(self.sft_scores[judge.name].flat[sft_line])
                if self.has_references:
                    record[prefix + "reference_score"] = float(self.reference_scores[judge.name][index, 0])
            record.update(
                length=len(self._shown(response)),
                sft_length=int(self.sft_lengths.flat[sft_line]),
                words=len(text.split()),
                truncated=not response.ended,
                kl=kl_lines[line],
            )
            records.append(record)
        return records


def evaluator_factory(
    recipe: Recipe, sweep_dir: str | Path, device, log: Callable[[str], None]
) -> Callable[..., Evaluator]:
    """What a trial worker calls with its SFT model and tokenizer to get the sweep's evaluator."""

    def build(sft_model, tokenizer, train_conversational: bool) -> Evaluator:
        return Evaluator(
            recipe, sft_model, tokenizer, sweep_dir, device, log, train_conversational=train_conversational
        )

    return build
