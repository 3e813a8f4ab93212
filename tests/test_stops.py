"""Generation stops where a chat model stops: at the template's end-of-turn token, not only at eos."""

import math

import pytest
import torch
from tiny import tiny_causal_lm
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

from sweep.evaluate import estimators
from sweep.evaluate.generation import Decoding, end_of_turn_ids, generate, stop_ids
from sweep.hf.formats import encode_prompt

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
    " {{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|> {% endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
WORDS = ["a", "b", "c", "d", "e", "f", "user", "assistant", "hi", ":"]
MAX_NEW = 8


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-3-style tokenizer: eos is <|end_of_text|>, an assistant turn ends with <|eot_id|>."""
    vocab = {token: index for index, token in enumerate(["<pad>", "<unk>", *SPECIALS, *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIALS[2:],
    )
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


@torch.no_grad()
def reference_truncated_fraction(model, prompts, stops, samples, seed) -> tuple[float, list[int]]:
    """A plain sampling loop (full forward passes, no cache, no padding) stopping at any of `stops`."""
    generator = torch.Generator().manual_seed(seed)
    truncated, lengths = 0, []
    for prompt in prompts:
        ids = torch.tensor([prompt] * samples)
        length = torch.full((samples,), MAX_NEW)
        for step in range(MAX_NEW):
            probs = model(ids).logits[:, -1].softmax(-1)
            tokens = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, tokens], dim=1)
            stopped = torch.isin(tokens[:, 0], torch.tensor(sorted(stops))) & (length == MAX_NEW)
            length[stopped] = step
        truncated += int((length == MAX_NEW).sum())
        lengths += length.tolist()
    return truncated / (len(prompts) * samples), lengths


def test_stop_ids_include_the_templates_end_of_turn_token():
    tokenizer = llama3_tokenizer()
    model = tiny_causal_lm(tokenizer, 0, eos_token_id=tokenizer.eos_token_id)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn_ids(tokenizer) == [eot] and eot != tokenizer.eos_token_id
    assert stop_ids(model, tokenizer) == [tokenizer.eos_token_id, eot]


def test_truncated_fraction_matches_a_reference_loop_stopping_at_eot():
    tokenizer = llama3_tokenizer()
    model = tiny_causal_lm(tokenizer, 2, eos_token_id=tokenizer.eos_token_id, initializer_range=0.3)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    with torch.no_grad():  # make ending a turn likely, as in a chat model
        rows = model.lm_head.weight[[tokenizer.convert_tokens_to_ids(w) for w in "abc"]].sum(0)
        model.lm_head.weight[eot] = rows
        model.lm_head.weight[tokenizer.eos_token_id] = -rows
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": t}]) for t in ("a b", "hi c d", "e")]
    samples = 100
    responses = generate(
        model, prompts, samples, Decoding(MAX_NEW, do_sample=True), 300, 0, stop_ids(model, tokenizer), seed=0
    )
    found = estimators.length_stats([r.length for r in responses], [r.ended for r in responses])
    found = found["truncated_fraction"]
    expected, lengths = reference_truncated_fraction(
        model, prompts, {eot, tokenizer.eos_token_id}, samples, 1
    )
    eos_only, _ = reference_truncated_fraction(model, prompts, {tokenizer.eos_token_id}, samples, 1)
    n = len(prompts) * samples
    error = 4 * math.sqrt(expected * (1 - expected) / n) + 4 * math.sqrt(found * (1 - found) / n)
    assert found == pytest.approx(expected, abs=error)
    assert found < 0.5 and eos_only > found + 0.2
    mean_length = sum(r.length for r in responses) / n
    assert mean_length == pytest.approx(sum(lengths) / n, rel=0.15)  # lengths count up to the stop


def test_repeated_ngram_fraction():
    assert estimators.repeated_ngram_fraction([1, 2, 3, 1, 2, 3, 1, 2, 3]) == pytest.approx(4 / 7)
    assert estimators.repeated_ngram_fraction([1, 2, 3, 4]) == 0.0
    assert estimators.repeated_ngram_fraction([1, 2]) == 0.0
