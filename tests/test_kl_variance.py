"""benchmarks/kl_variance.py: its within/between-prompt split recovers planted variance components."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "kl_variance.py"


def _module():
    spec = importlib.util.spec_from_file_location("kl_variance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("between", "within", "samples"), [(1.0, 4.0, 16), (0.5, 4.0, 2), (2.0, 0.0, 8)])
def test_variance_parts_recover_planted_between_and_within_prompt_variance(between, within, samples):
    rng = np.random.default_rng(0)
    prompts = 20_000
    per_prompt = rng.normal(0, np.sqrt(between), (prompts, 1))
    values = per_prompt + rng.normal(0, np.sqrt(within), (prompts, samples))
    found_within, found_between = _module().variance_parts(values)
    assert found_within == pytest.approx(within, rel=0.05, abs=1e-9)
    assert found_between == pytest.approx(between, rel=0.1)
