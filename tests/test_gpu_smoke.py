"""The GPU smoke (`make gpu-smoke`): its MFU arithmetic, GPU peaks and CPU mode end to end; the GPU speed
switches (train.use_liger_kernel, judge sort_by_length) reach TRL and the judge, and change nothing else."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from sweep.errors import UserError
from sweep.hf import loading
from sweep.hf.judgeinputs import JudgeInput
from sweep.hf.judges import score_inputs
from sweep.results import SweepFolder
from sweep.spec.methods import REGISTRY
from sweep.spec.recipe import TrainSpec
from sweep.train import config as train_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_smoke.py"


def _smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
    ],
)
def test_peak_by_device_name(name, peak):
    assert _smoke().peak_tflops(name)[0] == peak


def test_unknown_gpu_has_no_peak():
    assert _smoke().peak_tflops("NVIDIA GeForce RTX 4090") is None


def test_mfu_is_six_n_tokens_over_time_and_peak():
    # 0.5e9 parameters, 1e5 tokens in 1 s: 3e14 FLOP/s of a 1e15 peak
    assert _smoke().mfu(500_000_000, 100_000, 1.0, 1000.0) == pytest.approx(0.3)
    assert _smoke().mfu(500_000_000, 100_000, 2.0, 1000.0) == pytest.approx(0.15)


def test_memory_check_tolerance():
    check = _smoke().memory_check
    assert check({"a": {"after_mb": 1000.0}, "b": {"after_mb": 1049.0}})[0] is True
    assert check({"a": {"after_mb": 1000.0}, "b": {"after_mb": 1051.0}})[0] is False
    assert check({"a": {"after_mb": None}})[0] is None


def test_trial_gpu_memory_record_in_mib(monkeypatch):
    assert loading.cuda_memory() == {}  # no CUDA here: metrics.json's worker record has no GPU fields
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 3 * 2**20 + 2**19)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 5 * 2**30)
    assert loading.cuda_memory() == {"cuda_mb": 3.5, "cuda_peak_mb": 5120.0}


def test_each_stage_keeps_its_own_gpu_peak(monkeypatch):
    from sweep.train.outcome import Outcome, metrics_record
    from sweep.train.stages import Stages

    assert Stages().peak_mb == {}  # no CUDA here: no memory per stage
    allocated = {"peak": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: allocated["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: allocated.update(peak=0))
    outcome = Outcome(stages=Stages())
    for stage, mib in [("load", 10), ("train", 300), ("generate", 40), ("train", 100)]:
        allocated["peak"] = mib * 2**20  # what the running stage (setup, then each one in turn) peaked at
        outcome.stages.enter(stage)
    allocated["peak"] = 5 * 2**20
    worker = {"cuda_peak_mb": 5.0}
    record = metrics_record("t", outcome, "now", 0.0, 1, worker)
    peaks = {"setup": 10.0, "load": 300.0, "train": 40.0, "generate": 100.0}  # train: max(40, 5 at the end)
    assert record.worker == {"cuda_peak_mb": 300.0, "cuda_peak_mb_by_stage": peaks}


@pytest.mark.parametrize("method", ["dpo", "simpo", "kto"])
def test_liger_switch_reaches_the_trl_config(method, tmp_path, monkeypatch):
    def build(train, device):
        return train_config.trl_config(REGISTRY[method], {}, train, 0, tmp_path, device=device)

    assert build(TrainSpec(), "cpu").use_liger_kernel is False
    wanted = TrainSpec(use_liger_kernel=True)
    with pytest.raises(UserError, match=r"train.use_liger_kernel: .* runs on cpu"):
        build(wanted, "cpu")
    real = importlib.util.find_spec

    def liger(spec):  # liger_kernel's spec, everything else as it is
        return lambda name, *args: spec if name == "liger_kernel" else real(name, *args)

    monkeypatch.setattr(train_config.importlib.util, "find_spec", liger(None))
    with pytest.raises(UserError, match=r"liger-kernel package"):
        build(wanted, "cuda")
    monkeypatch.setattr(train_config.importlib.util, "find_spec", liger(object()))
    assert build(wanted, "cuda").use_liger_kernel is True


def test_liger_switch_is_not_a_train_extra(base_recipe, recipe_file):
    from sweep.spec.validate import RecipeError, load_recipe

    base_recipe["train"] = {"extra": {"use_liger_kernel": True}}
    with pytest.raises(RecipeError, match=r"train.extra.use_liger_kernel.*train.use_liger_kernel"):
        load_recipe(recipe_file(base_recipe))


def test_length_sorted_judge_batches_keep_order_and_scores():
    from tiny import tiny_reward_model, tiny_tokenizer

    tokenizer = tiny_tokenizer([f"w{i}" for i in range(20)])
    model = tiny_reward_model(tokenizer, seed=3)
    sequences = [[3 + (i * 7 + j) % 20 for j in range(1 + (i * 5) % 11)] for i in range(13)]
    inputs = [JudgeInput(ids) for ids in sequences]
    alone = [score_inputs(model, [item], 1)[0] for item in inputs]
    assert len(set(alone)) == len(alone)  # distinct scores: a permuted answer cannot pass
    for sort in (False, True):
        batched = score_inputs(model, inputs, 4, sort_by_length=sort)
        assert batched == pytest.approx(alone, abs=1e-5)


@pytest.mark.slow
def test_cpu_tiny_smoke_prints_computed_figures(tmp_path):
    work, summary = tmp_path / "work", tmp_path / "smoke.json"
    command = [sys.executable, str(SCRIPT), "--cpu", "--tiny", "--workdir", str(work), "--json", str(summary)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=os.environ, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "peak: not measured: no GPU" in out
    assert "MFU not measured: no GPU" in out
    assert "back to baseline ±5%: not measured: no GPU" in out
    result = json.loads(summary.read_text())
    assert {row["method"] for row in result["trials"].values()} == {"dpo", "ln-dpo", "simpo", "kto"}

    # the token count, recounted: each pair's full chosen and rejected conversations, cut at max_length
    tokenizer = AutoTokenizer.from_pretrained(work / "policy")
    max_length = 96
    tokens = 0
    for line in (work / "train.jsonl").read_text().splitlines():
        pair = json.loads(line)
        for side in ("chosen", "rejected"):
            ids = tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=True, return_dict=True)
            tokens += min(len(ids["input_ids"]), max_length)

    folder = SweepFolder(work / "results" / "gpu-smoke")
    for record in folder.trials():
        row, times = result["trials"][record.trial_id], record.metrics.time_s
        assert record.state == "complete" and "cuda_mb" not in record.metrics.worker
        assert row["tokens"] == tokens
        assert row["tokens_per_s"] > 0 and row["tokens_per_s"] == pytest.approx(tokens / times["train"])
        assert row["mfu"] is None and row["peak_mb"] is None
        share = (times["generate"] + times["judge"] + times["kl"]) / times["total"]
        assert 0 < row["eval_share"] < 1 and row["eval_share"] == pytest.approx(share)
        samples = folder.trial(record.trial_id).read_samples()
        generated = sum(sample["length"] for sample in samples)
        assert row["generate_tokens_per_s"] == pytest.approx(generated / times["generate"])
        assert 0 <= row["judged"] <= len(samples)
        assert f"{record.trial_id:<28}complete" in out and f"{row['tokens_per_s']:,.0f}" in out
    total = result["total"]
    assert total["tokens_per_s"] > 0 and 0 < total["eval_share"] < 1 and total["sft_tokens_per_s"] > 0
