"""Reward-model training with TRL's RewardTrainer: output directory, summary, and input errors."""

import random

import pytest
from datasets import Dataset

from sweep.builtin import build, toy
from sweep.errors import UserError
from sweep.io import read_json
from sweep.tools import rm


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny causal LM whose tokenizer has no pad token (the reward model must get one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build.build_tokenizer()
    tokenizer.pad_token = None
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def toy_pairs(count: int) -> Dataset:
    return Dataset.from_list(toy.preference_pairs(random.Random(0), count, toy.ToySettings()))


@pytest.mark.slow
def test_train_reward_model_writes_a_loadable_directory_and_summary(base_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "rm"
    messages: list[str] = []
    summary = rm.train_reward_model(
        toy_pairs(40),
        base_model,
        out,
        eval_fraction=0.25,
        learning_rate=1e-3,
        max_length=64,
        log=messages.append,
    )
    assert 0 <= summary["heldout_accuracy"] <= 1
    assert (summary["n_train"], summary["n_heldout"]) == (30, 10)
    assert summary["base_model"] == base_model and summary["settings"]["learning_rate"] == 1e-3
    assert read_json(out / rm.SUMMARY_FILE) == summary
    assert any("held-out accuracy" in message for message in messages)

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    assert tokenizer.pad_token == tokenizer.eos_token and model.config.pad_token_id == tokenizer.pad_token_id
    assert sorted(path.name for path in tmp_path.iterdir()) == ["rm"]  # no temporary directory left behind

    rows = toy_pairs(50)[40:]
    chosen = rm.score(model, tokenizer, rows["prompt"], rows["chosen"])
    rejected = rm.score(model, tokenizer, rows["prompt"], rows["rejected"])
    assert len(chosen) == len(rejected) == 10 and chosen != rejected


def test_sequence_ids_append_eos_once(base_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    ids = rm.sequence_ids(tokenizer, "write about ocean :", "wave reef")
    assert ids == rm.sequence_ids(tokenizer, "write about ocean :", "wave reef<eos>")
    assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1


def test_missing_columns_are_a_user_error(base_model, tmp_path):
    pairs = toy_pairs(10).rename_column("rejected", "worse")
    with pytest.raises(UserError, match="missing rejected"):
        rm.train_reward_model(pairs, base_model, tmp_path / "rm")


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.01])
def test_impossible_held_out_fraction_is_a_user_error(base_model, tmp_path, fraction):
    with pytest.raises(UserError, match="fraction"):
        rm.train_reward_model(toy_pairs(10), base_model, tmp_path / "rm", eval_fraction=fraction)


def test_unloadable_base_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load the tokenizer"):
        rm.train_reward_model(toy_pairs(10), str(tmp_path / "no-such-model"), tmp_path / "rm")


def test_existing_output_directory_is_never_overwritten(base_model, tmp_path):
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        rm.train_reward_model(toy_pairs(10), base_model, tmp_path / "rm")
    assert (tmp_path / "rm" / "keep.txt").read_text() == "mine"
