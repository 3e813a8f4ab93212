"""The one length policy of every method: pairs whose prompt leaves too little room are dropped.

posweep applies it before any trainer sees the data, so every method trains on the same pairs. A pair is
dropped (not truncated) when its prompt, tokenized as training and evaluation tokenize it, leaves fewer than
`train.min_completion_tokens` tokens under `train.max_length`: a truncated prompt would be a context the
model never sees at inference (a conversation without its system prompt or first turns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import datasets

from sweep.errors import UserError
from sweep.hf.formats import pair_token_ids


@dataclass(frozen=True)
class LengthCounts:
    """What the length policy did to one training set."""

    pairs: int
    dropped: int
    max_length: int
    min_completion_tokens: int

    def to_json(self) -> dict[str, int]:
        """The counts as recorded in sweep.json and metrics.json."""
        return asdict(self)


def apply_length_policy(
    pairs: datasets.Dataset, tokenizer, max_length: int, min_completion_tokens: int, where: str = "data.train"
) -> tuple[datasets.Dataset, LengthCounts]:
    """The pairs whose prompt leaves at least `min_completion_tokens` under `max_length`, and the counts."""
    limit = max_length - min_completion_tokens
    keep = [index for index, row in enumerate(pairs) if len(pair_token_ids(tokenizer, row)[0]) <= limit]
    if not keep:
        raise UserError(
            f"{where}: every prompt leaves fewer than {min_completion_tokens} tokens under train.max_length "
            f"({max_length}); raise train.max_length or lower train.min_completion_tokens"
        )
    counts = LengthCounts(len(keep), len(pairs) - len(keep), max_length, min_completion_tokens)
    return (pairs if counts.dropped == 0 else pairs.select(keep)), counts
