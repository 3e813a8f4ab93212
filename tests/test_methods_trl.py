"""Every registry entry builds its real TRL config with the mapped fields and posweep's shared settings."""

import pytest

from sweep.hf.loading import load_object
from sweep.spec.methods import REGISTRY
from sweep.spec.recipe import TrainSpec
from sweep.train.config import trl_config

TRAIN = TrainSpec(max_steps=7, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_length=96,
                  warmup_ratio=0.2, lr_scheduler_type="cosine", weight_decay=0.01, max_grad_norm=0.5,
                  logging_steps=3, precision="fp32", extra={"disable_dropout": False})  # fmt: skip


def build(name: str, output_dir, params: dict | None = None):
    return trl_config(REGISTRY[name], params or {}, TRAIN, 3, output_dir, device="cpu")


def _normalized(key: str, value):
    """DPOConfig stores a single loss_type as a one-element list."""
    return [value] if key == "loss_type" and not isinstance(value, list) else value


@pytest.mark.parametrize("name", list(REGISTRY))
def test_config_has_method_fields_and_shared_settings(name, tmp_path):
    method = REGISTRY[name]
    config = build(name, tmp_path)
    assert type(config) is load_object(method.config)
    for key, value in method.trl_fields({}).items():
        assert _normalized(key, getattr(config, key)) == _normalized(key, value)
    assert config.learning_rate == method.defaults["learning_rate"]
    assert config.beta == method.defaults["beta"]
    # KTO's rows are half pairs: its batch holds two rows per pair (the same pairs per optimizer step)
    assert (config.max_steps, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (
        7,
        8 if method.data == "unpaired" else 4,
        2,
    )
    assert config.max_length == 96
    assert config.lr_scheduler_type == "cosine"
    assert (config.weight_decay, config.max_grad_norm, config.logging_steps) == (0.01, 0.5, 3)
    assert getattr(config, "warmup_ratio", None) == 0.2 or config.warmup_steps == 0.2
    assert config.disable_dropout is False
    assert (config.seed, config.data_seed) == (3, 3)
    assert (config.bf16, config.fp16) == (False, False)
    assert config.use_cpu is True
    assert config.disable_tqdm is True
    assert config.logging_nan_inf_filter is False
    assert config.save_strategy == "no"
    assert config.eval_strategy == "no"
    assert config.report_to in ([], "none", ["none"])
    assert config.output_dir == str(tmp_path)


@pytest.mark.parametrize("name", [n for n, m in REGISTRY.items() if m.reference == "moving"])
def test_trust_region_soft_and_hard_updates(name, tmp_path):
    soft = build(name, tmp_path, {"alpha": 0.3, "tau": 1})
    assert (soft.sync_ref_model, soft.ref_model_mixup_alpha, soft.ref_model_sync_steps) == (True, 0.3, 1)
    hard = build(name, tmp_path, {"alpha": 1.0, "tau": 64})
    assert (hard.sync_ref_model, hard.ref_model_mixup_alpha, hard.ref_model_sync_steps) == (True, 1.0, 64)
    default = build(name, tmp_path)
    assert (default.ref_model_mixup_alpha, default.ref_model_sync_steps) == (0.6, 512)


@pytest.mark.parametrize("name", [n for n, m in REGISTRY.items() if m.reference != "moving"])
def test_fixed_reference_methods_do_not_sync(name, tmp_path):
    assert getattr(build(name, tmp_path), "sync_ref_model", False) is False


def test_simpo_margin_is_ratio_times_beta_and_no_sft_term(tmp_path):
    config = build("simpo", tmp_path, {"beta": 2.5, "gamma_beta_ratio": 0.3})
    assert (config.loss_type, config.cpo_alpha, config.beta) == ("simpo", 0.0, 2.5)
    assert config.simpo_gamma == pytest.approx(0.75)
    assert build("simpo", tmp_path, {"beta": 2.0, "gamma": 1.5}).simpo_gamma == 1.5
    assert build("simpo", tmp_path).simpo_gamma == pytest.approx(1.0)


def test_losses_and_method_knobs(tmp_path):
    assert build("ipo", tmp_path).loss_type == ["ipo"]
    assert build("ln-dpo", tmp_path).loss_type == ["sigmoid_norm"]
    assert build("hinge", tmp_path).loss_type == ["hinge"]
    cdpo = build("cdpo", tmp_path, {"label_smoothing": 0.2})
    assert (cdpo.label_smoothing, cdpo.loss_type, cdpo.loss_weights) == (
        0.2,
        ["sigmoid", "robust"],
        [1.6, -0.6],
    )
    assert build("ld-dpo", tmp_path, {"ld_alpha": 0.3}).ld_alpha == 0.3
    assert build("orpo", tmp_path, {"beta": 0.25}).beta == 0.25
    assert build("kto", tmp_path).loss_type == "kto"
    assert build("cpo", tmp_path).loss_type == "sigmoid"


@pytest.mark.parametrize(("precision", "flags"), [("fp32", (False, False)), ("bf16", (True, False))])
def test_precision_flags(precision, flags, tmp_path):
    train = TRAIN.model_copy(update={"precision": precision})
    config = trl_config(REGISTRY["dpo"], {}, train, 0, tmp_path, device="cpu")
    assert (config.bf16, config.fp16) == flags


def test_auto_precision_is_fp32_on_cpu(tmp_path):
    train = TRAIN.model_copy(update={"precision": "auto"})
    config = trl_config(REGISTRY["dpo"], {}, train, 0, tmp_path, device="cpu")
    assert (config.bf16, config.fp16) == (False, False)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3, 0.45])
def test_cdpo_weights_give_the_conservative_dpo_loss(epsilon):
    """2(1-e)*sigmoid - (1-2e)*robust (TRL's rDPO loss) equals cDPO's -(1-e)logsig(bD) - e*logsig(-bD)."""
    import torch
    import torch.nn.functional as F

    delta = torch.linspace(-4, 4, 33, dtype=torch.float64)
    sigmoid = -F.logsigmoid(delta)
    flipped = -F.logsigmoid(-delta)
    robust = ((1 - epsilon) * sigmoid - epsilon * flipped) / (1 - 2 * epsilon)
    weights = REGISTRY["cdpo"].trl_fields({"label_smoothing": epsilon})["loss_weights"]
    combined = weights[0] * sigmoid + weights[1] * robust
    assert torch.allclose(combined, (1 - epsilon) * sigmoid + epsilon * flipped)
