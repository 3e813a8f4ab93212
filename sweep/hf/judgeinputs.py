"""What a reward model reads: its input format (pair, chat, raw) and the one function that builds it.

- `pair`: a cross-encoder's text pair, `tokenizer(prompt_text, response)`: `[CLS] prompt [SEP] response
  [SEP]` with token types, as BERT/DeBERTa/RoBERTa reward models are trained.
- `chat`: the conversation [prompt messages (a plain prompt as one user message), assistant response]
  rendered by the reward model's own chat template.
- `raw`: prompt text + response text + the eos token, the format TRL's RewardTrainer trains plain rows on.

`auto` is the format a `posweep rm train` judge recorded in its posweep_rm.json; else `chat` when the
tokenizer has a chat template, `pair` when it has a separator token (a cross-encoder), else `raw`. A
multi-turn prompt keeps its roles: through the template, or as "Role: content" paragraphs in plain text.
`posweep rm train` trains on `judge_input`, so a judge it trains is scored as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sweep.errors import UserError
from sweep.io import read_json

FORMATS = ("pair", "chat", "raw")
RM_SUMMARY_FILE = "posweep_rm.json"


@dataclass(frozen=True)
class JudgeInput:
    """Token ids of one (prompt, response) for a reward model, with token types for a text pair."""

    input_ids: list[int]
    token_type_ids: list[int] | None = None


def recorded_format(path: str) -> str | None:
    """The input format a posweep-trained reward model directory recorded, or None."""
    summary = Path(path) / RM_SUMMARY_FILE
    return read_json(summary).get("format") if summary.is_file() else None


def resolve_format(requested: str, tokenizer, recorded: str | None = None) -> str:
    """The concrete format for a judge: `requested` unless it is auto (then recorded, or the tokenizer's)."""
    if requested not in ("auto", *FORMATS):
        raise UserError(f"unknown judge input format {requested!r} (auto, {', '.join(FORMATS)})")
    if requested == "auto":
        if recorded is not None:
            return recorded
        if tokenizer.chat_template:
            return "chat"
        return "pair" if tokenizer.sep_token is not None else "raw"
    if requested == "chat" and not tokenizer.chat_template:
        raise UserError("format chat needs a tokenizer with a chat template; this one has none")
    return requested


def prompt_text(prompt: str | list[dict]) -> str:
    """A prompt as plain text: a single user message is its content; longer ones keep their roles."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"]
    return "\n\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in prompt)


def _response_text(response: str | list[dict]) -> str:
    if isinstance(response, str):
        return response
    return "\n".join(message["content"] for message in response if message["role"] == "assistant")


def _truncated(ids: list[int], tokenizer, max_length: int) -> list[int]:
    return ids[-max_length:] if tokenizer.truncation_side == "left" else ids[:max_length]


def judge_input(
    tokenizer, fmt: str, prompt: str | list[dict], response: str | list[dict], max_length: int
) -> JudgeInput:
    """What a reward model in format `fmt` reads for one (prompt, response), at most max_length tokens."""
    if fmt == "pair":
        encoded = tokenizer(
            prompt_text(prompt), _response_text(response), truncation="longest_first", max_length=max_length
        )
        types = encoded.get("token_type_ids")
        return JudgeInput(list(encoded["input_ids"]), None if types is None else list(types))
    if fmt == "chat":
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        answer = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
        text = tokenizer.apply_chat_template([*messages, *answer], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    elif fmt == "raw":
        text = prompt_text(prompt) + _response_text(response)
        if tokenizer.eos_token and not text.endswith(tokenizer.eos_token):
            text += tokenizer.eos_token
        ids = tokenizer(text)["input_ids"]
    else:
        raise ValueError(f"unknown judge input format {fmt!r}")
    return JudgeInput(_truncated(list(ids), tokenizer, max_length))
