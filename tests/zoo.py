"""A zoo of real model families built offline: tiny from-config models, locally trained tokenizers, data.

Each family reproduces the special tokens and chat template of a real Hub family, and is saved in bfloat16
as Hub checkpoints are:

- `llama3`: `<|begin_of_text|>` BOS (added by the tokenizer and rendered by the template), header tokens,
  `<|eot_id|>` ends a turn and is not the eos (`<|end_of_text|>`), no pad token;
- `qwen2`: ChatML (`<|im_start|>`/`<|im_end|>`), no BOS, eos `<|im_end|>`, pad `<|endoftext|>`;
- `gemma`: `<bos>` required (added and rendered), `<start_of_turn>`/`<end_of_turn>`, the assistant is
  `model`, a system message is an error;
- `phi3`: `<|user|>`/`<|assistant|>`/`<|system|>` turns ended by `<|end|>`, a `<s>` BOS the tokenizer
  does not add, eos `<|endoftext|>`;
- `gpt2`: plain text (no chat template), `<|endoftext|>` is bos, eos and unk, no pad token.

API: `FAMILIES` (name -> `Family`), `family(name) -> Path` (built once per process, so once per test
session), `tokenizer(name)`, and the data archetypes `conversational`, `plain`, `implicit_prompt`,
`with_long_prompts`, `pairs_for(name)`.
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    GemmaConfig,
    GemmaForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{{ message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
TOPICS = ("ocean", "music", "garden", "rivers", "stars", "bread", "trains", "winter")
GOOD = ("calm waves and tides", "a slow song with drums", "green leaves grow", "clear water flows")
BAD = ("no", "bad bad", "whatever it is", "the the the")


@dataclass(frozen=True)
class Family:
    """What a model family's tokenizer and model look like."""

    name: str
    specials: dict[str, str | None]
    extra_tokens: tuple[str, ...] = ()
    chat_template: str | None = None
    adds_bos: bool = False
    end_of_turn: str | None = None
    system_role: bool = True
    config: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llama3",
            {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": None},
            ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            LLAMA3_TEMPLATE,
            adds_bos=True,
            end_of_turn="<|eot_id|>",
        ),
        Family(
            "qwen2",
            {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
            ("<|im_start|>",),
            CHATML_TEMPLATE,
            end_of_turn="<|im_end|>",
        ),
        Family(
            "gemma",
            {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
            ("<start_of_turn>", "<end_of_turn>"),
            GEMMA_TEMPLATE,
            adds_bos=True,
            end_of_turn="<end_of_turn>",
            system_role=False,
        ),
        Family(
            "phi3",
            {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
            ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>"),
            PHI3_TEMPLATE,
            end_of_turn="<|end|>",
        ),
        Family(
            "gpt2",
            {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"},
        ),
    )
}
_BUILT: dict[str, Path] = {}
_ROOT: list[Path] = []


def _corpus() -> list[str]:
    words = [*TOPICS, *GOOD, *BAD, "write about", "tell me more", "you are a helpful assistant", "and then"]
    return [" ".join(words)] * 4 + [f"{a} {b}" for a in TOPICS for b in (*GOOD, *BAD)]


def _tokenizer(spec: Family) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here, with the family's special tokens, template and BOS rule."""
    specials = list(dict.fromkeys([v for v in spec.specials.values() if v] + list(spec.extra_tokens)))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    bos = spec.specials.get("bos_token")
    if spec.adds_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, **{k: v for k, v in spec.specials.items() if v is not None}
    )
    tokenizer.chat_template = spec.chat_template
    return tokenizer


def _model(spec: Family, tokenizer) -> torch.nn.Module:
    """A tiny randomly initialised model of the family's architecture over the tokenizer's vocabulary."""
    torch.manual_seed(0)
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    small = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    small.update(num_key_value_heads=1, max_position_embeddings=256)
    if spec.name == "gpt2":
        config = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=256, **ids)
        return GPT2LMHeadModel(config)
    built = {
        "llama3": (LlamaConfig, LlamaForCausalLM, {"tie_word_embeddings": False}),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
        "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 8}),
        "phi3": (Phi3Config, Phi3ForCausalLM, {}),
    }
    config_class, model_class, extra = built[spec.name]
    return model_class(config_class(**ids, **small, **extra))


def family(name: str) -> Path:
    """The saved checkpoint (bfloat16 model and tokenizer) of a zoo family, built on first use."""
    if name not in _BUILT:
        if not _ROOT:
            _ROOT.append(Path(tempfile.mkdtemp(prefix="posweep-zoo-")))
        spec = FAMILIES[name]
        folder = _ROOT[0] / name
        tokenizer = _tokenizer(spec)
        _model(spec, tokenizer).to(torch.bfloat16).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        _BUILT[name] = folder
    return _BUILT[name]


def tokenizer(name: str):
    """The saved tokenizer of a zoo family, loaded as posweep loads it."""
    return AutoTokenizer.from_pretrained(family(name))


def conversational(count: int = 16, system: bool = True, seed: int = 0) -> list[dict]:
    """Conversational pairs: half with a system prompt (when `system`), half multi-turn."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        topic = TOPICS[index % len(TOPICS)]
        prompt = [{"role": "user", "content": f"write about {topic}"}]
        if index % 2:
            prompt += [
                {"role": "assistant", "content": rng.choice(GOOD)},
                {"role": "user", "content": "tell me more"},
            ]
        if system and index % 4 < 2:
            prompt = [{"role": "system", "content": "you are a helpful assistant"}, *prompt]
        rows.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": rng.choice(GOOD)}],
                "rejected": [{"role": "assistant", "content": rng.choice(BAD)}],
            }
        )
    return rows


def plain(count: int = 16, seed: int = 0) -> list[dict]:
    """Plain-string pairs (completions start with a space, as prompt and completion are joined as is)."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"write about {TOPICS[index % len(TOPICS)]} :",
            "chosen": " " + rng.choice(GOOD),
            "rejected": " " + rng.choice(BAD),
        }
        for index in range(count)
    ]


def implicit_prompt(rows: list[dict]) -> list[dict]:
    """TRL's implicit-prompt format: only `chosen` and `rejected`, each holding the whole conversation."""
    return [
        {"chosen": row["prompt"] + row["chosen"], "rejected": row["prompt"] + row["rejected"]} for row in rows
    ]


def with_long_prompts(rows: list[dict], fraction: float = 0.2, words: int = 120) -> list[dict]:
    """`rows` with the prompts of the first `fraction` of them made longer than any small max_length."""
    long_rows = []
    filler = " ".join(TOPICS[i % len(TOPICS)] for i in range(words))
    for index, row in enumerate(rows):
        row = dict(row)
        if index < round(fraction * len(rows)):
            if isinstance(row["prompt"], str):
                row["prompt"] = f"{filler} {row['prompt']}"
            else:
                last = dict(row["prompt"][-1], content=f"{filler} {row['prompt'][-1]['content']}")
                row["prompt"] = [*row["prompt"][:-1], last]
        long_rows.append(row)
    return long_rows


def pairs_for(name: str, count: int = 16) -> list[dict]:
    """The family's natural training data: conversations (no system prompt for Gemma) or plain text."""
    spec = FAMILIES[name]
    if spec.chat_template is None:
        return plain(count)
    return conversational(count, system=spec.system_role)
