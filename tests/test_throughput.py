"""Work shared across trials: tokenized training sets and fixed-reference log-probabilities computed once per
sweep and fed to TRL, a cache keyed by what it depends on, and workers whose memory stays flat."""

import gc
import math

import pytest
import torch
import transformers
import trl
from datasets import Dataset
from tiny import save_dir, tiny_causal_lm, tiny_tokenizer

from sweep.io import read_json, read_jsonl
from sweep.spec.plan import TrialSpec
from sweep.spec.recipe import Recipe
from sweep.train import hooks
from sweep.train.trial import Worker

pytestmark = pytest.mark.slow

# chosen and rejected of different lengths, so LD-DPO's shared-length/tail split matters
PAIRS = [
    ("write about ocean :", "wave tide reef shore", "the"),
    ("write about music :", "song", "a good the very nice"),
    ("write about ocean and music :", "wave song drum", "nice nice"),
    ("write about music and ocean :", "drum tide", "very good the a"),
    ("tell me about ocean :", "reef", "the very"),
    ("tell me about music :", "piano song drum tide", "good"),
] * 4
WORDS = sorted({word for row in PAIRS for text in row for word in text.split()})
FIXED_REFERENCE = ["dpo", "ipo", "ln-dpo", "cdpo", "hinge", "ld-dpo"]


def pairs(rows=PAIRS) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [p for p, _, _ in rows],
            "chosen": [" " + c for _, c, _ in rows],
            "rejected": [" " + r for _, _, r in rows],
        }
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer(WORDS)
    return save_dir(tmp_path_factory.mktemp("sft"), tiny_causal_lm(tokenizer), tokenizer)


def make_worker(
    model_dir, sweep_dir, data=None, max_length=32, steps=3, min_completion=8, **options
) -> Worker:
    recipe = Recipe.model_validate(
        {
            "name": "t",
            "model": str(model_dir),
            "data": {"train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"}},
            "judge": {"callable": "sweep.builtin.toy:gold_reward"},
            "methods": {"dpo": None},
            "train": {
                "max_steps": steps,
                "per_device_train_batch_size": 4,
                "max_length": max_length,
                "min_completion_tokens": min_completion,
            },
        }
    )
    data = pairs() if data is None else data
    return Worker(recipe, sweep_dir, log=lambda line: None, train_dataset=data, **options)


def spec(trial_id, method="dpo", **params) -> TrialSpec:
    return TrialSpec(trial_id, method, {"learning_rate": 1e-2, "beta": 0.5, **params}, 0)


def losses(worker, trial_id) -> list[float]:
    return [r["loss"] for r in read_jsonl(worker.trial_dir(trial_id) / "train_log.jsonl") if "loss" in r]


class ReferenceCalls:
    """Counts forward passes through the shared SFT model's backbone (its copies, the policies, not)."""

    def __init__(self, worker):
        self.count = 0
        backbone = worker.sft.base_model

        def hook(module, args):
            self.count += module is backbone

        self.handle = backbone.register_forward_pre_hook(hook)


def cache_entries(sweep_dir) -> dict[str, set[str]]:
    return {
        kind: {p.name for p in (sweep_dir / "cache" / kind).glob("*") if not p.name.endswith(".lock")}
        for kind in ("prepared", "reference")
    }


@pytest.mark.parametrize(
    "method, params",
    [("dpo", {}), ("ipo", {}), ("ln-dpo", {"beta": 2.0}), ("ld-dpo", {"ld_alpha": 0.3}), ("kto", {})],
)
def test_cached_reference_trains_as_trls_own_reference_pass(model_dir, tmp_path, method, params):
    cached = make_worker(model_dir, tmp_path / "cached")
    plain = make_worker(model_dir, tmp_path / "plain", reference_cache=False)
    with_cache = cached.run(spec("t", method, **params))
    without = plain.run(spec("t", method, **params))
    assert "ref_logps" in with_cache.metrics["time_s"]
    assert "ref_logps" not in without.metrics["time_s"]
    first, second = losses(cached, "t"), losses(plain, "t")
    assert len(first) == len(second) == 3
    assert first[0] == pytest.approx(second[0], rel=1e-6)
    # after an update the policy differs from the reference, so later losses depend on the cached values
    assert first == pytest.approx(second, rel=1e-4)
    assert not math.isclose(second[0], second[-1], rel_tol=1e-3)


def test_training_reads_the_cached_values(model_dir, tmp_path):
    plain = make_worker(model_dir, tmp_path / "plain", reference_cache=False)
    plain.run(spec("t"))
    worker = make_worker(model_dir, tmp_path / "cached")
    worker.run(spec("warm"))
    (path,) = (tmp_path / "cached" / "cache" / "reference").glob("*.pt")
    values = torch.load(path, weights_only=True)
    torch.save({name: value + (name == "chosen_total") for name, value in values.items()}, path)
    tampered = make_worker(model_dir, tmp_path / "cached")
    tampered.run(spec("t"))
    assert losses(tampered, "t")[0] != pytest.approx(losses(plain, "t")[0], rel=1e-3)


def test_no_reference_forward_pass_in_a_trial_once_cached(model_dir, tmp_path):
    worker = make_worker(model_dir, tmp_path)
    calls = ReferenceCalls(worker)
    first = worker.run(spec("first"))
    assert calls.count > 0 and first.metrics["time_s"]["ref_logps"] > 0
    for method in FIXED_REFERENCE:
        calls.count = 0
        result = worker.run(spec(f"cached-{method}", method, beta=0.2))
        assert result.state == "complete", result.error
        assert calls.count == 0, method
        assert "ref_logps" not in result.metrics["time_s"]
    plain = make_worker(model_dir, tmp_path / "plain", reference_cache=False)
    calls = ReferenceCalls(plain)
    plain.run(spec("plain"))
    assert calls.count == 3  # one reference pass per training step
    calls.handle.remove()


def test_caches_are_shared_by_workers_and_keyed_by_their_inputs(model_dir, tmp_path, monkeypatch):
    prepared = []
    original = trl.DPOTrainer._prepare_dataset

    def counting(self, dataset, processing_class, args, dataset_name):
        prepared.append(dataset_name)
        return original(self, dataset, processing_class, args, dataset_name)

    monkeypatch.setattr(trl.DPOTrainer, "_prepare_dataset", counting)
    make_worker(model_dir, tmp_path).run(spec("a"))
    assert len(prepared) == 1
    entries = cache_entries(tmp_path)
    assert [len(names) for names in entries.values()] == [1, 1]

    resumed = make_worker(model_dir, tmp_path)  # a resumed sweep, or another worker of the same sweep
    calls = ReferenceCalls(resumed)
    result = resumed.run(spec("b", "ln-dpo", beta=2.0))
    assert (len(prepared), calls.count, cache_entries(tmp_path)) == (1, 0, entries)
    assert "ref_logps" not in result.metrics["time_s"]

    shorter = make_worker(model_dir, tmp_path, max_length=6, min_completion=1)
    assert "ref_logps" in shorter.run(spec("c")).metrics["time_s"]
    other_data = make_worker(model_dir, tmp_path, data=pairs(PAIRS[1:]))
    assert "ref_logps" in other_data.run(spec("d")).metrics["time_s"]
    assert len(prepared) == 3
    assert [len(names) for names in cache_entries(tmp_path).values()] == [3, 3]


def test_row_tokenizing_trainers_tokenize_each_row_once(model_dir, tmp_path, monkeypatch):
    rows = []
    original = hooks.cpo_row  # what the hooked CPOTrainer.tokenize_row tokenizes with

    def counting(tokenizer, feature, max_length, templated):
        rows.append(feature["prompt"])
        return original(tokenizer, feature, max_length, templated)

    monkeypatch.setattr(hooks, "cpo_row", counting)
    worker = make_worker(model_dir, tmp_path)
    first = worker.run(spec("first", "simpo", beta=2.0, gamma_beta_ratio=0.5))
    again = worker.run(spec("again", "simpo", beta=2.5, gamma_beta_ratio=0.5))
    assert len(rows) == len(set(PAIRS))  # each distinct row once, for both trials
    assert first.state == again.state == "complete"


def test_memory_stays_flat_across_trials(model_dir, tmp_path):
    def live() -> dict[str, int]:
        gc.unfreeze()  # frozen objects are not listed by gc.get_objects
        gc.collect()
        objects = gc.get_objects()
        kinds = {
            "tensors": torch.Tensor,
            "modules": torch.nn.Module,
            "trainers": transformers.Trainer,
            "optimizers": torch.optim.Optimizer,
            "datasets": Dataset,
        }
        counts = {name: sum(isinstance(obj, kind) for obj in objects) for name, kind in kinds.items()}
        return {**counts, "objects": len(objects)}

    worker = make_worker(model_dir, tmp_path)
    methods = [("dpo", {}), ("ln-dpo", {}), ("kto", {}), ("simpo", {"gamma_beta_ratio": 0.5}), ("tr-dpo", {})]

    def round_of_trials(index):
        for method, params in methods:
            assert worker.run(spec(f"{method}-{index}", method, **params)).state == "complete"

    round_of_trials(0)
    after_one = live()
    round_of_trials(1)
    round_of_trials(2)
    after_three = live()
    assert after_one["trainers"] == after_one["optimizers"] == 0
    for kind in ("tensors", "modules", "trainers", "optimizers", "datasets"):
        assert after_three[kind] <= after_one[kind], kind
    assert after_three["objects"] <= after_one["objects"] * 1.01
    records = [read_json(worker.trial_dir(f"dpo-{i}") / "metrics.json") for i in range(3)]
    assert [r["worker"]["trial"] for r in records] == [1, 6, 11]
