"""The records of a trial's samples.jsonl: one per (prompt, sample) of an evaluation, beside the SFT's.

Each line has prompt_index, sample, prompt, reference (when the data have references), response,
sft_response, score, sft_score, reference_score, `NAME.score`, `NAME.sft_score`, `NAME.reference_score` for
each secondary judge, length, sft_length, words, truncated, and `kl`: the KL samples drawn for this line,
each {response, tokens, logp_policy, logp_sft, kl_exact} (the line's own response when the evaluation
samples at temperature 1, else the prompt's KL samples on its first line).
"""

from __future__ import annotations

from collections.abc import Sequence

from sweep.evaluate.evaluated import Evaluated, SftArrays
from sweep.hf.judges import Judge


def _kl_lines(evaluated: Evaluated, own: bool) -> list[list[dict]]:
    """The KL samples of each line: its own (`own`: the responses are the KL samples, one per line), or
    every KL sample of its prompt on the prompt's first line."""
    lines: list[list[dict]] = [[] for _ in evaluated.texts]
    if evaluated.kl is None:
        return lines
    samples = evaluated.samples_per_prompt
    first_line = {int(index): position * samples for position, index in enumerate(evaluated.prompts)}
    for position, (index, sample) in enumerate(zip(evaluated.kl.rows, evaluated.kl.samples, strict=True)):
        lines[position if own else first_line[index]].append(sample)
    return lines


def sample_records(
    items: Sequence, judges: Sequence[Judge], evaluated: Evaluated, sft: SftArrays, *, own_kl: bool
) -> list[dict]:
    """The samples.jsonl records of `evaluated` (responses to `items`, the evaluation prompts), each beside
    the SFT response with the same prompt and sample number; `own_kl`: the responses are the KL samples."""
    records = []
    samples = evaluated.samples_per_prompt
    kl_lines = _kl_lines(evaluated, own_kl)
    for line, (index, text) in enumerate(zip(evaluated.rows, evaluated.texts, strict=True)):
        sample = line % samples
        sft_line = index * samples + sample  # the SFT baseline holds every prompt's responses
        item = items[index]
        record = {"prompt_index": index, "sample": sample, "prompt": item.prompt}
        if item.reference is not None:
            record["reference"] = item.reference
        record["response"] = text
        record["sft_response"] = sft.responses[sft_line]
        for judge in judges:
            record[judge.prefix + "score"] = float(evaluated.scores[judge.name].flat[line])
            record[judge.prefix + "sft_score"] = float(sft.scores[judge.name].flat[sft_line])
            if sft.reference_scores is not None:
                record[judge.prefix + "reference_score"] = float(sft.reference_scores[judge.name][index, 0])
        record.update(
            length=len(evaluated.shown[line]),
            sft_length=int(sft.lengths.flat[sft_line]),
            words=len(text.split()),
            truncated=not evaluated.ended[line],
            kl=kl_lines[line],
        )
        records.append(record)
    return records
