"""The metrics dict of an evaluation: every metric over all evaluated prompts and over each part of them.

Every judge's metrics (the secondary judges' prefixed with `NAME.`), the KL metrics when the evaluation has
KL samples, and the responses' length, word and repetition metrics, in that order; then the same again
under `selection` and `test`, over the evaluated prompts of each part (`sweep.evaluate.estimators`
computes each one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sweep.evaluate import estimators
from sweep.evaluate.estimators import judge_metrics, response_metrics
from sweep.evaluate.evaluated import Evaluated, SftArrays
from sweep.hf.judges import Judge


def judges_metrics(
    judges: Sequence[Judge],
    scores: dict[str, np.ndarray],
    sft_scores: dict[str, np.ndarray],
    lengths: np.ndarray,
    sft_lengths: np.ndarray,
    references: dict[str, np.ndarray] | None,
    bootstrap: int,
) -> dict:
    """Every judge's metrics from its (prompts, samples) scores, the secondary judges' prefixed with their
    name; `bootstrap` resamples give each interval."""
    metrics = {}
    for judge in judges:
        reference = references[judge.name] if references else None
        found = judge_metrics(
            scores[judge.name], sft_scores[judge.name], lengths, sft_lengths, reference, bootstrap
        )
        metrics.update({judge.prefix + name: value for name, value in found.items()})
    return metrics


def prompts_metrics(
    evaluated: Evaluated, chosen: np.ndarray, sft: SftArrays, judges: Sequence[Judge], bootstrap: int
) -> dict:
    """Every metric over the `chosen` positions of the evaluated prompts."""
    per_prompt = evaluated.samples_per_prompt
    lines = (chosen[:, None] * per_prompt + np.arange(per_prompt)).ravel()
    prompts = evaluated.prompts[chosen]
    lengths = evaluated.lengths[chosen]
    metrics = judges_metrics(
        judges,
        {name: values[chosen] for name, values in evaluated.scores.items()},
        {name: values[prompts] for name, values in sft.scores.items()},
        lengths,
        sft.lengths[prompts],
        None
        if sft.reference_scores is None
        else {name: values[prompts] for name, values in sft.reference_scores.items()},
        bootstrap,
    )
    if evaluated.kl is not None:
        wanted = set(prompts.tolist())
        pairs = zip(evaluated.kl.rows, evaluated.kl.samples, strict=True)
        kept_rows, kept = zip(*[pair for pair in pairs if pair[0] in wanted])
        metrics.update(
            estimators.kl_metrics(
                [sample["kl_exact"] for sample in kept],
                [sample["logp_policy"] for sample in kept],
                [sample["logp_sft"] for sample in kept],
                [sample["tokens"] for sample in kept],
                kept_rows,
            )
        )
    texts = [evaluated.texts[line] for line in lines]
    shown = [evaluated.shown[line] for line in lines]
    ended = [evaluated.ended[line] for line in lines]
    metrics.update(response_metrics(lengths.ravel(), texts, ended, shown))
    return metrics


def evaluation_metrics(
    evaluated: Evaluated, selection: np.ndarray, sft: SftArrays, judges: Sequence[Judge], bootstrap: int
) -> dict:
    """Every metric over all evaluated prompts, and under `selection` and `test` over those of each part
    (`selection`: the selection mask over every evaluation prompt); evaluated prompts that are all in the
    test part count as the selection part, and a part without evaluated prompts is left out."""
    count = len(evaluated.prompts)
    metrics = prompts_metrics(evaluated, np.arange(count), sft, judges, bootstrap)
    picked = selection[evaluated.prompts]
    picked = picked if picked.any() else np.ones(count, dtype=bool)
    for part, chosen in (("selection", picked), ("test", ~picked)):
        if chosen.any():
            found = prompts_metrics(evaluated, np.flatnonzero(chosen), sft, judges, bootstrap)
            metrics[part] = {key: value for key, value in found.items() if not isinstance(value, list)}
    return metrics
