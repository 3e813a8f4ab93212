"""LoRA trials for real (peft): every method family trains, no reference copy, TR-* sync, kept adapters."""

import gc

import pytest
import torch
from peft import PeftModel
from test_trial import make_worker, model_dir, spec  # noqa: F401 (model_dir is a fixture)
from transformers import AutoModelForCausalLM, LlamaForCausalLM, TrainerCallback

from sweep.train.lora import effective_weights
from sweep.train.trial import Worker

pytestmark = pytest.mark.slow
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


class CountModels(TrainerCallback):
    """How many causal-LM models are alive during training."""

    counts: list[int]

    def __init__(self):
        self.counts = []

    def on_step_end(self, args, state, control, **kwargs):
        gc.unfreeze()  # the worker freezes what outlives its first trial; count everything
        gc.collect()
        self.counts.append(sum(isinstance(obj, LlamaForCausalLM) for obj in gc.get_objects()))


@pytest.fixture
def counted(monkeypatch):
    counter = CountModels()
    build = Worker._trainer

    def counting(self, *args, **kwargs):
        trainer = build(self, *args, **kwargs)
        trainer.add_callback(counter)
        return trainer

    monkeypatch.setattr(Worker, "_trainer", counting)
    return counter


def lora_worker(model_dir, folder, **lora):  # noqa: F811
    return make_worker(model_dir, folder, model={"path": str(model_dir), "lora": {**LORA, **lora}})


def test_lora_trials_of_every_method_family_complete(model_dir, tmp_path, counted):  # noqa: F811
    worker = lora_worker(model_dir, tmp_path)
    for method in ("dpo", "simpo", "kto", "tr-dpo", "orpo"):
        counted.counts.clear()
        params = {"alpha": 0.6, "tau": 2} if method == "tr-dpo" else {}
        result = worker.run(spec(f"lora-{method}", method, **params))
        assert (result.state, result.error) == ("complete", None), method
        assert result.metrics["train"]["param_dtype"] == "float32"
        # the SFT model and the policy's base; a moving reference is the one extra copy
        assert set(counted.counts) == {3 if method == "tr-dpo" else 2}, (method, counted.counts)


def test_a_lora_dpo_trial_uses_the_shared_reference_cache(model_dir, tmp_path):  # noqa: F811
    worker = lora_worker(model_dir, tmp_path)
    first = worker.run(spec("lora-a", "dpo"))
    again = worker.run(spec("lora-b", "dpo", seed=1))
    assert "ref_logps" in first.metrics["time_s"], "the first fixed-reference trial computes the cache"
    assert "ref_logps" not in again.metrics["time_s"], "later ones read it"
    assert again.state == "complete"


def test_effective_weights_are_the_merged_weights(model_dir, tmp_path):  # noqa: F811
    from peft import get_peft_model

    worker = lora_worker(model_dir, tmp_path)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), worker._lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    weights = {name: value.clone() for name, value in effective_weights(model).items()}
    merged = model.merge_and_unload()
    assert set(weights) == {name for name, _ in merged.named_parameters()}
    for name, parameter in merged.named_parameters():
        torch.testing.assert_close(weights[name], parameter)


def test_keep_saves_adapters_and_a_merged_model_on_request(model_dir, tmp_path):  # noqa: F811
    worker = make_worker(
        model_dir,
        tmp_path,
        model={"path": str(model_dir), "lora": {**LORA, "save_merged": True}},
        execution={"keep": "all"},
    )
    assert worker.run(spec("kept", "dpo", learning_rate=1e-2)).state == "complete"
    folder = worker.trial_dir("kept") / "model"
    assert (folder / "adapter_config.json").is_file()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), folder).eval()
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged").eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(adapted(ids).logits, merged(ids).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(merged(ids).logits, worker.sft(ids).logits), "the adapters were trained"
