"""Shared test setup: an offline environment, recipes written to a temporary folder, a SLURM cluster."""

import os
import tempfile

import pytest
import yaml

os.environ.update(
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    TOKENIZERS_PARALLELISM="false",
    TRL_EXPERIMENTAL_SILENCE="1",
)
os.environ.setdefault("POSWEEP_CACHE", tempfile.mkdtemp(prefix="posweep-test-cache-"))
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="posweep-test-trackio-"))


@pytest.fixture
def base_recipe() -> dict:
    """A minimal valid recipe on built-in references (validating it builds nothing)."""
    return {
        "name": "t",
        "model": "builtin:toy",
        "data": {"train": {"path": "builtin:toy/train"}, "eval": {"path": "builtin:toy/eval"}},
        "judge": {"reward_model": "builtin:toy-rm"},
        "methods": {"dpo": {"beta": [0.1], "learning_rate": [5e-7]}},
    }


@pytest.fixture
def recipe_file(tmp_path):
    """Write a recipe (YAML text, or a mapping to dump) into tmp_path and return its path."""

    def write(content: str | dict, name: str = "recipe.yaml"):
        path = tmp_path / name
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def slurm():
    """A one-node SLURM cluster (tests/slurm.py), started once per session by the first test asking for it."""
    from slurm import slurm_cluster

    with slurm_cluster() as cluster:
        yield cluster
