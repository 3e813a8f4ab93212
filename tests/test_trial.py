"""One trial end to end on a tiny Llama: real TRL training, the files written, failures recorded as data."""

import gc
import importlib.util
import math

import pytest
import torch
from datasets import Dataset
from tiny import CHAT_TEMPLATE, save_dir, tiny_causal_lm, tiny_tokenizer
from transformers import LlamaForCausalLM

from sweep.errors import UserError
from sweep.io import read_json, read_jsonl, write_jsonl
from sweep.spec.plan import TrialSpec
from sweep.spec.recipe import Recipe
from sweep.train.trial import Worker

pytestmark = pytest.mark.slow

PAIRS = [
    ("write about ocean :", "wave tide reef", "the very nice"),
    ("write about music :", "song drum piano", "a good the"),
    ("write about ocean and music :", "wave song", "nice nice"),
    ("write about music and ocean :", "drum tide", "very good"),
] * 4
WORDS = ["user", "assistant", *sorted({word for row in PAIRS for text in row for word in text.split()})]
METRICS_KEYS = {
    "trial_id",
    "state",
    "objective",
    "error",
    "time_s",
    "started",
    "finished",
    "attempt",
    "train",
}


def plain_pairs() -> Dataset:
    """Plain-text pairs; completions start with a space, as prompt and completion are joined as is."""
    return Dataset.from_dict(
        {
            "prompt": [p for p, _, _ in PAIRS],
            "chosen": [" " + c for _, c, _ in PAIRS],
            "rejected": [" " + r for _, _, r in PAIRS],
        }
    )


def chat_pairs() -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p, _, _ in PAIRS],
            "chosen": [[{"role": "assistant", "content": c}] for _, c, _ in PAIRS],
            "rejected": [[{"role": "assistant", "content": r}] for _, _, r in PAIRS],
        }
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer(WORDS, chat_template=CHAT_TEMPLATE)
    return save_dir(tmp_path_factory.mktemp("sft"), tiny_causal_lm(tokenizer), tokenizer)


def make_recipe(model_dir, train=None, **sections) -> Recipe:
    return Recipe.model_validate(
        {
            "name": "t",
            "model": str(model_dir),
            "data": {"train": {"path": "train.jsonl"}, "eval": {"path": "eval.jsonl"}},
            "judge": {"callable": "sweep.builtin.toy:gold_reward"},
            "methods": {"dpo": None},
            "train": {"max_steps": 4, "per_device_train_batch_size": 4, "max_length": 32, **(train or {})},
            **sections,
        }
    )


def make_worker(model_dir, sweep_dir, pairs=None, train=None, **sections) -> Worker:
    recipe = make_recipe(model_dir, train, **sections)
    messages = []
    worker = Worker(
        recipe,
        sweep_dir,
        log=messages.append,
        train_dataset=pairs if pairs is not None else plain_pairs(),
    )
    worker.messages = messages
    return worker


@pytest.fixture(scope="module")
def worker(model_dir, tmp_path_factory):
    return make_worker(model_dir, tmp_path_factory.mktemp("sweep"))


def spec(trial_id, method="dpo", seed=0, **params) -> TrialSpec:
    return TrialSpec(trial_id, method, {"learning_rate": 1e-3, **params}, seed)


def assert_stages_cover(metrics: dict) -> None:
    """The stages add up to the trial's wall time (within 2%), each one non-negative, training the biggest
    part of a trial that trains."""
    stages, total = metrics["stages_s"], metrics["time_s"]["total"]
    assert {"setup", "load", "build", "train", "save", "cleanup"} <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values()), stages
    assert sum(stages.values()) == pytest.approx(total, rel=0.02), (stages, total)
    trained = sum(stages.get(name, 0.0) for name in ("build", "ref_logps", "train"))
    times = metrics["time_s"]
    assert trained == pytest.approx(times["train"] + times.get("ref_logps", 0.0), abs=0.1)


def losses(worker, trial_id) -> list:
    return [r["loss"] for r in read_jsonl(worker.trial_dir(trial_id) / "train_log.jsonl") if "loss" in r]


@pytest.mark.parametrize("method", ["dpo", "ln-dpo", "simpo", "kto", "tr-dpo"])
def test_trial_trains_and_writes_its_files(worker, method):
    before = {k: v.clone() for k, v in worker.sft.state_dict().items()}
    result = worker.run(spec(f"{method}-1", method, beta=0.5), attempt=2, waited_s=0.25)
    assert (result.state, result.error) == ("complete", None)
    folder = worker.trial_dir(result.trial_id)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "params.json", "train_log.jsonl"]
    params = read_json(folder / "params.json")
    assert params["params"] == {"learning_rate": 1e-3, "beta": 0.5}
    assert (params["method"], params["seed"], params["variant"], params["attempt"]) == (method, 0, None, 2)
    assert params["trl_fields"]["beta"] == 0.5
    metrics = read_json(folder / "metrics.json")
    assert set(metrics) >= METRICS_KEYS
    assert set(metrics["time_s"]) - {"ref_logps"} == {"load", "train", "generate", "judge", "kl", "total"}
    assert metrics["time_s"]["total"] >= metrics["time_s"]["train"] > 0
    assert_stages_cover(metrics)
    # the engine's planted wait for the claim is the first stage and counted once in the trial's wall time
    assert metrics["stages_s"]["claim"] == 0.25 and next(iter(metrics["stages_s"])) == "claim"
    rest = sum(seconds for name, seconds in metrics["stages_s"].items() if name != "claim")
    assert metrics["time_s"]["total"] - rest == pytest.approx(0.25, abs=0.005)
    assert metrics["train"]["steps"] == 4
    assert metrics["objective"] == result.objective == metrics["train"]["loss"]
    assert math.isfinite(result.objective)
    log = read_jsonl(folder / "train_log.jsonl")
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert all("epoch" in r for r in log)
    assert losses(worker, result.trial_id)[-1] == result.objective
    after = worker.sft.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the shared SFT/reference model changed"
    assert "forward" not in vars(worker.sft)


def test_conversational_pairs_train(model_dir, tmp_path):
    worker = make_worker(model_dir, tmp_path, pairs=chat_pairs())
    for method in ("dpo", "kto"):
        result = worker.run(spec(f"chat-{method}", method))
        assert result.state == "complete", result.error


def test_trust_region_reference_follows_the_policy(worker):
    worker.run(spec("fixed-reference", "dpo"))
    worker.run(spec("copied-every-step", "tr-dpo", alpha=1.0, tau=1))
    assert losses(worker, "fixed-reference")[-1] < math.log(2) - 1e-3
    assert losses(worker, "copied-every-step") == pytest.approx([math.log(2)] * 4)


def test_same_seed_same_loss_and_other_seed_differs(worker):
    first = worker.run(spec("seed-a", seed=1))
    again = worker.run(spec("seed-b", seed=1))
    other = worker.run(spec("seed-c", seed=2))
    assert losses(worker, "seed-a") == losses(worker, "seed-b")
    assert first.objective == again.objective
    assert losses(worker, "seed-c") != losses(worker, "seed-a")
    assert other.state == "complete"


def test_bad_setting_fails_the_trial_and_the_worker_goes_on(model_dir, tmp_path):
    # KTO's batch is twice the recipe's (two rows per pair); train.extra reaches TRL unchecked here
    worker = make_worker(model_dir, tmp_path, train={"extra": {"per_device_train_batch_size": 1}})
    failed = worker.run(spec("kto-bs1", "kto"))
    assert failed.state == "failed"
    assert failed.objective is None
    assert failed.error["type"] == "ValueError"
    assert "batch size" in failed.error["message"]
    assert failed.error["reason"] == "exception"
    folder = worker.trial_dir("kto-bs1")
    assert read_json(folder / "metrics.json")["error"] == failed.error
    assert "Traceback" in (folder / "traceback.txt").read_text()
    assert not (folder / "scratch").exists()
    assert any("kto-bs1" in line for line in worker.messages)
    assert worker.run(spec("dpo-after", "dpo")).state == "complete"


def test_out_of_memory_is_a_failed_trial(worker, monkeypatch):
    import trl

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trl.DPOTrainer, "train", out_of_memory)
    result = worker.run(spec("oom"))
    assert (result.state, result.error["reason"], result.error["type"]) == (
        "failed",
        "oom",
        "OutOfMemoryError",
    )


def test_nan_loss_stops_the_trial_as_diverged(worker, monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "logsigmoid", lambda x: x * math.nan)
    result = worker.run(spec("nan"))
    assert result.state == "diverged"
    assert result.objective is None
    assert result.error["reason"] == "nan_loss"
    assert result.metrics["train"]["steps"] == 1
    assert read_jsonl(worker.trial_dir("nan") / "train_log.jsonl")[0]["loss"] is None


def test_interrupt_is_recorded_and_re_raised(worker, monkeypatch):
    import trl

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trl.DPOTrainer, "train", interrupt)
    with pytest.raises(KeyboardInterrupt):
        worker.run(spec("stopped"))
    metrics = read_json(worker.trial_dir("stopped") / "metrics.json")
    assert (metrics["state"], metrics["objective"]) == ("interrupted", None)


def test_a_stop_during_the_cleanup_of_an_ended_trial_still_records_it(worker, monkeypatch):
    """A SIGTERM that lands while an ended trial frees its memory (seen in a --workers 2 SIGTERM run: the
    trial was left with params.json and no metrics.json) is raised after metrics.json is written."""
    import sweep.train.trial as trial_module

    def stop(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trial_module, "free_memory", stop)
    with pytest.raises(KeyboardInterrupt):
        worker.run(spec("stopped-late"))
    metrics = read_json(worker.trial_dir("stopped-late") / "metrics.json")
    assert metrics["state"] == "complete" and math.isfinite(metrics["objective"])
    assert "cleanup" in metrics["stages_s"]


def test_stale_folder_is_cleared_and_complete_trial_is_untouched(worker):
    folder = worker.trial_dir("stale")
    folder.mkdir(parents=True)
    (folder / "params.json").write_text("{}")
    (folder / "leftover.txt").write_text("from a killed attempt")
    assert worker.run(spec("stale")).state == "complete"
    assert not (folder / "leftover.txt").exists()
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    again = worker.run(spec("stale"), attempt=2)
    assert again.state == "complete"
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp
    assert read_json(folder / "params.json")["attempt"] == 1


def test_pruning_stops_training_and_keeps_the_last_value(model_dir, tmp_path):
    worker = make_worker(model_dir, tmp_path, eval={"every_steps": 2})
    reports = []

    def report(step, value):
        reports.append((step, value))
        return step >= 2

    result = worker.run(spec("pruned"), report=report)
    assert result.state == "pruned"
    assert [step for step, _ in reports] == [2]
    assert result.objective == reports[-1][1]
    assert result.metrics["train"]["steps"] == 2
    assert worker.run(spec("not-pruned"), report=lambda step, value: False).state == "complete"


def test_evaluation_gives_objective_metrics_samples_and_times(model_dir, tmp_path):
    from sweep.evaluate.evaluator import Evaluator

    prompts = tmp_path / "eval.jsonl"
    write_jsonl(prompts, [{"prompt": p} for p, _, _ in PAIRS[:3]])
    settings = {"max_new_tokens": 6, "bootstrap": 20, "quick_prompts": 2, "every_steps": 2}
    data = {"train": {"path": "train.jsonl"}, "eval": {"path": str(prompts)}}
    recipe = make_recipe(model_dir, data=data, eval={**settings, "objective": "judge_score_mean"})

    def evaluator(model, tokenizer, conversational):
        return Evaluator(recipe, model, tokenizer, tmp_path, train_conversational=conversational)

    worker = Worker(recipe, tmp_path, train_dataset=plain_pairs(), evaluator_factory=evaluator)
    assert worker.direction == "maximize"
    reports = []
    result = worker.run(spec("evaluated"), report=lambda step, value: reports.append((step, value)))
    assert result.state == "complete", result.error
    assert [step for step, _ in reports] == [2, 4]
    folder = worker.trial_dir("evaluated")
    metrics = read_json(folder / "metrics.json")
    assert result.objective == metrics["judge_score_mean"] == metrics["objective"]
    assert {"win_rate_vs_sft", "kl_to_sft", "length_mean"} <= set(metrics)
    assert metrics["time_s"]["generate"] > 0 and metrics["time_s"]["kl"] > 0
    assert_stages_cover(metrics)
    for name in ("generate", "judge", "kl"):  # the evaluator's own timings, carved out of its stage
        assert metrics["stages_s"][name] == pytest.approx(metrics["time_s"][name], abs=1e-3)
    assert len(read_jsonl(folder / "samples.jsonl")) == 3
    assert worker.evaluator.sft_model is worker.sft


def test_keep_all_saves_every_trained_model(model_dir, tmp_path):
    worker = make_worker(model_dir, tmp_path, execution={"keep": "all"})
    worker.run(spec("one"))
    assert {p.name for p in (worker.trial_dir("one") / "model").iterdir()} >= {
        "config.json",
        "tokenizer.json",
    }


def test_memory_is_released_between_trials(worker):
    def live(kind):
        gc.unfreeze()  # the worker freezes what outlives its first trial; count everything
        gc.collect()
        return sum(isinstance(obj, kind) for obj in gc.get_objects())

    worker.run(spec("memory-0", "dpo"))
    tensors = live(torch.Tensor)
    for index, method in enumerate(["tr-dpo", "kto"], start=1):
        worker.run(spec(f"memory-{index}", method))
    assert live(LlamaForCausalLM) == 1
    assert live(torch.Tensor) <= tensors


@pytest.mark.skipif(importlib.util.find_spec("peft") is not None, reason="peft is installed")
def test_lora_without_peft_is_a_user_error(model_dir, tmp_path):
    with pytest.raises(UserError, match="pip install peft"):
        Worker(make_recipe(model_dir, model={"path": str(model_dir), "lora": {"r": 4}}), tmp_path)
