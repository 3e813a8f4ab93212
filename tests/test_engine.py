"""The sweep engine end to end: real TRL trials on a tiny local model, Optuna study, resume, failures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny import CHAT_TEMPLATE, save_dir, tiny_causal_lm, tiny_reward_model, tiny_tokenizer
from typer.testing import CliRunner

from sweep.cli import app
from sweep.engine.status import stage_means
from sweep.results import SweepFolder
from sweep.spec.plan import plan_recipe
from sweep.spec.validate import load_recipe

pytestmark = pytest.mark.slow
WORDS = [
    "hello",
    "world",
    "good",
    "bad",
    "cat",
    "dog",
    "red",
    "blue",
    "tell",
    "me",
    "about",
    "the",
    "a",
    "is",
    "very",
    "nice",
]
N_EVAL = 6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A tiny policy and reward model, conversational training pairs and OOD prompts, in one folder."""
    folder = tmp_path_factory.mktemp("inputs")
    tokenizer = tiny_tokenizer(WORDS, chat_template=CHAT_TEMPLATE)
    save_dir(folder / "model", tiny_causal_lm(tokenizer, seed=0), tokenizer)
    save_dir(folder / "rm", tiny_reward_model(tokenizer, seed=1), tokenizer)
    with (folder / "train.jsonl").open("w") as handle:
        for index in range(16):
            animal = ("cat", "dog")[index % 2]
            handle.write(
                json.dumps(
                    {
                        "prompt": [{"role": "user", "content": f"tell me about the {animal}"}],
                        "chosen": [{"role": "assistant", "content": f"good nice {animal}"}],
                        "rejected": [{"role": "assistant", "content": f"bad {WORDS[index]}"}],
                    }
                )
                + "\n"
            )
    with (folder / "eval.jsonl").open("w") as handle:
        for index in range(N_EVAL):
            colour = ("red", "blue")[index % 2]
            handle.write(
                json.dumps({"q": [{"role": "user", "content": f"tell me about a {colour} dog"}], "a": "good"})
                + "\n"
            )
    return folder


def write_recipe(folder: Path, name: str, methods: dict, **sections) -> Path:
    """A recipe over the tiny inputs; `sections` override or add top-level sections."""
    recipe = {
        "name": name,
        "model": str(folder / "model"),
        "data": {
            "train": {"path": str(folder / "train.jsonl")},
            "eval": {"path": str(folder / "eval.jsonl"), "columns": {"prompt": "q", "reference": "a"}},
        },
        "judge": {"reward_model": str(folder / "rm")},
        "methods": methods,
        "train": {"max_steps": 3, "per_device_train_batch_size": 4, "max_length": 48},
        "eval": {"max_new_tokens": 6, "batch_size": 8, "bootstrap": 200},
        **sections,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def run(*args: str):
    """Invoke the real CLI in-process; return the click Result."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def trial_files(sweep: Path) -> dict[str, dict]:
    """trial id -> metrics.json of every trial folder (None when it has none)."""
    out = {}
    for folder in sorted((sweep / "trials").iterdir()):
        metrics = folder / "metrics.json"
        out[folder.name] = json.loads(metrics.read_text()) if metrics.exists() else None
    return out


def claims(sweep: Path) -> dict[str, int]:
    """trial id -> how many Optuna trials (claims) the sweep's study holds for it."""
    import optuna

    from sweep.engine.queue import ATTR
    from sweep.engine.storage import open_storage

    study = optuna.load_study(study_name=sweep.name, storage=open_storage(None, sweep))
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        trial_id = trial.user_attrs.get(ATTR, {}).get("trial_id")
        counts[trial_id] = counts.get(trial_id, 0) + 1
    return counts


def file_times(sweep: Path, trial_ids) -> dict[str, int]:
    """Path -> modification time (ns) of every file in the given trials' folders."""
    return {
        str(path): path.stat().st_mtime_ns
        for trial_id in trial_ids
        for path in sorted((sweep / "trials" / trial_id).rglob("*"))
        if path.is_file()
    }


GRID = {
    "dpo": {"beta": [0.1], "learning_rate": [1e-3]},
    "ln-dpo": {"beta": [1.0], "learning_rate": [1e-3]},
    "simpo": {"beta": [2.0], "gamma_beta_ratio": [0.5], "learning_rate": [1e-3]},
    "ipo": {"beta": [0.5], "learning_rate": [1e-3]},
    "kto": {"beta": [0.1], "learning_rate": [1e-3]},
    "tr-dpo": {"beta": [0.1], "alpha": [0.5], "learning_rate": [1e-3]},
}


def test_grid_sweep_writes_the_layout_and_a_rerun_trains_nothing(inputs, tmp_path):
    recipe = write_recipe(inputs, "grid", GRID)
    result = run("run", recipe, "--results", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "grid"
    planned = [t.trial_id for t in plan_recipe(load_recipe(recipe)).trials]
    meta = json.loads((sweep / "sweep.json").read_text())
    assert meta["planned_trials"] == planned and len(planned) == 6
    assert {"name", "created", "updated", "storage", "plan_hash", "versions", "git_revision"} <= set(meta)
    assert meta["versions"]["trl"] and meta["storage"] == "journal:study.journal"
    assert yaml.safe_load((sweep / "recipe.yaml").read_text())["name"] == "grid"
    metrics = trial_files(sweep)
    assert sorted(metrics) == sorted(planned)
    for trial_id, record in metrics.items():
        folder = sweep / "trials" / trial_id
        params = json.loads((folder / "params.json").read_text())
        assert params["method"] == trial_id.split("-b")[0] and params["seed"] == 0 and params["trl_fields"]
        assert record["state"] == "complete" and isinstance(record["objective"], float)
        assert {"load", "train", "generate", "judge", "kl", "total"} <= set(record["time_s"])
        assert sum(record["stages_s"].values()) == pytest.approx(record["time_s"]["total"], rel=0.02)
        assert 0 < record["stages_s"]["claim"] < record["time_s"]["total"]  # the engine's wait for the claim
        assert record["win_rate_vs_sft"] == record["objective"]
        assert [json.loads(line)["step"] for line in (folder / "train_log.jsonl").read_text().splitlines()]
        assert len((folder / "samples.jsonl").read_text().splitlines()) == N_EVAL
        assert not (folder / "model").exists()
    stamps = {p: p.stat().st_mtime_ns for p in (sweep / "trials").glob("*/metrics.json")}
    again = run("run", recipe, "--results", tmp_path, "--quiet")
    assert again.exit_code == 0
    assert "6 done, 0 to run" in again.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rerun = json.loads((sweep / "sweep.json").read_text())
    assert rerun["last_run"].startswith("trained nothing") and meta["last_run"] == "trained 6 trial(s)"
    assert rerun["overhead_fraction"] == meta["overhead_fraction"] < 1
    status = run("status", sweep)
    assert status.exit_code == 0 and "6 complete of 6 planned" in status.output
    trained: dict[str, list[float]] = {}
    for trial_id, record in metrics.items():
        trained.setdefault(trial_id.split("-b")[0], []).append(record["stages_s"]["train"])
    means = stage_means(SweepFolder(sweep).trials())
    assert set(means) == set(trained) and "where the time went" in status.output
    assert all(list(stages)[:2] == ["claim", "setup"] for stages in means.values())  # in stage order
    for method, values in trained.items():
        assert means[method]["train"] == pytest.approx(sum(values) / len(values), abs=1e-6)
        assert f"{means[method]['train']:.2f}" in status.output


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(inputs, tmp_path):
    """TRL rejects a moving reference with precomputed reference log-probs: tr-dpo fails, dpo completes."""
    methods = {"dpo": GRID["dpo"], "tr-dpo": GRID["tr-dpo"]}
    recipe = write_recipe(
        inputs,
        "fails",
        methods,
        train={
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "max_length": 48,
            "extra": {"precompute_ref_log_probs": True},
        },
    )
    result = run("run", recipe, "--results", tmp_path, "--quiet")
    assert result.exit_code == 1, result.output  # exit codes (issue 15): a trial failed after its retries
    failed_id = "tr-dpo-b0.1-lr0.001-a0.5-s0"
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"1 trial(s) failed after their retries: {failed_id} (errors: ")
    assert str(tmp_path / "fails" / "trials" / failed_id / "traceback.txt") in last
    assert run("status", tmp_path / "fails").exit_code == 1
    metrics = trial_files(tmp_path / "fails")
    failed = metrics["tr-dpo-b0.1-lr0.001-a0.5-s0"]
    assert metrics["dpo-b0.1-lr0.001-s0"]["state"] == "complete"
    assert failed["state"] == "failed" and failed["objective"] is None
    assert failed["error"]["type"] == "ValueError" and failed["error"]["reason"] == "exception"
    assert "precompute_ref_log_probs" in failed["error"]["message"]
    assert failed["attempt"] == 2, "max_retries=1: one retry"
    status = run("status", tmp_path / "fails")
    assert "exception: ValueError" in status.output
    again = run("run", recipe, "--results", tmp_path, "--quiet")
    assert "1 done, 0 to run, 1 failed too often" in again.output


def test_two_seeds_are_two_trials_and_a_seed_reproduces_its_metrics(inputs, tmp_path):
    recipe = write_recipe(inputs, "seeds", {"dpo": GRID["dpo"]}, search={"seeds": [0, 1]})
    for results in (tmp_path / "a", tmp_path / "b"):
        assert run("run", recipe, "--results", results, "--quiet").exit_code == 0
    first, second = trial_files(tmp_path / "a" / "seeds"), trial_files(tmp_path / "b" / "seeds")
    assert sorted(first) == ["dpo-b0.1-lr0.001-s0", "dpo-b0.1-lr0.001-s1"]
    for trial_id in first:
        for key in ("objective", "kl_to_sft", "judge_score_mean", "length_mean"):
            assert first[trial_id][key] == second[trial_id][key], (trial_id, key)
        assert first[trial_id]["train"]["loss"] == second[trial_id]["train"]["loss"]


@pytest.mark.parametrize("strategy", ["random", "tpe"])
def test_random_and_tpe_sweeps_run_n_trials_per_method(inputs, tmp_path, strategy):
    methods = {
        "dpo": {"beta": {"low": 0.05, "high": 0.5, "log": True}, "learning_rate": [1e-3]},
        "simpo": {"beta": {"low": 1.0, "high": 4.0}, "learning_rate": [1e-3]},
    }
    recipe = write_recipe(
        inputs,
        strategy,
        methods,
        search={"strategy": strategy, "n_trials": 2},
        train={"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 48},
    )
    assert run("run", recipe, "--results", tmp_path, "--quiet").exit_code == 0
    metrics = trial_files(tmp_path / strategy)
    assert len(metrics) == 4 and all(m["state"] == "complete" for m in metrics.values())
    assert sorted(m.split("-")[0] for m in metrics) == ["dpo", "dpo", "simpo", "simpo"]
    meta = json.loads((tmp_path / strategy / "sweep.json").read_text())
    assert sorted(meta["planned_trials"]) == sorted(metrics)
    betas = [
        json.loads((tmp_path / strategy / "trials" / t / "params.json").read_text())["params"]["beta"]
        for t in metrics
        if t.startswith("dpo")
    ]
    assert all(0.05 <= b <= 0.5 for b in betas) and betas[0] != betas[1]
    assert "4 done, 0 to run" in run("run", recipe, "--results", tmp_path, "--quiet").output


def _wait_for_running_trial(
    sweep: Path, process: subprocess.Popen, timeout: float = 120, done: int = 0
) -> None:
    """Block until trial `done + 1` is mid-flight: `done` trials have metrics.json, one more has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = list(sweep.glob("trials/*/params.json"))
        finished = list(sweep.glob("trials/*/metrics.json"))
        if len(finished) == done and len(started) > done:  # the rest of the sweep is still ahead
            return
        assert process.poll() is None, "posweep run ended before a trial started"
        time.sleep(0.05)
    raise AssertionError("no trial started in time")


def start_run(recipe: Path, results: Path) -> subprocess.Popen:
    """`posweep run` as a terminal starts it: SIGINT at its default even if this test runs in the
    background (a shell without job control starts background jobs with SIGINT ignored, and Python
    installs no KeyboardInterrupt handler when it starts with SIGINT ignored). Its faulthandler prints
    every thread's stack on SIGABRT (`_exit_code` sends it to a run that does not stop)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-X",
            "faulthandler",
            "-m",
            "sweep",
            "run",
            str(recipe),
            "--results",
            str(results),
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _exit_code(process: subprocess.Popen, timeout: float) -> int:
    """The run's exit code; a run still going after `timeout` fails the test with every thread's stack."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        output = process.communicate(timeout=30)[0].decode(errors="replace")
        raise AssertionError(
            f"posweep run did not stop in {timeout} s; its stacks:\n{output[-8000:]}"
        ) from None


def test_interrupted_sweep_completes_on_rerun_exactly_once(inputs, tmp_path):
    """Ctrl-C mid-sweep once one trial is complete, then a rerun: the complete trial is not claimed again
    nor its files touched (kill -9 at random moments: test_distributed's kill test)."""
    methods = {
        "dpo": {"beta": [0.1, 0.2, 0.3], "learning_rate": [1e-3]},
        "ipo": GRID["ipo"],
        "ln-dpo": GRID["ln-dpo"],
    }
    # trials long enough (most of a second each, warm after the preflight) that the signal, sent as soon
    # as the first trial starts, always lands before the sweep could have finished on a busy machine
    recipe = write_recipe(inputs, "killed", methods, train={"max_steps": 50, "max_length": 48})
    sweep = tmp_path / "killed"
    process = start_run(recipe, tmp_path)
    _wait_for_running_trial(sweep, process, done=1)
    process.send_signal(signal.SIGINT)
    code = _exit_code(process, 120)
    before = trial_files(sweep)
    assert code == 130, process.stdout.read().decode()
    assert "interrupted" in {m["state"] for m in before.values() if m}
    done_before = {t: m for t, m in before.items() if m and m["state"] == "complete"}
    claimed_before, files_before = claims(sweep), file_times(sweep, done_before)
    assert done_before and all(claimed_before[t] == 1 for t in done_before)
    result = run("run", recipe, "--results", tmp_path, "--quiet")
    assert result.exit_code == 0, result.output
    after = trial_files(sweep)
    assert sorted(after) == sorted(t.trial_id for t in plan_recipe(load_recipe(recipe)).trials)
    assert all(m["state"] == "complete" for m in after.values())
    claimed = claims(sweep)
    assert all(claimed[t] == 1 for t in done_before), ("a complete trial was claimed again", claimed)
    assert file_times(sweep, done_before) == files_before, "a complete trial's files were rewritten"
    assert max(m["attempt"] for m in after.values()) == 2


def test_keep_best_keeps_only_the_best_complete_trial(inputs, tmp_path):
    """`keep: best` is decided by the engine from the study: one model folder, the best trial's weights."""
    import torch
    from transformers import AutoModelForCausalLM

    methods = {"dpo": {"beta": [0.1], "learning_rate": [1e-6, 1e-7, 1e-2]}}
    recipe = write_recipe(inputs, "keep", methods, execution={"keep": "best"})
    sweep = tmp_path / "keep"
    for finished in (1, 2, 3):
        result = run("run", recipe, "--results", tmp_path, "--quiet", "--max-trials", "1")
        assert result.exit_code == 0, result.output
        metrics = {k: v for k, v in trial_files(sweep).items() if v and v["state"] == "complete"}
        assert len(metrics) == finished
        best = max(metrics, key=lambda trial_id: metrics[trial_id]["objective"])
        kept = [path.parent.name for path in (sweep / "trials").glob("*/model")]
        assert kept == [best], (kept, metrics)
    model = AutoModelForCausalLM.from_pretrained(sweep / "trials" / best / "model")
    sft = AutoModelForCausalLM.from_pretrained(inputs / "model")
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), sft.parameters(), strict=True))


def test_sigterm_mid_trial_exits_143_marks_it_interrupted_and_a_rerun_trains_only_it(inputs, tmp_path):
    """What SLURM sends on preemption, at the time limit and on scancel, to a real `posweep run`."""
    methods = {"dpo": {"beta": [0.1, 0.2], "learning_rate": [1e-3]}}
    recipe = write_recipe(inputs, "term", methods, train={"max_steps": 40, "max_length": 48})
    sweep = tmp_path / "term"
    first = run("run", recipe, "--results", tmp_path, "--quiet", "--max-trials", "1")
    assert first.exit_code == 0, first.output
    (done,) = [t for t, m in trial_files(sweep).items() if m and m["state"] == "complete"]
    stamp = (sweep / "trials" / done / "metrics.json").stat().st_mtime_ns
    process = start_run(recipe, tmp_path)
    deadline = time.monotonic() + 120
    while not [p for p in sweep.glob("trials/*/params.json") if p.parent.name != done]:
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
        time.sleep(0.05)
    (victim,) = [p.parent.name for p in sweep.glob("trials/*/params.json") if p.parent.name != done]
    time.sleep(0.5)  # into training
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = _exit_code(process, 60)
    stop_s = time.monotonic() - signalled
    output = process.stdout.read().decode()
    assert code == 143, output
    assert stop_s < 10, f"SIGTERM took {stop_s:.1f} s to stop the run"
    assert "terminated (SIGTERM)" in output
    interrupted = trial_files(sweep)[victim]
    assert interrupted["state"] == "interrupted" and interrupted["objective"] is None
    status = run("status", sweep)
    assert status.exit_code == 0 and "1 complete, 1 interrupted of 2 planned" in status.output
    assert re.search(rf"{re.escape(victim)}\s+dpo\s+interrupted", status.output), status.output
    again = run("run", recipe, "--results", tmp_path, "--quiet")
    assert again.exit_code == 0, again.output
    assert "1 done, 1 to run" in again.output
    assert re.findall(r"^\[\d/2\] (\S+)  complete", again.output, re.MULTILINE) == [victim]
    assert (sweep / "trials" / done / "metrics.json").stat().st_mtime_ns == stamp
    after = trial_files(sweep)[victim]
    assert after["state"] == "complete" and after["attempt"] == 2, "an interrupted trial is not a failure"
    print(f"SIGTERM: exit 143 after {stop_s:.2f} s")
