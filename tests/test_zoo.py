"""The model zoo: each family's special tokens, and a short sweep of every method family on each one.

Every family trains dpo, simpo, cpo, kto, tr-dpo and orpo to `complete` on its natural data with 20% of
prompts longer than max_length (Llama-3 in TRL's implicit-prompt format), every method on the same pairs,
and every method family trains on exactly the prompt tokens evaluation generates from.
"""

import copy
import json

import pytest
import torch
import zoo
from transformers import AutoModelForCausalLM

from sweep.hf.formats import encode_prompt, pair_token_ids
from sweep.io import read_json
from sweep.report.html import _training_data
from sweep.results import SweepFolder, SweepRecord
from sweep.spec.methods import get_method
from sweep.spec.plan import TrialSpec
from sweep.spec.recipe import Recipe
from sweep.train.callback import TrialCallback
from sweep.train.config import rows_per_pair
from sweep.train.trial import Worker

METHODS = ("dpo", "simpo", "cpo", "kto", "tr-dpo", "orpo")
MAX_LENGTH = 128
PAIRS, LONG = 16, 4


def test_families_reproduce_their_special_tokens():
    llama, qwen, gemma, phi, gpt2 = (
        zoo.tokenizer(name) for name in ("llama3", "qwen2", "gemma", "phi3", "gpt2")
    )
    assert (
        llama("hi")["input_ids"][0] == llama.convert_tokens_to_ids("<|begin_of_text|>") == llama.bos_token_id
    )
    assert llama.pad_token is None and llama.convert_tokens_to_ids("<|eot_id|>") != llama.eos_token_id
    assert (qwen.bos_token, qwen.eos_token, qwen.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
    assert "<|im_start|>" in qwen.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert gemma("hi")["input_ids"][0] == gemma.bos_token_id
    with pytest.raises(Exception, match="System role not supported"):
        gemma.apply_chat_template([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    assert phi("hi")["input_ids"][0] != phi.bos_token_id
    assert (
        phi.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        == "<|user|>\nhi<|end|>\n"
    )
    assert gpt2.chat_template is None and gpt2.pad_token is None and gpt2.bos_token == gpt2.eos_token
    for name in zoo.FAMILIES:
        assert json.loads((zoo.family(name) / "config.json").read_text())["dtype"] == "bfloat16"


def family_recipe(name: str, folder, **train) -> Recipe:
    rows = zoo.with_long_prompts(zoo.pairs_for(name, PAIRS + LONG), fraction=LONG / (PAIRS + LONG))
    if name == "llama3":
        rows = zoo.implicit_prompt(rows)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = {
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "max_length": MAX_LENGTH,
        "precision": "fp32",
    }
    return Recipe.model_validate(
        {
            "name": name,
            "model": str(zoo.family(name)),
            "data": {"train": {"path": str(path)}, "eval": {"path": str(path)}},
            "judge": {"callable": "sweep.builtin.toy:gold_reward"},
            "methods": dict.fromkeys(METHODS),
            "train": {**settings, **train},
        }
    )


@pytest.fixture(scope="module", params=list(zoo.FAMILIES))
def family_worker(request, tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp(request.param)
    SweepFolder(folder / "sweep").write_sweep(SweepRecord(name=request.param))  # as the engine creates it
    worker = Worker(family_recipe(request.param, folder), folder / "sweep", log=lambda line: None)
    worker.family = request.param
    return worker


@pytest.mark.slow
def test_every_method_completes_on_the_same_pairs(family_worker):
    assert family_worker.length_counts[""] == {
        "pairs": PAIRS,
        "dropped": LONG,
        "max_length": MAX_LENGTH,
        "min_completion_tokens": 8,
    }
    for method in METHODS:
        result = family_worker.run(TrialSpec(f"{method}-0", method, {"learning_rate": 1e-4}, 0))
        assert (result.state, result.error) == ("complete", None), (family_worker.family, method)
        train = result.metrics["train"]
        assert train["training_rows"] == PAIRS * rows_per_pair(get_method(method)), method
        assert train["length_policy"]["pairs"] == PAIRS
        assert (train["param_dtype"], train["autocast_dtype"]) == ("float32", "none")
        assert (train["steps"], train["pairs_seen"]) == (2, 8)
    counts = read_json(family_worker.sweep_dir / "sweep.json")["training_data"]
    assert counts == {"": family_worker.length_counts[""]}
    assert _training_data({"training_data": counts}) == (
        f"train: {PAIRS} kept, {LONG} dropped (prompt leaves fewer than 8 of {MAX_LENGTH} tokens)"
    )


def training_prompts(worker: Worker, method: str) -> set[tuple[int, ...]]:
    """The prompt token ids of every row the method's trainer trains on."""
    spec = TrialSpec(f"parity-{method}", method, {}, 0)
    policy = copy.deepcopy(worker.sft)
    reference = worker.sft if get_method(method).reference != "none" else None
    callback = TrialCallback(lambda record: None, None, None, None)
    trainer = worker._trainer(
        spec, get_method(method), policy, reference, worker.sweep_dir / "scratch", callback
    )
    data = trainer.train_dataset
    column = "prompt_input_ids" if "prompt_input_ids" in data.column_names else "prompt_ids"
    return {tuple(ids) for ids in data[column]}


@pytest.mark.slow
def test_every_method_family_trains_on_the_prompt_tokens_evaluation_uses(family_worker):
    prompts = {tuple(encode_prompt(family_worker.tokenizer, row["prompt"])) for row in family_worker.pairs()}
    for method in ("dpo", "kto", "simpo"):  # DPOTrainer, KTOTrainer, CPOTrainer (as ORPOTrainer) tokenization
        assert training_prompts(family_worker, method) == prompts, (family_worker.family, method)


def policy_changes(model_dir, folder, **train) -> tuple[float, float, float]:
    """Train DPO at lr 1e-6 on a zoo checkpoint; (fraction of elements changed, mean token KL, its SE)."""
    folder.mkdir(parents=True)
    recipe = family_recipe("qwen2", folder, max_steps=6, precision="bf16", **train)
    recipe = recipe.model_copy(
        update={
            "model": recipe.model.model_copy(update={"path": str(model_dir)}),
            "execution": recipe.execution.model_copy(update={"keep": "all"}),
        }
    )
    worker = Worker(recipe, folder / "sweep", log=lambda line: None)
    result = worker.run(TrialSpec("dpo-lr1e-6", "dpo", {"learning_rate": 1e-6, "beta": 0.1}, 0))
    assert result.state == "complete", result.error
    trained = AutoModelForCausalLM.from_pretrained(worker.trial_dir("dpo-lr1e-6") / "model").double()
    sft = AutoModelForCausalLM.from_pretrained(model_dir).double()
    # input-embedding rows of tokens absent from the data get no gradient in any dtype: left out
    used = sorted(
        {token for row in worker.pairs() for ids in pair_token_ids(worker.tokenizer, row) for token in ids}
    )
    embedding = trained.get_input_embeddings().weight
    changed = total = 0
    for after, before in zip(trained.parameters(), sft.parameters(), strict=True):
        if after is embedding and embedding is not trained.get_output_embeddings().weight:
            after, before = after[used], before[used]
        changed += int((after != before).sum())
        total += after.numel()
    kls = []
    with torch.no_grad():
        for row in worker.pairs():
            ids = torch.tensor([encode_prompt(worker.tokenizer, row["prompt"])])
            policy, reference = (model(ids).logits.log_softmax(-1) for model in (trained, sft))
            kls.append((policy.exp() * (policy - reference)).sum(-1).flatten())
    kl = torch.cat(kls)
    return changed / total, float(kl.mean()), float(kl.std() / kl.numel() ** 0.5)


@pytest.mark.slow
def test_a_bf16_checkpoint_trains_at_a_small_learning_rate(tmp_path):
    fraction, kl, se = policy_changes(zoo.family("qwen2"), tmp_path / "bf16")
    assert fraction >= 0.99 and kl > se > 0, (fraction, kl, se)
    fp32 = tmp_path / "fp32-model"
    AutoModelForCausalLM.from_pretrained(zoo.family("qwen2")).float().save_pretrained(fp32)
    zoo.tokenizer("qwen2").save_pretrained(fp32)
    fraction, kl, se = policy_changes(fp32, tmp_path / "fp32")
    assert fraction >= 0.99 and kl > se > 0, (fraction, kl, se)
    lossy, _, _ = policy_changes(zoo.family("qwen2"), tmp_path / "pure", pure_bf16=True)
    assert lossy < 0.5, "pure bf16 AdamW at lr 1e-6 should round most updates away"
