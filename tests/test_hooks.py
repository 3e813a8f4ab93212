"""Contract tests of sweep.train.hooks: each TRL/accelerate/datasets internal it relies on, as installed."""

import inspect

import accelerate
import datasets
import pytest
import torch
import transformers
import trl
from datasets import Dataset
from tiny import tiny_causal_lm, tiny_tokenizer

from sweep.hf.loading import load_object
from sweep.spec.methods import REGISTRY
from sweep.train import hooks
from sweep.train.shared import SharedTraining, reference_columns

# chosen and rejected of different lengths, so LD-DPO's shared-length/tail split matters
PAIRS = [
    ("write about ocean :", "wave tide reef shore", "the"),
    ("write about music :", "song", "a good the very nice"),
    ("tell me about ocean :", "reef", "the very"),
    ("tell me about music :", "piano song drum tide", "good"),
]
WORDS = sorted({word for row in PAIRS for text in row for word in text.split()})
VERSIONS = ", ".join(f"{m.__name__} {m.__version__}" for m in (trl, transformers, accelerate, datasets))
# which method of each registry trainer posweep's hook replaces
HOOKED = {
    "trl:DPOTrainer": ("_prepare_dataset", hooks.PREPARE_PARAMETERS),
    "trl:KTOTrainer": ("_prepare_dataset", hooks.PREPARE_PARAMETERS),
    "trl.experimental.cpo:CPOTrainer": ("tokenize_row", hooks.TOKENIZE_ROW_PARAMETERS),
    "trl.experimental.orpo:ORPOTrainer": ("tokenize_row", hooks.TOKENIZE_ROW_PARAMETERS),
}


@pytest.fixture(scope="module")
def tokenizer():
    torch.set_num_threads(1)
    return tiny_tokenizer(WORDS)


def pairs() -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [p for p, _, _ in PAIRS],
            "chosen": [" " + c for _, c, _ in PAIRS],
            "rejected": [" " + r for _, _, r in PAIRS],
        }
    )


def build(tokenizer, tmp_path, trainer="trl:DPOTrainer", shared=False, reference=True, **options):
    """A registry trainer on the tiny pairs with a tiny policy and reference (seed 1); `shared`: hooked."""
    trainer_class = load_object(trainer)
    if shared:
        trainer_class = hooks.shared_trainer_class(trainer_class)
    config_class = load_object(trainer.replace("Trainer", "Config"))
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=1,
        learning_rate=1e-2,
        beta=0.5,
        max_length=32,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        fp16=False,
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    extra = {"ref_model": tiny_causal_lm(tokenizer, seed=1)} if reference else {}
    data = trl.unpair_preference_dataset(pairs()) if trainer == "trl:KTOTrainer" else pairs()
    return trainer_class(
        model=tiny_causal_lm(tokenizer).train(),
        args=config_class(**{**settings, **options}),
        train_dataset=data,
        processing_class=tokenizer,
        **extra,
    )


class BackboneCalls:
    """Counts forward passes through a model's backbone (every forward, fused LM head or not, runs it)."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.base_model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registry_trainer_gets_its_hook(name):
    method = REGISTRY[name]
    base = load_object(method.trainer)
    assert method.trainer in HOOKED, f"{name}: trainer {method.trainer} has no known data-preparation hook"
    hooked, parameters = HOOKED[method.trainer]
    function = getattr(base, hooked, None)
    assert function is not None, f"{VERSIONS}: {base.__name__}.{hooked} no longer exists"
    found = tuple(inspect.signature(function).parameters)[1:]
    assert found == parameters, f"{VERSIONS}: {base.__name__}.{hooked} now takes {found}, not {parameters}"
    shared = hooks.shared_trainer_class(base)
    assert shared is not base, f"{name}: shared_trainer_class fell back to plain {base.__name__}"
    assert issubclass(shared, base) and shared.posweep_base is base
    assert hooked in vars(shared), f"{name}: {shared.__name__} does not override {hooked}"
    # pickled by name by `datasets` when it fingerprints `dataset.map(self.tokenize_row)`
    assert getattr(hooks, shared.__name__) is shared
    assert hooks.shared_trainer_class(base) is shared


def test_dataset_fingerprint_follows_transforms():
    data = pairs()
    fingerprint = hooks.dataset_fingerprint(data)
    assert isinstance(fingerprint, str) and fingerprint, "datasets: Dataset._fingerprint is not a str"
    assert hooks.dataset_fingerprint(data) == fingerprint, "datasets: the fingerprint of a dataset changed"
    mapped = data.map(lambda row: {"prompt": row["prompt"] + " x"})
    assert hooks.dataset_fingerprint(mapped) != fingerprint, "datasets: .map kept the fingerprint"
    assert hooks.dataset_fingerprint(data.select([0, 1])) != fingerprint, "datasets: .select kept it"
    assert hooks.dataset_fingerprint(data.add_column("x", [1] * 4)) != fingerprint


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["trl:DPOTrainer", "trl:KTOTrainer"])
def test_trl_prepares_the_training_set_through_the_hook(tokenizer, tmp_path, trainer):
    plain = build(tokenizer, tmp_path, trainer)
    shared = SharedTraining(tmp_path / "cache", tokenizer)
    with hooks.serving(shared):
        served = build(tokenizer, tmp_path, trainer, shared=True)
        again = build(tokenizer, tmp_path, trainer, shared=True)
    assert hooks.data_key(plain) is None
    key = hooks.data_key(served)
    assert key is not None, f"{VERSIONS}: {trainer}.__init__ no longer calls self._prepare_dataset"
    assert hooks.data_key(again) == key, "the same data and settings gave another key"
    assert (tmp_path / "cache" / "prepared" / key).is_dir(), "SharedTraining did not store the prepared set"
    assert served.train_dataset.to_dict() == plain.train_dataset.to_dict() == again.train_dataset.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["trl.experimental.cpo:CPOTrainer", "trl.experimental.orpo:ORPOTrainer"])
def test_trl_tokenizes_rows_through_the_hook(tokenizer, tmp_path, trainer):
    plain = build(tokenizer, tmp_path, trainer, reference=False)
    shared = SharedTraining(tmp_path / "cache", tokenizer)
    with hooks.serving(shared):
        served = build(tokenizer, tmp_path, trainer, shared=True, reference=False)
    key = vars(served).get("posweep_rows_key")
    assert key is not None, f"{VERSIONS}: {trainer} no longer maps self.tokenize_row over its data"
    assert len(shared.rows(key)) == len(PAIRS), "each distinct row should be tokenized once"
    assert served.train_dataset.to_dict() == plain.train_dataset.to_dict()


@pytest.mark.slow
def test_kto_data_key_follows_its_kl_pairing(tokenizer, tmp_path):
    shared = SharedTraining(tmp_path / "cache", tokenizer)
    settings = [{}, {"per_device_train_batch_size": 4}, {"loss_type": "apo_zero_unpaired"}]
    with hooks.serving(shared):
        trainers = [build(tokenizer, tmp_path, "trl:KTOTrainer", shared=True, **s) for s in settings]
    keys = [hooks.data_key(trainer) for trainer in trainers]
    assert len(set(keys)) == 3, f"{VERSIONS}: KTOTrainer sets calculate_KL after _prepare_dataset"
    kl_columns = ["KL_completion_ids" in trainer.train_dataset.column_names for trainer in trainers]
    assert kl_columns == [True, True, False], f"{VERSIONS}: KTO's prepared KL completions changed"


def first_loss(trainer) -> float:
    """The loss of the one training step (max_steps=1: TrainOutput.training_loss, not the rounded log)."""
    output = trainer.train()
    assert output.global_step == 1
    return output.training_loss


@pytest.mark.slow
def test_computes_own_reference_reads_trls_precompute_flag(tokenizer, tmp_path):
    assert hooks.computes_own_reference(build(tokenizer, tmp_path)) is False
    trainer = build(tokenizer, tmp_path, precompute_ref_log_probs=True)
    assert hooks.computes_own_reference(trainer) is True, (
        f"{VERSIONS}: DPOTrainer.precompute_ref_logps no longer holds DPOConfig.precompute_ref_log_probs"
    )
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(trainer.train_dataset.column_names)


@pytest.mark.slow
@pytest.mark.parametrize("ld_alpha, bf16", [(None, False), (0.5, False), (0.5, True)])
def test_precomputed_reference_trains_as_trls_own_reference_pass(tokenizer, tmp_path, ld_alpha, bf16):
    own = build(tokenizer, tmp_path, ld_alpha=ld_alpha, bf16=bf16)
    own_calls = BackboneCalls(own.ref_model)
    expected = first_loss(own)
    assert own_calls.count == 1, f"{VERSIONS}: DPO ran {own_calls.count} reference passes in one step"

    trainer = build(tokenizer, tmp_path, ld_alpha=ld_alpha, bf16=bf16)
    assert hooks.ld_alpha(trainer) == ld_alpha, f"{VERSIONS}: DPOTrainer.ld_alpha is not DPOConfig.ld_alpha"
    assert hooks.computes_own_reference(trainer) is False
    reference = trainer.ref_model
    values = hooks.reference_logps(trainer, reference, batch_size=4, paired=True)
    sides = [f"{side}_{part}" for side in ("chosen", "rejected") for part in ("total", "shared", "tail")]
    assert sorted(values) == sorted(sides)
    assert all(value.shape == (len(PAIRS),) for value in values.values())
    torch.testing.assert_close(values["chosen_total"], values["chosen_shared"] + values["chosen_tail"])
    columns = reference_columns(values, hooks.ld_alpha(trainer))
    hooks.use_precomputed_reference(trainer, columns)
    assert set(columns) <= set(trainer.train_dataset.column_names)
    calls = BackboneCalls(reference)
    loss = first_loss(trainer)
    assert calls.count == 0, f"{VERSIONS}: DPO ran a reference forward pass despite precomputed columns"
    assert loss == pytest.approx(expected, abs=1e-5), (
        f"{VERSIONS}: the loss with posweep's reference columns ({loss}) differs from TRL's own ({expected})"
    )
    assert loss != pytest.approx(0.6931, abs=1e-3), "the reference should differ from the policy"


@pytest.mark.slow
@pytest.mark.parametrize("loss_type, kl", [("kto", True), ("apo_zero_unpaired", False)])
def test_unpaired_reference_is_trls_compute_ref_log_probs(tokenizer, tmp_path, loss_type, kl):
    own = build(tokenizer, tmp_path, "trl:KTOTrainer", loss_type=loss_type)
    expected = first_loss(own)
    trainer = build(tokenizer, tmp_path, "trl:KTOTrainer", loss_type=loss_type)
    assert trainer.calculate_KL is kl, f"{VERSIONS}: KTOTrainer.calculate_KL is not {kl} for {loss_type}"
    reference = trainer.ref_model
    values = hooks.reference_logps(trainer, reference, batch_size=4, paired=False)
    names = ["ref_KL_logps", "ref_logps"] if kl else ["ref_logps"]
    assert sorted(values) == names, f"{VERSIONS}: KTOTrainer.compute_ref_log_probs gave {sorted(values)}"
    assert all(value.shape == (len(trainer.train_dataset),) for value in values.values())
    hooks.use_precomputed_reference(trainer, reference_columns(values, None))
    calls = BackboneCalls(reference)
    loss = first_loss(trainer)
    assert calls.count == 0, f"{VERSIONS}: KTO ran a reference forward pass despite precomputed columns"
    assert loss == pytest.approx(expected, abs=1e-5), (
        f"{VERSIONS}: KTO's loss with posweep's reference columns ({loss}) is not TRL's own ({expected})"
    )


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_restore_forward_removes_the_instance_forward_of_training(tokenizer, tmp_path, bf16):
    trainer = build(tokenizer, tmp_path, bf16=bf16)
    policy, reference = trainer.model, trainer.ref_model
    trainer.train()
    for name, model in (("policy", policy), ("reference", reference)):
        assert "forward" in vars(model), f"{VERSIONS}: TRL no longer sets {name}.forward (fused LM head)"
        if bf16:
            assert "_original_forward" in vars(model), f"{VERSIONS}: accelerate no longer autocasts {name}"
        hooks.restore_forward(model)
        left = [key for key in ("forward", "_original_forward") if key in vars(model)]
        assert not left, f"restore_forward left {name}.{left} (patched by TRL/accelerate)"
        assert model.forward.__func__ is type(model).forward, f"{name}.forward is not its class's forward"
        ids = torch.tensor([[tokenizer.convert_tokens_to_ids("song")] * 3])
        assert model(input_ids=ids).logits.shape == (1, 3, len(tokenizer)), f"{name} gives no logits"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_flags_are_the_trainers_mixed_precision(tokenizer, tmp_path, precision):
    trainer = build(tokenizer, tmp_path, bf16=precision == "bf16")
    flags = hooks.precision_flags(trainer)
    assert flags == {"bf16": precision == "bf16", "fp16": False}
    mixed = {"fp32": "no", "bf16": "bf16"}[precision]
    assert trainer.accelerator.mixed_precision == mixed, (
        f"{VERSIONS}: args.bf16/fp16 no longer decide accelerate's mixed precision ({flags})"
    )


@pytest.mark.slow
def test_cpo_rows_keep_trls_keys_without_trls_extra_bos_and_eos(tmp_path):
    import zoo
    from transformers import AutoModelForCausalLM

    from sweep.hf.formats import pair_token_ids

    tokenizer = zoo.tokenizer("gpt2")  # plain text, bos = eos: TRL's CPO prepends one the others do not
    tokenizer.pad_token = tokenizer.eos_token
    config = load_object("trl.experimental.cpo:CPOConfig")(
        output_dir=str(tmp_path), max_length=64, report_to="none", use_cpu=True, bf16=False
    )
    model = AutoModelForCausalLM.from_pretrained(zoo.family("gpt2"))
    feature = {"prompt": "write about ocean :", "chosen": " calm waves", "rejected": " no"}
    trainer_class = load_object("trl.experimental.cpo:CPOTrainer")
    trainer = trainer_class(
        model=model, args=config, train_dataset=Dataset.from_list([feature]), processing_class=tokenizer
    )
    trls = trainer_class.tokenize_row(trainer, feature)
    ours = hooks.cpo_row(tokenizer, feature, 64, templated=False)
    assert set(hooks.CPO_ROW_KEYS) <= set(trls), f"{VERSIONS}: CPOTrainer.tokenize_row's keys changed"
    assert set(ours) == set(hooks.CPO_ROW_KEYS)
    prompt, chosen, _ = pair_token_ids(tokenizer, feature)
    assert ours["prompt_input_ids"] == prompt and ours["chosen_input_ids"] == prompt + chosen
    assert trls["prompt_input_ids"] == [tokenizer.bos_token_id, *prompt], (
        f"{VERSIONS}: TRL's CPO BOS rule changed"
    )
    assert ours["chosen_labels"] == [-100] * len(prompt) + chosen


def test_reference_logps_gives_an_unpatched_model_trls_fused_head(tokenizer, tmp_path):
    trainer = build(tokenizer, tmp_path)
    fresh = tiny_causal_lm(tokenizer, seed=1)
    assert "forward" not in vars(fresh)
    values = hooks.reference_logps(trainer, fresh, 4, paired=True)
    patched = hooks.reference_logps(trainer, trainer.ref_model, 4, paired=True)
    assert "forward" in vars(fresh)
    for name, value in values.items():
        torch.testing.assert_close(value, patched[name])
    hooks.restore_forward(fresh)
    assert "forward" not in vars(fresh)


@pytest.mark.slow
def test_gathered_policy_reads_accelerates_sharding_and_full_state_dict(tokenizer, tmp_path):
    trainer = build(tokenizer, tmp_path)
    trainer.train()
    assert trainer.is_fsdp_enabled is False and trainer.accelerator.state.deepspeed_plugin is None
    assert hooks.gathered_policy(trainer, trainer.model) is trainer.model  # unsharded: the model as trained
    # what the sharded path does with accelerate's gathered state dict: load it into a copy of the model
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    fresh = tiny_causal_lm(tokenizer, seed=2).float()
    fresh.load_state_dict(state)
    for (name, trained), loaded in zip(
        trainer.model.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert torch.equal(trained, loaded), name
