"""Judge input formats: cross-encoders read text pairs, chat RMs their template, heads in float32."""

import pytest
import torch
from datasets import Dataset
from tiny import CHAT_TEMPLATE, save_dir, tiny_reward_model, tiny_tokenizer
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast

from sweep.errors import UserError
from sweep.hf.judgeinputs import judge_input, prompt_text, resolve_format
from sweep.hf.judges import load_judges
from sweep.spec.recipe import JudgeSpec
from sweep.tools import rm

WORDS = ["a", "b", "c", "d", ":", "user", "assistant", "User", "Assistant"]
PROMPTS = ["a b :", "c :", [{"role": "user", "content": "d d"}, {"role": "assistant", "content": "a"},
                            {"role": "user", "content": "b c :"}]]  # fmt: skip
RESPONSES = ["c d", "a", "b b b b c"]


def cross_encoder_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style word-level tokenizer: [CLS] a [SEP] b [SEP] with token types 0 then 1."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {token: index for index, token in enumerate([*specials, *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def cross_encoder(kind: str, tokenizer):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DebertaV2Config,
        DebertaV2ForSequenceClassification,
    )

    torch.manual_seed(5)
    shape = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    common = {"vocab_size": len(tokenizer), "num_labels": 1, "pad_token_id": tokenizer.pad_token_id}
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**shape, **common, initializer_range=0.3)).eval()
    config = DebertaV2Config(**shape, **common, type_vocab_size=2, initializer_range=0.3)
    return DebertaV2ForSequenceClassification(config).eval()


@pytest.mark.parametrize("kind", ["bert", "deberta-v2"])
def test_cross_encoders_score_the_text_pair_with_token_types(tmp_path, kind):
    tokenizer = cross_encoder_tokenizer()
    model = cross_encoder(kind, tokenizer)
    path = save_dir(tmp_path / kind, model, tokenizer)
    (judge,) = load_judges([JudgeSpec(reward_model=str(path), batch_size=2)], "cpu")
    assert judge.format == "pair"
    scores = judge.score(PROMPTS, RESPONSES)
    with torch.no_grad():
        expected = [
            model(**tokenizer(prompt_text(p), r, return_tensors="pt")).logits[0, 0].item()
            for p, r in zip(PROMPTS, RESPONSES)
        ]
        glued = [model(**tokenizer(prompt_text(p) + r, return_tensors="pt")).logits[0, 0].item()
                 for p, r in zip(PROMPTS, RESPONSES)]  # fmt: skip
    assert scores == pytest.approx(expected, abs=1e-5)
    assert max(abs(s - g) for s, g in zip(scores, glued)) > 1e-3  # the pair structure matters
    encoded = judge_input(tokenizer, "pair", PROMPTS[0], RESPONSES[0], 64)
    assert encoded.token_type_ids == [0, 0, 0, 0, 0, 1, 1, 1]


def test_multi_turn_prompts_keep_their_roles():
    assert prompt_text(PROMPTS[2]) == "User: d d\n\nAssistant: a\n\nUser: b c :"
    assert prompt_text([{"role": "user", "content": "a b"}]) == "a b"


def test_auto_format_follows_the_tokenizer_and_the_recipe_can_force_one():
    plain, chat = tiny_tokenizer(WORDS), tiny_tokenizer(WORDS, CHAT_TEMPLATE)
    assert [resolve_format("auto", t) for t in (plain, chat, cross_encoder_tokenizer())] == [
        "raw",
        "chat",
        "pair",
    ]
    assert resolve_format("auto", chat, recorded="raw") == "raw"
    assert resolve_format("pair", chat) == "pair"
    with pytest.raises(UserError, match="has none"):
        resolve_format("chat", plain)
    with pytest.raises(ValueError, match="reward_model judges only"):
        JudgeSpec(callable="m:f", format="pair")


def test_decoder_rewards_pool_as_the_model_s_config_says(tmp_path):
    """A config pad id naming a real word ("d") while the tokenizer pads with eos: batches are padded with
    the config's id and read where the model's own forward reads them (the last token that is not "d")."""
    tokenizer = tiny_tokenizer(WORDS)
    model = tiny_reward_model(tokenizer, seed=3, initializer_range=0.3, pad_token_id=tokenizer.vocab["d"])
    tokenizer.pad_token = tokenizer.eos_token
    path = save_dir(tmp_path / "rm", model, tokenizer)
    (judge,) = load_judges([JudgeSpec(reward_model=str(path), batch_size=3)], "cpu")
    prompts, responses = [*PROMPTS[:2], "a :"], [*RESPONSES[:2], "c d d"]
    scores = judge.score(prompts, responses)
    with torch.no_grad():
        expected = [
            model(torch.tensor([tokenizer(p + r + "<eos>")["input_ids"]])).logits[0, 0].item()
            for p, r in zip(prompts, responses)
        ]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_reward_head_runs_in_float32_under_a_bfloat16_body(tmp_path):
    tokenizer = tiny_tokenizer(WORDS)
    model = tiny_reward_model(tokenizer, seed=3, initializer_range=0.3)
    path = save_dir(tmp_path / "rm", model, tokenizer)
    spec = JudgeSpec(reward_model=str(path), batch_size=1, dtype="bfloat16", device="cpu")
    (judge,) = load_judges([spec], "cpu")
    assert (judge.model.score.weight.dtype, judge.model.model.embed_tokens.weight.dtype) == (
        torch.float32,
        torch.bfloat16,
    )
    with torch.no_grad():
        ids = torch.tensor([tokenizer(PROMPTS[0] + RESPONSES[0] + "<eos>")["input_ids"]])
        hidden = judge.model.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        hidden = hidden.last_hidden_state[0, -1].double()
        expected = (judge.model.score.weight.double() @ hidden).item()
        rounded = (judge.model.score.weight.bfloat16() @ hidden.bfloat16()).item()
    assert judge.score(PROMPTS[:1], RESPONSES[:1]) == pytest.approx([expected], abs=1e-5)
    assert abs(rounded - expected) > 1e-5  # a bfloat16 head would not pass


@pytest.mark.slow
def test_a_judge_trained_by_rm_train_is_scored_in_its_training_format(tmp_path):
    tokenizer = cross_encoder_tokenizer()
    base = save_dir(tmp_path / "base", cross_encoder("bert", tokenizer), tokenizer)
    rows = [{"prompt": "a b :", "chosen": "c d", "rejected": "d"}] * 6 + [
        {"prompt": "c :", "chosen": "a", "rejected": "b b"}
    ] * 6
    out = tmp_path / "rm"
    summary = rm.train_reward_model(
        Dataset.from_list(rows), str(base), out, eval_fraction=0.25, fmt="raw", max_length=32, log=print
    )
    assert summary["format"] == "raw"
    (judge,) = load_judges([JudgeSpec(reward_model=str(out))], "cpu")
    assert judge.format == "raw"  # auto would pick pair for this tokenizer: the recorded format wins
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = [model(**judge.tokenizer("a b :c d", return_tensors="pt")).logits[0, 0].item()]
    assert judge.score(["a b :"], ["c d"]) == pytest.approx(expected, abs=1e-5)
