"""TRL config fields read from source, and the registry's mapping of hyperparameters onto them."""

import dataclasses
import importlib
import subprocess
import sys

import pytest

from sweep.spec.methods import REGISTRY
from sweep.spec.plan import _grid_points
from sweep.spec.trlfields import config_fields

CONFIGS = sorted({method.config for method in REGISTRY.values()})


@pytest.mark.parametrize("method", REGISTRY.values(), ids=lambda method: method.name)
def test_registry_fields_exist_in_the_trl_config(method):
    fields = config_fields(method.config)
    assert fields is not None, method.config
    assert set(method.trl_fields(method.defaults)) <= fields
    space = {name: list(values) for name, values in method.space.items()}
    for point in _grid_points(method.name, space):
        assert set(method.trl_fields(point)) <= fields, point


@pytest.mark.parametrize("config", CONFIGS)
def test_config_fields_include_inherited_training_arguments(config):
    fields = config_fields(config)
    assert {
        "beta",
        "learning_rate",
        "output_dir",
        "per_device_train_batch_size",
        "seed",
        "max_steps",
    } <= fields


def test_unknown_classes_and_modules_give_none():
    assert config_fields("trl:NoSuchConfig") is None
    assert config_fields("no_such_package_here.sub:Config") is None


def test_reading_fields_imports_neither_torch_nor_trl():
    script = (
        "import sys; from sweep.spec.methods import REGISTRY; "
        "from sweep.spec.trlfields import config_fields; "
        "assert all(config_fields(m.config) for m in REGISTRY.values()); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'trl', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("dpo", {}, {"loss_type": ["sigmoid"], "beta": 0.1, "learning_rate": 5e-7}),
        ("ln-dpo", {"beta": 2.0}, {"loss_type": ["sigmoid_norm"], "beta": 2.0, "learning_rate": 5e-7}),
        ("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.25}, {"simpo_gamma": 0.5, "cpo_alpha": 0.0}),
        ("simpo", {"beta": 2.0, "gamma": 1.5}, {"simpo_gamma": 1.5, "loss_type": "simpo"}),
        (
            "tr-dpo",
            {"alpha": 0.3, "tau": 1},
            {"sync_ref_model": True, "ref_model_mixup_alpha": 0.3, "ref_model_sync_steps": 1},
        ),
        (
            "tr-dpo",
            {"alpha": 0.3},
            {"sync_ref_model": True, "ref_model_mixup_alpha": 0.3, "ref_model_sync_steps": 512},
        ),
        (
            "tr-kto",
            {"alpha": 1.0, "tau": 64.0},
            {"sync_ref_model": True, "ref_model_mixup_alpha": 1.0, "ref_model_sync_steps": 64},
        ),
        (
            "tr-kto",
            {"tau": 64.0},
            {"sync_ref_model": True, "ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 64},
        ),
        (
            "cdpo",
            {"label_smoothing": 0.2},
            {"label_smoothing": 0.2, "loss_type": ["sigmoid", "robust"], "loss_weights": [1.6, -0.6]},
        ),
    ],
)
def test_hyperparameters_map_onto_trl_fields(method, params, expected):
    fields = REGISTRY[method].trl_fields(params)
    assert fields.items() >= expected.items()
    assert isinstance(fields.get("ref_model_sync_steps", 1), int)


@pytest.mark.slow
def test_source_fields_match_the_real_dataclasses():
    for config in CONFIGS:
        module, _, name = config.partition(":")
        real = {field.name for field in dataclasses.fields(getattr(importlib.import_module(module), name))}
        assert config_fields(config) == real, config


def test_posweep_sets_only_the_fields_recipes_may_not_touch():
    from sweep.spec.methods import method_trl_fields
    from sweep.spec.trlfields import POSWEEP_TRL_FIELDS
    from sweep.train.config import posweep_fields

    own = posweep_fields("out", seed=3, precision="fp32", device="cpu")
    assert set(own) <= POSWEEP_TRL_FIELDS
    assert own["seed"] == own["data_seed"] == 3 and own["report_to"] == "none"
    assert {"loss_type", "simpo_gamma", "ref_model_sync_steps", "learning_rate"} <= method_trl_fields()
    assert not method_trl_fields() & (POSWEEP_TRL_FIELDS - {"loss_weights"})
