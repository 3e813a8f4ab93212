"""Judges: a reward model built locally from a config and Python callables, through one interface."""

import pytest
import torch
from tiny import CHAT_TEMPLATE, save_dir, tiny_reward_model, tiny_tokenizer

from sweep.errors import UserError
from sweep.hf.judges import load_judges
from sweep.spec.recipe import JudgeSpec

WORDS = ["a", "b", "c", "d", ":", "user", "assistant"]
PROMPTS = ["a b :", "c :", "d d a b c :"]
RESPONSES = ["c d", "a", "b b b b c"]
JUDGE_MODULE = """
def length(prompts, responses):
    return [len(response.split()) for response in responses]

def short(prompts, responses):
    return [1.0] * (len(responses) - 1)

def words(prompts, responses):
    return ["good"] * len(responses)

def nan(prompts, responses):
    return [float("nan")] * len(responses)

not_a_function = 3
"""


@pytest.fixture
def judge_module(tmp_path, monkeypatch):
    (tmp_path / "my_judges.py").write_text(JUDGE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_judges"


def reward_model_dir(tmp_path, chat_template=None, num_labels=1, pad=True):
    tokenizer = tiny_tokenizer(WORDS, chat_template)
    model = tiny_reward_model(tokenizer, seed=3, num_labels=num_labels, initializer_range=0.3)
    if not pad:
        tokenizer.pad_token = None
        model.config.pad_token_id = None
    return (
        save_dir(tmp_path / f"rm-{num_labels}-{bool(chat_template)}-{pad}", model, tokenizer),
        model,
        tokenizer,
    )


@torch.no_grad()
def unpadded_scores(model, tokenizer, texts, add_special_tokens=True):
    """Each text scored alone (no padding) at its last token: the independent computation."""
    return [
        model(torch.tensor([tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]]))
        .logits[0, 0]
        .item()
        for text in texts
    ]


def test_reward_model_scores_prompt_response_eos_in_padded_batches(tmp_path):
    path, model, tokenizer = reward_model_dir(tmp_path)
    (judge,) = load_judges([JudgeSpec(reward_model=str(path), batch_size=2)], "cpu")
    assert (judge.name, judge.primary, judge.model.dtype, judge.device.type) == (
        "rm",
        True,
        torch.float32,
        "cpu",
    )
    scores = judge.score(PROMPTS, RESPONSES)
    expected = unpadded_scores(model, tokenizer, [p + r + "<eos>" for p, r in zip(PROMPTS, RESPONSES)])
    assert scores == pytest.approx(expected, abs=1e-5)
    assert len(set(scores)) == 3


def test_reward_model_uses_its_chat_template_for_plain_and_conversational_prompts(tmp_path):
    path, model, tokenizer = reward_model_dir(tmp_path, CHAT_TEMPLATE)
    (judge,) = load_judges([JudgeSpec(reward_model=str(path), batch_size=3)], "cpu")
    conversation = [
        {"role": "user", "content": "a b :"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    scores = judge.score([PROMPTS[0], conversation], ["c d", "a b"])
    texts = ["user : a b : assistant : c d ", "user : a b : assistant : c user : d assistant : a b "]
    assert scores == pytest.approx(
        unpadded_scores(model, tokenizer, texts, add_special_tokens=False), abs=1e-5
    )


def test_reward_model_truncates_to_max_length(tmp_path):
    path, model, tokenizer = reward_model_dir(tmp_path)
    (judge,) = load_judges([JudgeSpec(reward_model=str(path), max_length=4)], "cpu")
    (score,) = judge.score(["a b :"], ["c d a b c d"])
    assert score == pytest.approx(unpadded_scores(model, tokenizer, ["a b : c"])[0], abs=1e-5)


def test_reward_model_without_pad_token_pads_with_eos_and_pools_as_its_forward(tmp_path):
    """No pad token anywhere: the tokenizer pads with eos and the config gets that id (as TRL's
    RewardTrainer sets it), so the model's own pooling skips the trailing eos; posweep reads the same."""
    path, model, tokenizer = reward_model_dir(tmp_path, pad=False)
    (judge,) = load_judges([JudgeSpec(reward_model=str(path), batch_size=3)], "cpu")
    assert judge.model.config.pad_token_id == tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.eos_token_id
    texts = [p + r + "<eos>" for p, r in zip(PROMPTS, RESPONSES)]
    assert judge.score(PROMPTS, RESPONSES) == pytest.approx(
        unpadded_scores(model, tokenizer, texts), abs=1e-5
    )


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_reward_model_whose_pad_is_eos_scores_as_its_own_forward(tmp_path, side):
    """pad = eos (plain RewardTrainer defaults; Llama-3 chat with pad <|eot_id|>): transformers' head pools
    at the last token that is not the pad id, so a trailing eos is never read. In batches of mixed lengths
    padded on the tokenizer's side, posweep's scores are the model's own forward in float32, row by row and
    on the batch as the tokenizer pads it; the last attended token (the eos) would give other scores."""
    tokenizer = tiny_tokenizer(WORDS)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, side
    model = tiny_reward_model(tokenizer, seed=3, initializer_range=0.3, pad_token_id=tokenizer.eos_token_id)
    path = save_dir(tmp_path / "rm", model, tokenizer)
    (judge,) = load_judges([JudgeSpec(reward_model=str(path), batch_size=3, format="raw")], "cpu")
    scores = judge.score(PROMPTS, RESPONSES)
    texts = [p + r + "<eos>" for p, r in zip(PROMPTS, RESPONSES)]
    with torch.no_grad():
        alone = unpadded_scores(model, tokenizer, texts)
        batch = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits[:, 0].tolist()
        ids = [torch.tensor([tokenizer(text)["input_ids"]]) for text in texts]
        at_eos = [model.score(model.model(row).last_hidden_state[0, -1]).item() for row in ids]
    assert len({len(row[0]) for row in ids}) == 3
    assert scores == pytest.approx(alone, abs=1e-5) and scores == pytest.approx(batch, abs=1e-5)
    assert all(abs(score - eos) > 1e-3 for score, eos in zip(scores, at_eos)), (scores, at_eos)


def test_reward_model_needs_a_single_logit(tmp_path):
    path, _, _ = reward_model_dir(tmp_path, num_labels=2)
    with pytest.raises(UserError, match="num_labels=2"):
        load_judges([JudgeSpec(reward_model=str(path))], "cpu")
    with pytest.raises(UserError, match="cannot load reward model"):
        load_judges([JudgeSpec(reward_model=str(tmp_path / "missing"))], "cpu")


def test_callable_and_reward_model_judges_share_one_interface(tmp_path, judge_module):
    path, _, _ = reward_model_dir(tmp_path)
    specs = [JudgeSpec(callable=f"{judge_module}:length"), JudgeSpec(name="gold", reward_model=str(path))]
    first, second = load_judges(specs, "cpu")
    assert (first.name, first.primary, second.name, second.primary) == ("length", True, "gold", False)
    assert first.score(PROMPTS, RESPONSES) == [2.0, 1.0, 5.0]
    assert len(second.score(PROMPTS, RESPONSES)) == 3
    assert first.score([], []) == []


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("missing_module_xyz:f", "cannot import 'missing_module_xyz'"),
        ("{module}:absent", "has no function 'absent'"),
        ("{module}:not_a_function", "has no function 'not_a_function'"),
    ],
)
def test_callable_judge_import_errors(judge_module, tmp_path, function, message):
    with pytest.raises(UserError, match=message):
        load_judges([JudgeSpec(callable=function.format(module=judge_module))])


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("short", "returned 2 scores for 3 responses"),
        ("words", "'good', not a finite number"),
        ("nan", "nan, not a finite number"),
    ],
)
def test_callable_judge_output_is_checked(judge_module, tmp_path, function, message):
    (judge,) = load_judges([JudgeSpec(callable=f"{judge_module}:{function}")])
    with pytest.raises(UserError, match=message):
        judge.score(PROMPTS, RESPONSES)
