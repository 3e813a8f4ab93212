"""Judges: a reward model or a Python callable that scores (prompt, response) pairs.

A reward model is a one-logit sequence classifier; a callable is `module:function(prompts, responses) ->
scores`. The first judge of a recipe is the primary one.

A reward model reads each pair through its own tokenizer in its input format (`sweep.hf.judgeinputs`:
pair, chat or raw), truncated to `max_length`, padded in batches on its tokenizer's padding side with the
pad id of its config (the tokenizer's pad token when the config has none, as TRL's RewardTrainer sets
it). Its head runs in float32 whatever the body's dtype. Scores are the model's own forward, so each
model pools as it was trained: a decoder reward model at the last token that is not its pad id (a pad
id equal to eos skips a trailing eos, as in training), a cross-encoder at its first token.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from sweep.errors import UserError
from sweep.hf.judgeinputs import JudgeInput, judge_input, recorded_format, resolve_format
from sweep.hf.loading import judge_device, judge_dtype, with_pad_token
from sweep.io import first_line
from sweep.spec.recipe import JudgeSpec


class Judge:
    """A named scorer: `score(prompts, responses)` returns one finite float per response."""

    format = "callable"

    def __init__(self, name: str, primary: bool):
        self.name = name
        self.primary = primary

    @property
    def prefix(self) -> str:
        """The prefix of its metric and samples.jsonl keys: none for the primary judge, else `NAME.`."""
        return "" if self.primary else f"{self.name}."

    def score(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response) pair."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        if not responses:
            return []
        return self._checked(self._score(list(prompts), list(responses)), len(responses))

    def _score(self, prompts: list, responses: list[str]):
        raise NotImplementedError

    def _checked(self, result, expected: int) -> list[float]:
        values = result.tolist() if hasattr(result, "tolist") else result
        try:
            values = list(values)
        except TypeError:
            raise UserError(
                f"judge {self.name}: expected a list of scores, got {type(result).__name__}"
            ) from None
        if len(values) != expected:
            raise UserError(f"judge {self.name}: returned {len(values)} scores for {expected} responses")
        for index, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise UserError(f"judge {self.name}: score {index} is {value!r}, not a finite number")
        return [float(value) for value in values]


class CallableJudge(Judge):
    """A Python function `(prompts, responses) -> list of numbers`, imported from `module:function`."""

    def __init__(self, spec: JudgeSpec, primary: bool):
        super().__init__(spec.name, primary)
        module_name, function_name = spec.callable.split(":")
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UserError(f"judge {spec.name}: cannot import {module_name!r} ({error})") from None
        self.function = getattr(module, function_name, None)
        if not callable(self.function):
            raise UserError(f"judge {spec.name}: module {module_name!r} has no function {function_name!r}")

    def _score(self, prompts: list, responses: list[str]):
        return self.function(prompts, responses)


class RewardModelJudge(Judge):
    """A sequence classifier with one output, on its own device and dtype."""

    def __init__(self, spec: JudgeSpec, primary: bool, device=None):
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        super().__init__(spec.name, primary)
        self.spec = spec
        path = spec.reward_model
        tokenizer_path = spec.tokenizer or path
        options = {"trust_remote_code": spec.trust_remote_code}
        self.device = judge_device(spec.device, device)
        try:
            config = AutoConfig.from_pretrained(path, revision=spec.revision, **options)
            labels = config.num_labels
            if labels != 1:
                raise UserError(
                    f"judge {spec.name}: {spec.reward_model} has {labels} outputs (num_labels={labels}); "
                    "a reward-model judge needs a single-logit head (num_labels=1)"
                )
            revision = None if spec.tokenizer else spec.revision
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, revision=revision, **options)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, revision=spec.revision, dtype=judge_dtype(spec.dtype, self.device), **options
            )
        except (OSError, ValueError) as error:
            message = first_line(error)
            raise UserError(
                f"judge {spec.name}: cannot load reward model {spec.reward_model!r}: {message}"
            ) from None
        self.model.to(self.device).eval()
        try:
            self.tokenizer = with_pad_token(tokenizer, tokenizer_path)
        except UserError as error:
            raise UserError(f"judge {spec.name}: {error}") from None
        text_config = self.model.config.get_text_config()
        if text_config.pad_token_id is None:  # as TRL's RewardTrainer sets it: the tokenizer's pad token
            text_config.pad_token_id = self.tokenizer.pad_token_id
        recorded = recorded_format(path) if Path(path).is_dir() else None
        try:
            self.format = resolve_format(spec.format, self.tokenizer, recorded)
        except UserError as error:
            raise UserError(f"judge {spec.name}: {error}") from None
        float32_heads(self.model)

    def _score(self, prompts: list, responses: list[str]) -> list[float]:
        inputs = [
            judge_input(self.tokenizer, self.format, prompt, response, self.spec.max_length)
            for prompt, response in zip(prompts, responses, strict=True)
        ]
        return score_inputs(
            self.model,
            inputs,
            self.spec.batch_size,
            self.spec.sort_by_length,
            self.tokenizer.padding_side,
        )


def load_judges(specs: Sequence[JudgeSpec], device=None) -> list[Judge]:
    """Load every judge once; the first is primary. `device` is where `device: auto` judges go."""
    return [
        RewardModelJudge(spec, index == 0, device)
        if spec.reward_model is not None
        else CallableJudge(spec, index == 0)
        for index, spec in enumerate(specs)
    ]


def _to_float32(module, args):
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def float32_heads(model) -> None:
    """Run every module outside the model's body (the reward head, a pooler beside it) in float32."""
    for name, child in model.named_children():
        if name != model.base_model_prefix and any(True for _ in child.parameters()):
            child.float()
            child.register_forward_pre_hook(_to_float32)


def rewards(model, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
    """One float32 reward per padded row: the model's own forward, so it pools as it was trained (a decoder's
    head at the last token that is not `config.pad_token_id`, a cross-encoder at its first token)."""
    extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
    return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[:, 0].float()


@torch.no_grad()
def score_inputs(
    model,
    inputs: list[JudgeInput],
    batch_size: int = 32,
    sort_by_length: bool = False,
    padding_side: str = "right",
) -> list[float]:
    """Reward of each judge input, in batches padded on `padding_side` with the pad id of the model's config
    (the id its pooling skips; it must be set), longest batches first when `sort_by_length` (the scores come
    back in the given order)."""
    pad_token_id = model.config.get_text_config().pad_token_id
    model.eval()
    device = next(model.parameters()).device
    order = list(range(len(inputs)))
    if sort_by_length:
        order.sort(key=lambda index: -len(inputs[index].input_ids))
    scores = [0.0] * len(inputs)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [inputs[index] for index in rows]
        width = max(len(item.input_ids) for item in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        types = torch.zeros_like(input_ids) if batch[0].token_type_ids is not None else None
        for row, item in enumerate(batch):
            length = len(item.input_ids)
            place = slice(width - length, width) if padding_side == "left" else slice(0, length)
            input_ids[row, place] = torch.tensor(item.input_ids)
            attention_mask[row, place] = 1
            if types is not None:
                types[row, place] = torch.tensor(item.token_type_ids)
        found = rewards(
            model,
            input_ids.to(device),
            attention_mask.to(device),
            None if types is None else types.to(device),
        )
        for index, score in zip(rows, found.tolist(), strict=True):
            scores[index] = score
    return scores
