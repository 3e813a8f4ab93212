"""The judge-score memo: a response already scored for its prompt takes its known score, the rest are judged.

The known scores are the SFT baseline's, so a policy response identical to an SFT response for the same
prompt takes that response's stored score and the two always tie; each missing (prompt, response) is
judged once per call, however often it repeats.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sweep.hf.judges import Judge


class ScoreMemo:
    """Judge scores by judge name and (prompt index, response text), for the evaluation prompts."""

    def __init__(self, prompts: Sequence):
        self.prompts = prompts
        self.known: dict[str, dict[tuple[int, str], float]] = {}

    def remember(
        self, judge: str, rows: Sequence[int], texts: Sequence[str], scores: Sequence[float]
    ) -> None:
        """Know `scores`, judge `judge`'s of responses `texts` to prompts `rows` (replacing what it knew)."""
        self.known[judge] = dict(zip(zip(rows, texts), scores))

    def scores(self, judge: Judge, rows: Sequence[int], texts: Sequence[str]) -> np.ndarray:
        """`judge`'s score of each response `texts[i]` to prompt `rows[i]`: known ones reused, the others
        judged in one call, each distinct (prompt, response) once."""
        known = self.known.get(judge.name, {})
        keys = list(zip(rows, texts))
        missing = list(dict.fromkeys(key for key in keys if key not in known))
        fresh = judge.score([self.prompts[index] for index, _ in missing], [text for _, text in missing])
        found = {**dict(zip(missing, fresh)), **known}
        return np.asarray([found[key] for key in keys], dtype=float)
