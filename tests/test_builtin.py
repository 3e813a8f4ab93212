"""The built-in toy benchmark: the synthetic task, its tokenizer, and building/resolving `builtin:` refs."""

import random
import threading
from dataclasses import replace

import pytest

from sweep import builtin
from sweep.builtin import build, toy
from sweep.errors import UserError
from sweep.io import read_json, read_jsonl

SMALL_TASK = toy.ToySettings(n_sft=96, n_train_pairs=400, n_rm_pairs=64, n_eval=16)
TINY_BUILD = build.BuildSettings(
    task=replace(SMALL_TASK, n_train_pairs=16),
    hidden_size=16,
    intermediate_size=32,
    num_heads=2,
    sft_epochs=1,
    rm_epochs=1,
    rm_eval_fraction=0.25,
    n_gold_pairs=16,
)


def test_task_is_deterministic_for_a_seed():
    assert toy.make_task(SMALL_TASK) == toy.make_task(SMALL_TASK)
    assert toy.make_task(SMALL_TASK) != toy.make_task(replace(SMALL_TASK, seed=1))


def test_data_files_have_the_documented_columns():
    task = toy.make_task(SMALL_TASK)
    assert {len(task[name]) for name in ("train", "rm")} == {400, 64}
    assert all(set(row) == {"prompt", "chosen", "rejected"} for row in task["train"] + task["rm"])
    assert all(set(row) == {"prompt", "chosen"} for row in task["eval"])
    assert all(set(row) == {"prompt", "completion"} for row in task["sft"])
    rows = [row for rows in task.values() for row in rows]
    assert all(isinstance(value, str) and value for row in rows for value in row.values())


def test_train_and_eval_prompts_differ_as_documented():
    task = toy.make_task(SMALL_TASK)
    train_prompts = {row["prompt"] for row in task["train"]}
    eval_prompts = {row["prompt"] for row in task["eval"]}
    assert {len(toy.named_topics(prompt)) for prompt in train_prompts} == {1, 2}
    assert {len(toy.named_topics(prompt)) for prompt in eval_prompts} == {3}
    eval_words = {word for template in toy.EVAL_TEMPLATES for word in template.split()} - {"{}", ":"}
    assert all(eval_words & set(prompt.split()) for prompt in eval_prompts)
    assert not any(eval_words & set(prompt.split()) for prompt in train_prompts)
    assert not train_prompts & eval_prompts


def test_annotator_length_bias_makes_chosen_responses_longer():
    def chosen_longer(length_bias: float) -> float:
        rows = toy.make_task(replace(SMALL_TASK, length_bias=length_bias))["train"]
        return sum(len(row["chosen"].split()) > len(row["rejected"].split()) for row in rows) / len(rows)

    assert chosen_longer(0.0) + 0.1 < chosen_longer(1.0)


def test_annotators_mostly_follow_the_gold_reward():
    rows = toy.make_task(replace(SMALL_TASK, length_bias=0.0))["train"]
    prompts = [row["prompt"] for row in rows]
    chosen = toy.gold_reward(prompts, [row["chosen"] for row in rows])
    rejected = toy.gold_reward(prompts, [row["rejected"] for row in rows])
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(rows) > 0.8


def test_gold_reward_prefers_on_topic_words_over_off_topic_of_equal_length():
    prompt = "write about ocean and music :"
    responses = {
        "on": "wave reef drum piano",
        "off": "oven pan cow barn",
        "filler": "the very nice so",
        "repeated": "wave wave wave wave",
    }
    scores = dict(zip(responses, toy.gold_reward([prompt] * 4, list(responses.values()))))
    assert scores["on"] > scores["repeated"] > scores["off"]
    assert scores["on"] > scores["filler"] > scores["off"]
    assert toy.gold_reward(["write about farm :"], ["wave reef"]) < toy.gold_reward(
        ["write about ocean :"], ["wave reef"]
    )


def test_responses_are_written_in_the_task_word_order():
    rng = random.Random(0)
    for _ in range(50):
        prompt = toy.train_prompt(rng)
        words = toy.sample_response(rng, prompt, 0.5, 0.1, rng.randint(1, 12)).split()
        assert words == sorted(words, key=toy.WORD_RANK.__getitem__)
        assert len(set(words)) == len(words)


def test_tokenizer_covers_the_vocabulary_and_splits_at_the_prompt_boundary(tmp_path):
    from transformers import AutoTokenizer

    build.build_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer(" ".join(toy.vocabulary()))["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(toy.vocabulary()) + 1
    prompt, response = "write about ocean :", "wave reef"
    joined = tokenizer(prompt + response + tokenizer.eos_token)["input_ids"]
    assert joined == tokenizer(prompt)["input_ids"] + tokenizer(response)["input_ids"][1:] + [
        tokenizer.eos_token_id
    ]
    assert tokenizer.decode(joined, skip_special_tokens=True) == "write about ocean : wave reef"


def test_non_builtin_refs_pass_through_untouched(tmp_path):
    assert builtin.resolve("org/model", tmp_path) == "org/model"
    assert not builtin.is_builtin("org/model") and builtin.is_builtin("builtin:toy")
    assert not any(tmp_path.iterdir())


def test_unknown_builtin_name_suggests_the_closest(tmp_path):
    with pytest.raises(UserError, match=r"unknown built-in 'builtin:tyo'; did you mean 'builtin:toy'\?"):
        builtin.resolve("builtin:tyo", tmp_path)
    with pytest.raises(UserError, match="builtin:toy/eval"):
        builtin.resolve("builtin:nothing-like-it", tmp_path)
    assert not any(tmp_path.iterdir())


def test_cache_key_follows_the_settings():
    assert build.cache_key(TINY_BUILD) == build.cache_key(replace(TINY_BUILD))
    assert build.cache_key(TINY_BUILD) != build.cache_key(replace(TINY_BUILD, sft_epochs=2))
    assert build.cache_key(TINY_BUILD) != build.cache_key(
        replace(TINY_BUILD, task=replace(TINY_BUILD.task, seed=1))
    )


@pytest.mark.slow
def test_resolve_builds_once_then_reuses(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    monkeypatch.setattr(build, "DEFAULT", TINY_BUILD)
    messages: list[str] = []
    racers = [
        threading.Thread(
            target=builtin.resolve, args=("builtin:toy", tmp_path), kwargs={"log": messages.append}
        )
        for _ in range(2)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sum(message.startswith("building builtin:toy") for message in messages) == 1

    paths = {name: builtin.resolve(name, tmp_path, log=messages.append) for name in builtin.NAMES}
    assert sum(message.startswith("building") for message in messages) == 1
    assert len(list((tmp_path / "builtin").glob("toy-*"))) == 2  # the build and its lock file, no leftovers

    assert len(read_jsonl(paths["builtin:toy/train"])) == 16
    assert read_jsonl(paths["builtin:toy/eval"]) == toy.make_task(TINY_BUILD.task)["eval"]
    assert set(read_jsonl(paths["builtin:toy/rm"])[0]) == {"prompt", "chosen", "rejected"}
    tokenizer = AutoTokenizer.from_pretrained(paths["builtin:toy"])
    policy = AutoModelForCausalLM.from_pretrained(paths["builtin:toy"])
    assert policy.config.hidden_size == 16 and policy.generation_config.eos_token_id == tokenizer.eos_token_id
    judge = AutoModelForSequenceClassification.from_pretrained(paths["builtin:toy-rm"])
    assert judge.config.num_labels == 1 and judge.config.pad_token_id == tokenizer.pad_token_id
    summary = read_json(f"{paths['builtin:toy-rm']}/posweep_rm.json")
    assert summary["base_model"] == "builtin:toy"
    for key in ("heldout_accuracy", "gold_agreement", "gold_agreement_ood"):
        assert 0 <= summary[key] <= 1
