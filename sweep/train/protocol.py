"""The evaluator a trial worker uses: `PolicyEvaluator`, what `Worker` calls on it, and its factory.

`sweep.evaluate.evaluator.Evaluator` implements it (sweep.train and sweep.evaluate are independent layers,
so the worker knows the evaluator by this interface only); the engine hands `Worker` the factory
`sweep.evaluate.evaluator.evaluator_factory` builds, and rank 0 of a process-group trial does the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class PolicyEvaluator(Protocol):
    """Evaluates trained policies on the evaluation prompts; one per worker process."""

    def evaluate(self, policy: Any, trial_dir: str | Path) -> dict:
        """Full evaluation: write trial_dir/samples.jsonl and return the flat metrics dict."""

    def quick(self, policy: Any) -> float:
        """The objective on a few prompts of the selection part (what a pruner sees); no files written."""

    def objective(self, metrics: dict) -> float:
        """The value of `eval.objective` over all prompts in a metrics dict (NaN when it is missing)."""


EvaluatorFactory = Callable[[Any, Any, bool], PolicyEvaluator]
"""What a worker calls, once, with its SFT model, its tokenizer and whether it trains on conversations."""
