"""LoRA trials for real (peft): every method family trains, no reference copy, TR-* sync, kept adapters."""

import copy
import gc

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from test_trial import losses, make_worker, model_dir, spec  # noqa: F401 (model_dir is a fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, TrainerCallback

from sweep.spec.methods import get_method
from sweep.train import hooks
from sweep.train.callback import TrialCallback
from sweep.train.lora import effective_weights
from sweep.train.numerics import moving_reference
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


@pytest.fixture(scope="module")
def bf16_dir(model_dir, tmp_path_factory):  # noqa: F811
    """The tiny model saved in bfloat16, as Hub checkpoints are."""
    folder = tmp_path_factory.mktemp("bf16")
    AutoModelForCausalLM.from_pretrained(model_dir).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


class AtStep(TrainerCallback):
    """After optimizer step `step` (once the reference sync, added before it, has run): the reference's
    weights and, per LoRA layer of the policy, its base weight, A, B and scaling."""

    def __init__(self, reference, step: int):
        self.reference, self.step = reference, step
        self.before = {name: p.detach().clone() for name, p in reference.named_parameters()}
        self.after, self.layers = {}, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != self.step:
            return
        self.after = {name: p.detach().clone() for name, p in self.reference.named_parameters()}
        for name, module in model.get_base_model().named_modules():
            if isinstance(module, LoraLayer):
                (adapter,) = module.active_adapters
                self.layers[f"{name}.weight"] = (
                    module.base_layer.weight.detach().clone(),
                    module.lora_A[adapter].weight.detach().clone(),
                    module.lora_B[adapter].weight.detach().clone(),
                    module.scaling[adapter],
                )


def synced(worker: Worker, folder, step: int, **params) -> AtStep:
    """Train a TR-DPO LoRA trial for its 4 steps; what the reference and the policy were at `step`."""
    method, trial = get_method("tr-dpo"), spec("tr", "tr-dpo", **params)
    policy = copy.deepcopy(worker.sft).requires_grad_(True).train()
    reference = moving_reference(worker.sft, lora=True)
    callback = TrialCallback(lambda record: None, None, None, None)
    trainer = worker._trainer(trial, method, policy, reference, folder / "scratch", callback)
    seen = AtStep(reference, step)
    trainer.add_callback(seen)
    assert trainer.train().global_step == 4
    return seen


def test_tr_dpo_lora_hard_sync_on_a_bf16_base_copies_the_fp32_effective_weights(bf16_dir, tmp_path):
    """alpha 1 at lr 1e-5: the adapters' delta is ~1e-4 of the weights, below bf16's resolution; the float32
    reference holds base + B·A·scaling (computed here by hand) to float32 precision, delta included."""
    worker = lora_worker(bf16_dir, tmp_path, dropout=0.0)
    assert worker.sft.dtype == torch.bfloat16
    seen = synced(worker, tmp_path, 2, alpha=1.0, tau=2, learning_rate=1e-5)
    assert seen.layers and {p.dtype for p in seen.after.values()} == {torch.float32}
    relative = []
    for name, (base, a, b, scaling) in seen.layers.items():
        delta = (b.double() @ a.double()) * scaling
        expected = base.double() + delta
        torch.testing.assert_close(seen.after[name].double(), expected, rtol=2e-7, atol=1e-9)
        kept = seen.after[name].double() - base.double()
        relative.append(float(delta.norm() / base.double().norm()))
        assert float((kept - delta).norm() / delta.norm()) < 1e-2, name
    assert 1e-6 < max(relative) < 1e-3, relative
    for name, weight in seen.after.items():
        if name not in seen.layers:  # embeddings, norms, the head: no adapter, the base as float32
            assert torch.equal(weight, seen.before[name]), name


def test_a_sync_with_no_adapter_delta_leaves_the_reference_bit_identical(bf16_dir, tmp_path):
    """alpha 0.6 at lr 1e-30: B·A is ~1e-30, nothing at float32 resolution, so the reference must not move
    by a single bit (mixing as alpha·p + (1 − alpha)·r would round)."""
    worker = lora_worker(bf16_dir, tmp_path, dropout=0.0)
    seen = synced(worker, tmp_path, 1, alpha=0.6, tau=1, learning_rate=1e-30)
    assert seen.after.keys() == seen.before.keys()
    assert all(torch.equal(seen.after[name], seen.before[name]) for name in seen.before)


def test_lora_dropout_trains_as_asked(model_dir, tmp_path, monkeypatch):  # noqa: F811
    """TRL's disable_dropout zeroes LoRA's dropout (checked here with posweep's restore switched off);
    posweep gives it back, so a dropout of 0.5 changes the training losses of the same seed."""
    worker = lora_worker(model_dir, tmp_path, dropout=0.5)
    method, trial = get_method("dpo"), spec("drop", "dpo")
    callback = TrialCallback(lambda record: None, None, None, None)

    def dropouts() -> list[float]:
        policy = copy.deepcopy(worker.sft).requires_grad_(True).train()
        trainer = worker._trainer(trial, method, policy, None, tmp_path / "scratch", callback)
        return [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]

    assert len(dropouts()) == 14 and set(dropouts()) == {0.5}  # 7 linear layers per block, 2 blocks
    with monkeypatch.context() as patched:
        patched.setattr(hooks, "restore_lora_dropout", lambda model, p: 0)
        assert dropouts() == [], "TRL no longer zeroes LoRA dropout: restore_lora_dropout can go"
    assert worker.run(spec("dropout", "dpo")).state == "complete"
    without = lora_worker(model_dir, tmp_path / "none", dropout=0.0)
    assert without.run(spec("dropout", "dpo")).state == "complete"
    assert losses(worker, "dropout") != losses(without, "dropout")
