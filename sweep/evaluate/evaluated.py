"""The typed records an evaluation passes on: a model's scored responses and the SFT baseline as arrays.

Both are prompt-major: response `line` of a record is sample `line % samples` of its `line // samples`-th
prompt; per-response arrays have shape (prompts, samples), per-response lists one entry per line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from sweep.results import SftBaseline


def prompt_rows(prompts: Iterable[int], per_prompt: int) -> list[int]:
    """The prompt index of each response to `prompts` (`per_prompt` responses each), prompt-major."""
    return [int(index) for index in prompts for _ in range(per_prompt)]


@dataclass(frozen=True)
class KlSamples:
    """The samples KL(π‖π_SFT) is estimated on: each one's prompt index and its samples.jsonl record
    ({response, tokens, logp_policy, logp_sft, kl_exact})."""

    rows: list[int]
    samples: list[dict]


@dataclass(frozen=True)
class Evaluated:
    """A model's responses to some of the evaluation prompts, each scored by every judge."""

    prompts: np.ndarray
    """Indices into the evaluation prompts."""
    scores: dict[str, np.ndarray]
    """Each judge's scores by judge name, (prompts, samples)."""
    lengths: np.ndarray
    """Each response's length in tokens (float), (prompts, samples)."""
    texts: list[str]
    shown: list[list[int]]
    """Each response's tokens as its text shows them: up to its stop token, special tokens left out."""
    ended: list[bool]
    """Whether each response ended at a stop token (else it was truncated)."""
    kl: KlSamples | None = None
    """The KL samples, when the evaluation estimates KL."""

    @property
    def samples_per_prompt(self) -> int:
        """How many responses each prompt has."""
        return self.lengths.shape[1]

    @property
    def rows(self) -> list[int]:
        """The prompt index of each response."""
        return prompt_rows(self.prompts, self.samples_per_prompt)


@dataclass(frozen=True)
class SftArrays:
    """The SFT baseline over every evaluation prompt as the evaluator compares against it."""

    responses: list[str]
    lengths: np.ndarray
    """The SFT responses' lengths in tokens (float), (prompts, samples)."""
    scores: dict[str, np.ndarray]
    """Each judge's scores of the SFT responses, (prompts, samples)."""
    reference_scores: dict[str, np.ndarray] | None
    """Each judge's score of each prompt's reference response, (prompts, 1); None without references."""

    @classmethod
    def of(cls, baseline: SftBaseline, shape: tuple[int, int]) -> SftArrays:
        """The arrays of a baseline record of `shape` (prompts, samples)."""
        references = baseline.reference_scores
        return cls(
            responses=baseline.responses,
            lengths=np.asarray(baseline.lengths, dtype=float).reshape(shape),
            scores={name: np.asarray(s).reshape(shape) for name, s in baseline.scores.items()},
            reference_scores=None
            if references is None
            else {name: np.asarray(s)[:, None] for name, s in references.items()},
        )
