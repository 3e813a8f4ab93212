"""Built-in offline benchmarks, named by `builtin:` references in recipes and on the command line.

`builtin:toy` is a synthetic preference task with a known gold reward (see `sweep.builtin.toy`), built
once into the cache on first use (`cache_root()`; see `sweep.builtin.build`; under a minute on 2 CPU cores):

- `builtin:toy`        the SFT policy, a small Llama trained with TRL (a model directory);
- `builtin:toy-rm`     the reward-model judge, trained on pairs no trial sees (a model directory);
- `builtin:toy/train`  preference pairs the trials train on (JSONL: prompt, chosen, rejected);
- `builtin:toy/eval`   out-of-distribution evaluation prompts (JSONL: prompt, chosen = a reference response);
- `builtin:toy/rm`     the judge's preference pairs (JSONL: prompt, chosen, rejected);
- `builtin:toy/train-ppl50`  the half of `builtin:toy/train` the SFT policy finds most natural
  (perplexity-filtered, derived on first use).

The gold reward, for judges: `sweep.builtin.toy:gold_reward`. This module stays light (no torch import).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from sweep.errors import UserError

PREFIX = "builtin:"
_PATHS = {
    "builtin:toy": "sft",
    "builtin:toy-rm": "rm",
    "builtin:toy/train": "data/train.jsonl",
    "builtin:toy/eval": "data/eval.jsonl",
    "builtin:toy/rm": "data/rm.jsonl",
    "builtin:toy/train-ppl50": "data/train-ppl50.jsonl",
}
NAMES = list(_PATHS)


def is_builtin(ref: str) -> bool:
    """Whether `ref` names a built-in model or data set (`builtin:...`)."""
    return isinstance(ref, str) and ref.startswith(PREFIX)


def cache_root() -> Path:
    """Where built-ins are built and kept: $POSWEEP_CACHE, else the user cache folder (~/.cache/posweep)."""
    if os.environ.get("POSWEEP_CACHE"):
        return Path(os.environ["POSWEEP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "posweep"


def resolve(
    ref: str,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = partial(print, file=sys.stderr),
) -> str:
    """The local path behind a `builtin:` reference (building it on first use); other references unchanged."""
    if not is_builtin(ref):
        return ref
    if ref not in _PATHS:
        close = difflib.get_close_matches(ref, NAMES, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(NAMES)}"
        raise UserError(f"unknown built-in {ref!r}; {hint}")
    from sweep.builtin.build import ensure_built
    from sweep.builtin.derived import ensure_ppl_filtered

    folder = ensure_built(cache_dir or cache_root(), log=log)
    if ref == "builtin:toy/train-ppl50":
        return str(ensure_ppl_filtered(folder, log))
    return str(folder / _PATHS[ref])
