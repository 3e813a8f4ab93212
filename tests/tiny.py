"""Tiny tokenizers and models built from a config, for fast offline tests (shared by test modules)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def tiny_tokenizer(words: Sequence[str], chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (split at spaces and punctuation) with <pad>, <eos> and <unk>."""
    vocab = {token: index for index, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS.values(), *words]))}
    backend = Tokenizer(WordLevel(vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **SPECIAL_TOKENS)
    tokenizer.chat_template = chat_template
    return tokenizer


def _config(tokenizer: PreTrainedTokenizerFast, **overrides) -> LlamaConfig:
    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
        "tie_word_embeddings": False,
    }
    return LlamaConfig(**{**settings, **overrides})


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama over the tokenizer's vocabulary, in eval mode."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(_config(tokenizer, **config)).eval()


def tiny_reward_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, num_labels: int = 1, **config
) -> LlamaForSequenceClassification:
    """A randomly initialised 2-layer Llama sequence classifier (a reward model when num_labels is 1)."""
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(_config(tokenizer, num_labels=num_labels, **config)).eval()


def save_dir(path: str | Path, *parts) -> Path:
    """Save models and tokenizers (anything with `save_pretrained`) into one directory; return it."""
    path = Path(path)
    for part in parts:
        part.save_pretrained(path)
    return path
