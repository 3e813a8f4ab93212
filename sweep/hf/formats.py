"""Token ids as TRL builds them: evaluation prompts (rendered in the training data's format) and pairs."""

from __future__ import annotations

from collections.abc import Sequence

from sweep.errors import UserError
from sweep.hf.data import is_conversational


def one_format(variants: dict[str | None, bool]) -> bool:
    """Whether the training prompts are conversations (each data variant's `is_conversational`); a
    UserError when variants differ, since evaluation renders its prompts one way for every trial."""
    chat = sorted(name or "train" for name, conversational in variants.items() if conversational)
    plain = sorted(name or "train" for name, conversational in variants.items() if not conversational)
    if chat and plain:
        raise UserError(
            f"data.train: variants {', '.join(chat)} are conversations (message lists) and "
            f"{', '.join(plain)} plain text; evaluation renders prompts one way, so give every variant "
            "one format"
        )
    return bool(chat)


def templated(train_conversational: bool, eval_conversational: bool) -> bool:
    """Whether evaluation prompts go through the chat template: exactly when the training prompts did (a
    plain evaluation prompt is then one user message). Conversational evaluation prompts for a policy
    trained on plain text are a UserError: it would be judged in a format it never trained on."""
    if eval_conversational and not train_conversational:
        raise UserError(
            "data.eval: the evaluation prompts are conversations (message lists) but the training pairs are "
            "plain text, so the policy would be evaluated through a chat template it never trained with; "
            "give both in one format"
        )
    return train_conversational


def encode_prompt(tokenizer, prompt: str | list[dict], templated: bool = False) -> list[int]:
    """Prompt token ids as TRL tokenizes prompts for training; `templated` renders a plain prompt as one
    user message through the chat template, as training rendered its conversational prompts."""
    if templated and isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(prompt, str):
        ids = tokenizer(text=prompt)["input_ids"]
    elif not tokenizer.chat_template:
        raise UserError(
            "the evaluation prompts are conversations but the policy's tokenizer has no chat template"
        )
    else:
        ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        ids = ids["input_ids"]
    if not ids:
        raise UserError(f"evaluation prompt {prompt!r} is empty once tokenized")
    return list(ids)


def _common_prefix_length(ids: Sequence[int], other: Sequence[int]) -> int:
    length = 0
    for token, other_token in zip(ids, other, strict=False):
        if token != other_token:
            break
        length += 1
    return length


def pair_token_ids(tokenizer, pair: dict, templated: bool = False) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) token ids of a preference row, as TRL's DPOTrainer tokenizes it.

    `templated`: the row is a conversation already rendered to text by the chat template (as TRL's CPO and
    ORPO trainers hand it over), tokenized as DPO tokenizes the conversation: no special tokens added.
    """
    if templated:
        prompt = tokenizer(pair["prompt"], add_special_tokens=False)["input_ids"]
        full = [
            tokenizer(pair["prompt"] + pair[field], add_special_tokens=False)["input_ids"]
            for field in ("chosen", "rejected")
        ]
    elif is_conversational(pair):
        if not tokenizer.chat_template:
            raise UserError("the data are conversations but the model's tokenizer has no chat template")

        def encode(messages: list[dict], **options) -> list[int]:
            encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **options)
            return list(encoded["input_ids"])

        prompt = encode(pair["prompt"], add_generation_prompt=True)
        full = [encode(pair["prompt"] + pair[field]) for field in ("chosen", "rejected")]
    else:
        eos = tokenizer.eos_token or ""
        prompt = tokenizer(pair["prompt"])["input_ids"]
        full = [
            tokenizer(pair["prompt"] + pair[field] + ("" if pair[field].endswith(eos) else eos))["input_ids"]
            for field in ("chosen", "rejected")
        ]
    start = min(_common_prefix_length(prompt, ids) for ids in full)
    return list(prompt[:start]), list(full[0][start:]), list(full[1][start:])
