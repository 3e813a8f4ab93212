"""The length policy: which pairs are dropped, counted against an independent token count."""

import pytest
from datasets import Dataset
from tiny import CHAT_TEMPLATE, tiny_tokenizer

from sweep.errors import UserError
from sweep.train.lengths import apply_length_policy

WORDS = ["user", "assistant", ":", "a", "b", "c", "x", "y"]


def test_pairs_whose_prompt_leaves_too_little_room_are_dropped():
    tokenizer = tiny_tokenizer(WORDS)  # word level, no special tokens added: a prompt is its words
    prompts = [" ".join(["a"] * n) for n in (1, 6, 7, 8, 12, 3)]
    pairs = Dataset.from_dict({"prompt": prompts, "chosen": [" x"] * 6, "rejected": [" y"] * 6})
    kept, counts = apply_length_policy(pairs, tokenizer, max_length=10, min_completion_tokens=3)
    assert [len(p.split()) for p in kept["prompt"]] == [n for n in (1, 6, 7, 8, 12, 3) if n <= 10 - 3]
    assert counts.to_json() == {"pairs": 4, "dropped": 2, "max_length": 10, "min_completion_tokens": 3}
    same, untouched = apply_length_policy(pairs, tokenizer, max_length=40, min_completion_tokens=3)
    assert same is pairs and untouched.dropped == 0


def test_conversations_count_their_template_tokens():
    tokenizer = tiny_tokenizer(WORDS, chat_template=CHAT_TEMPLATE)
    rows = [
        {"prompt": [{"role": "user", "content": "a b"}], "chosen": [{"role": "assistant", "content": "x"}]},
        {
            "prompt": [{"role": "user", "content": "a b c a"}],
            "chosen": [{"role": "assistant", "content": "x"}],
        },
    ]
    pairs = Dataset.from_list([{**row, "rejected": [{"role": "assistant", "content": "y"}]} for row in rows])
    # "user : a b assistant :" is 6 tokens, "user : a b c a assistant :" 8
    kept, counts = apply_length_policy(pairs, tokenizer, max_length=10, min_completion_tokens=4)
    assert (counts.pairs, counts.dropped) == (1, 1)
    assert kept[0]["prompt"] == rows[0]["prompt"]


def test_no_pair_left_is_a_user_error():
    tokenizer = tiny_tokenizer(WORDS)
    pairs = Dataset.from_dict({"prompt": ["a a a a"], "chosen": [" x"], "rejected": [" y"]})
    with pytest.raises(UserError, match=r"data\.train: every prompt leaves fewer than 8 tokens"):
        apply_length_policy(pairs, tokenizer, max_length=10, min_completion_tokens=8)
