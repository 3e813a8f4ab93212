"""The preflight: sweep-dooming mistakes exit 2 in seconds with one line naming the field, writing nothing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny import CHAT_TEMPLATE, save_dir, tiny_causal_lm, tiny_reward_model, tiny_tokenizer
from typer.testing import CliRunner

from sweep.cli import app
from sweep.spec.recipe import EvalSpec

WORDS = ["hello", "world", "good", "bad", "cat", "dog", "red", "blue", "tell", "me", "about", "the", "a"]
N_TRAIN, N_EVAL = 8, 4
JUDGES = """
def good(prompts, responses):
    return [float(len(r)) for r in responses]

def short(prompts, responses):
    return [1.0]

def nan(prompts, responses):
    return [float("nan")] * len(responses)

def text(prompts, responses):
    return ["high"] * len(responses)

def scalar(prompts, responses):
    return 3.0

def boom(prompts, responses):
    raise RuntimeError("the judge server is down")
"""


def _pair(index: int) -> dict:
    animal = ("cat", "dog")[index % 2]
    return {
        "prompt": [{"role": "user", "content": f"tell me about the {animal}"}],
        "chosen": [{"role": "assistant", "content": f"good {animal}"}],
        "rejected": [{"role": "assistant", "content": f"bad {WORDS[index]}"}],
    }


def _lines(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A tiny chat policy, a plain-tokenizer copy, a reward model, data files and judge modules."""
    folder = tmp_path_factory.mktemp("preflight")
    tokenizer = tiny_tokenizer(WORDS, chat_template=CHAT_TEMPLATE)
    save_dir(folder / "model", tiny_causal_lm(tokenizer), tokenizer)
    plain = tiny_tokenizer(WORDS)
    save_dir(folder / "plain-model", tiny_causal_lm(plain), plain)
    save_dir(folder / "rm", tiny_reward_model(tokenizer, seed=1), tokenizer)
    save_dir(folder / "two-label-rm", tiny_reward_model(tokenizer, num_labels=2), tokenizer)
    _lines(folder / "train.jsonl", [_pair(i) for i in range(N_TRAIN)])
    eval_rows = [{"q": [{"role": "user", "content": "tell me about a red dog"}], "a": "good"}] * N_EVAL
    _lines(folder / "eval.jsonl", eval_rows)
    (folder / "pf_judges.py").write_text(JUDGES)
    (folder / "pf_broken.py").write_text("def good(prompts, responses) return []\n")
    return folder


def recipe(inputs: Path, **changes) -> dict:
    """The tiny recipe; `changes` maps dotted paths to new values."""
    data = {
        "name": "pf",
        "model": str(inputs / "model"),
        "data": {
            "train": {"path": str(inputs / "train.jsonl")},
            "eval": {"path": str(inputs / "eval.jsonl"), "columns": {"prompt": "q", "reference": "a"}},
        },
        "judge": {"reward_model": str(inputs / "rm")},
        "methods": {"dpo": {"beta": [0.1], "learning_rate": [1e-3]}},
        "train": {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 32},
        "eval": {"max_new_tokens": 4, "batch_size": 4, "bootstrap": 20},
    }
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[last] = value
    return data


def invoke(inputs: Path, tmp_path: Path, data: dict, *extra: str):
    """`posweep run` in-process from the inputs folder (callable judges import from there)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(inputs)
    try:
        started = time.perf_counter()
        result = CliRunner().invoke(
            app, ["run", str(path), "--results", str(tmp_path / "results"), "-q", *extra]
        )
        return result, time.perf_counter() - started
    finally:
        os.chdir(cwd)


def _broken_line(inputs: Path, tmp_path: Path) -> str:
    path = _lines(tmp_path / "pairs.jsonl", [_pair(i) for i in range(5)])
    path.write_text(path.read_text() + '{"prompt": oops}\n')
    return str(path)


def _empty(inputs: Path, tmp_path: Path) -> str:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    return str(tmp_path / "empty.jsonl")


def _rows(rows):
    def write(inputs: Path, tmp_path: Path) -> str:
        return str(_lines(tmp_path / "rows.jsonl", rows))

    return write


def _folder_named_like_a_file(inputs: Path, tmp_path: Path) -> str:
    (tmp_path / "dir.jsonl").mkdir()
    return str(tmp_path / "dir.jsonl")


def _broken_config(inputs: Path, tmp_path: Path) -> str:
    folder = tmp_path / "broken-model"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    return str(folder)


NO_REJECTED = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}]
NULL_FIELD = [
    {"prompt": "a", "chosen": "b", "rejected": "c"},
    {"prompt": "a", "chosen": None, "rejected": "c"},
]
MIXED = [{"prompt": "a", "chosen": "b", "rejected": "c"}, _pair(0)]
MISTAKES = {
    "judge module missing": ({"judge": {"callable": "pf_nowhere:good"}}, r"judge\.callable: .*pf_nowhere"),
    "judge function missing": ({"judge": {"callable": "pf_judges:absent"}}, r"judge\.callable: .*absent"),
    "judge module broken": ({"judge": {"callable": "pf_broken:good"}}, r"judge\.callable: .*SyntaxError"),
    "judge wrong count": (
        {"judge": {"callable": "pf_judges:short"}},
        r"judge\.callable: .*returned 1 scores",
    ),
    "judge NaN": ({"judge": {"callable": "pf_judges:nan"}}, r"judge\.callable: .*not a finite number"),
    "judge strings": ({"judge": {"callable": "pf_judges:text"}}, r"judge\.callable: .*'high', not a finite"),
    "judge scalar": ({"judge": {"callable": "pf_judges:scalar"}}, r"judge\.callable: .*expected a list"),
    "judge raises": (
        {"judge": {"callable": "pf_judges:boom"}},
        r"judge\.callable: .*RuntimeError: the judge",
    ),
    "second judge raises": (
        {"judge": [{"callable": "pf_judges:good"}, {"callable": "pf_judges:boom"}]},
        r"judge\[1\]\.callable: judge boom",
    ),
    "reward model not a sequence classifier": (
        {"judge": {"reward_model": "MODEL"}},
        r"judge\.reward_model: .*",
    ),
    "reward model with two labels": (
        {"judge": {"reward_model": "INPUTS/two-label-rm"}},
        r"judge\.reward_model: .*num_labels=2",
    ),
    "no chat template for conversational data": (
        {"model": "INPUTS/plain-model"},
        r"model\.path: .*chat template",
    ),
    "tokenizer without chat template": (
        {"model": {"path": "MODEL", "tokenizer": "INPUTS/plain-model"}},
        r"model\.tokenizer: .*no chat template",
    ),
    "model config broken": ({"model": _broken_config}, r"model\.path: "),
    "eval prompts column missing": (
        {"data.eval.columns": {"prompt": "question"}},
        r"data\.eval\.columns\.prompt",
    ),
    "eval reference column missing": (
        {"data.eval.columns": {"prompt": "q", "reference": "answer"}},
        r"data\.eval\.columns\.reference",
    ),
    "train file empty": ({"data.train.path": _empty}, r"data\.train: .* has no rows"),
    "train JSON broken on line 6": (
        {"data.train.path": _broken_line},
        r"data\.train\.path: .*pairs\.jsonl: cannot read data: line 6: invalid JSON",
    ),
    "train column missing": (
        {"data.train.path": _rows(NO_REJECTED)},
        r"data\.train\.columns\.rejected: .*line 2",
    ),
    "train null field": ({"data.train.path": _rows(NULL_FIELD)}, r"data\.train: row 1: .*'chosen'.*NoneType"),
    "train mixed formats": ({"data.train.path": _rows(MIXED)}, r"data\.train: row 1: .*rows\.jsonl line 2"),
    "conversational eval prompts for plain training pairs": (
        {"data.train.path": _rows([{"prompt": "tell me", "chosen": " good", "rejected": " bad"}] * 4)},
        r"data\.eval: the evaluation prompts are conversations .* training pairs are plain text",
    ),
    "train path is a folder": (
        {"data.train.path": _folder_named_like_a_file},
        r"data\.train: cannot load dataset .*dir\.jsonl",
    ),
    "storage unreachable": (
        {"execution": {"storage": "postgresql://posweep:s3cret@127.0.0.1:9/none"}},
        r"execution\.storage: storage postgresql://posweep:\*\*\*@",
    ),
    "storage variable unset": ({"execution": {"storage": "env:POSWEEP_PF_UNSET"}}, r"execution\.storage: .*"),
}


def _resolve(value, inputs: Path, tmp_path: Path):
    if callable(value):
        return value(inputs, tmp_path)
    if isinstance(value, str):
        return value.replace("INPUTS", str(inputs)).replace("MODEL", str(inputs / "model"))
    if isinstance(value, dict):
        return {key: _resolve(item, inputs, tmp_path) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, inputs, tmp_path) for item in value]
    return value


def assert_refused(result, seconds: float, tmp_path: Path, pattern: str) -> None:
    """Exit 2, one line naming the field, no results folder at all (nothing was written)."""
    import re

    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("preflight: ")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == lines[0]
    assert re.search(r"^error: " + pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output and "s3cret" not in result.output
    assert not (tmp_path / "results").exists(), list((tmp_path / "results").rglob("*"))
    print(f"refused in {seconds:.1f} s: {lines[0][:150]}")


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_sweep_dooming_mistake_exits_2_before_anything_is_written(inputs, tmp_path, mistake):
    changes, pattern = MISTAKES[mistake]
    data = recipe(inputs, **{key: _resolve(value, inputs, tmp_path) for key, value in changes.items()})
    result, seconds = invoke(inputs, tmp_path, data)
    assert_refused(result, seconds, tmp_path, pattern)


@contextlib.contextmanager
def mounted(folder: Path, options: str):
    """A tmpfs at `folder` (root only); skip the test where mounting is not possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited or read-only tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ("ro,size=4m", r"--results: cannot write in .*Read-only"),
        ("size=256k", r"--results: cannot write 1 MiB"),
    ],
    ids=["read-only", "full"],
)
def test_an_unwritable_or_full_results_folder_exits_2(inputs, tmp_path, options, pattern):
    with mounted(tmp_path / "disk", options) as disk:
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(inputs), sort_keys=False))
        result = CliRunner().invoke(app, ["run", str(path), "--results", str(disk / "results"), "-q"])
        assert result.exit_code == 2, result.output
        assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1
        assert __import__("re").search(pattern, result.stderr), result.stderr
        assert not (disk / "results").exists()


def test_results_path_that_is_a_file_exits_2(inputs, tmp_path):
    (tmp_path / "results").write_text("not a folder")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(inputs), sort_keys=False))
    result = CliRunner().invoke(app, ["run", str(path), "--results", str(tmp_path / "results"), "-q"])
    assert result.exit_code == 2 and "--results: " in result.stderr and "is not a folder" in result.stderr
    assert (tmp_path / "results").read_text() == "not a folder"


def test_a_bad_recipe_never_touches_an_existing_sweep(inputs, tmp_path):
    """A failure on a second run leaves the first sweep's files exactly as they were."""
    sweep = tmp_path / "results" / "pf"
    sweep.mkdir(parents=True)
    (sweep / "keep.txt").write_text("mine")
    data = recipe(inputs, judge={"callable": "pf_judges:nan"})
    result, _ = invoke(inputs, tmp_path, data)
    assert result.exit_code == 2
    assert sorted(p.name for p in sweep.iterdir()) == ["keep.txt"]


def test_validate_deep_reports_counts_and_size_and_writes_nothing(inputs, tmp_path):
    path = tmp_path / "recipe.yaml"
    data = recipe(
        inputs, methods={"dpo": {"beta": [0.1, 0.2]}, "kto": {"beta": [0.1]}, "simpo": {"beta": [2.0]}}
    )
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["validate", "--deep", str(path), "--results", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"data.train: {N_TRAIN} pairs; data.eval: {N_EVAL} prompts, with references" in out
    assert f"4 trials, {4 * 2} optimizer steps in all" in out
    kl = N_EVAL * EvalSpec().kl_samples  # greedy decoding: KL on eval.kl_samples extra samples per prompt
    assert f"{N_EVAL + kl} generations per trial ({4 * (N_EVAL + kl)} in all)" in out
    assert "DPOTrainer" in out and "KTOTrainer" in out and "CPOTrainer" in out and "prompt_ids" in out
    assert f"SFT baseline generated: {N_EVAL} responses; judges: rm mean" in out
    assert out.strip().endswith(f"{path}: ok (4 trials, grid)")
    assert not (tmp_path / "r").exists()


def test_run_hands_the_preflight_baseline_to_the_sweep(inputs, tmp_path):
    """The SFT baseline the preflight generated is the one the trials reuse (not generated again); a run's
    only worker is the preflight's, loaded once, and the sets it tokenized are in the sweep's cache."""
    result, _ = invoke(inputs, tmp_path, recipe(inputs, **{"train.max_steps": 1}))
    assert result.exit_code == 0, result.output
    assert "preflight: SFT baseline generated" in result.output
    assert "worker: the preflight's model, data, tokenized training sets, judges and SFT baseline reused" in (
        result.output
    )
    assert "SFT baseline: generated" not in result.output and "SFT baseline: reused" not in result.output
    prepared = tmp_path / "results" / "pf" / "cache" / "prepared"
    assert len([p for p in prepared.iterdir() if p.is_dir()]) == 1  # the DPO trainer's tokenized pairs
    again, _ = invoke(inputs, tmp_path, recipe(inputs, **{"train.max_steps": 1}))
    assert again.exit_code == 0 and "preflight: SFT baseline reused" in again.output
    assert "1 done, 0 to run" in again.output


def test_run_help_documents_the_exit_codes():
    result = subprocess.run(
        [sys.executable, "-m", "sweep", "run", "--help"], capture_output=True, text=True, check=True
    )
    text = " ".join(result.stdout.split())
    assert "Exit codes: 0 every planned trial ended complete, diverged or pruned; 1 at least one" in text
    assert "2 bad input" in text and "130 Ctrl-C; 143 SIGTERM" in text


def test_validate_deep_refuses_a_bad_judge_with_the_field(inputs, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(inputs, judge={"callable": "pf_judges:short"}), sort_keys=False))
    cwd = os.getcwd()
    os.chdir(inputs)
    try:
        result = CliRunner().invoke(app, ["validate", "--deep", str(path), "--results", str(tmp_path / "r")])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == f"{path}: error: judge.callable: judge short: returned 1 scores for 4 responses"
    )
    assert not (tmp_path / "r").exists()


def test_removed_on_failure_removes_only_what_the_block_created(tmp_path):
    from sweep.engine.folder import removed_on_failure

    (tmp_path / "results" / "old").mkdir(parents=True)
    target = tmp_path / "results" / "new" / "sweep"
    with pytest.raises(RuntimeError), removed_on_failure(target):
        (target / "trials").mkdir(parents=True)
        raise RuntimeError("open failed")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["old"]
    with pytest.raises(RuntimeError), removed_on_failure(tmp_path / "results" / "old"):
        (tmp_path / "results" / "old" / "file").write_text("x")
        raise RuntimeError("open failed")
    assert (tmp_path / "results" / "old" / "file").exists(), "an existing folder is never removed"


@pytest.mark.parametrize(
    ("cores", "devices", "hint", "threads"),
    [
        (2, ["cpu", "cpu"], "2 CPU workers share 2 cores", 1),
        (4, ["cpu"] * 3, "3 CPU workers share 4 cores", 1),
        (2, ["cpu"], None, 1),
        (16, ["cpu", "cpu"], None, 8),
        (2, ["cuda", "cuda"], None, 1),
    ],
)
def test_more_cpu_workers_than_pay_get_a_one_line_hint_and_threads_are_shared_beyond_few_cores(
    monkeypatch, cores, devices, hint, threads
):
    from sweep.engine import preflight

    monkeypatch.setattr(preflight, "cpu_cores", lambda: cores)
    said = preflight.workers_hint([{"POSWEEP_DEVICE": device} for device in devices])
    assert (said is None) == (hint is None), said
    if hint is not None:
        assert said.startswith("preflight: hint: " + hint) and "\n" not in said
    assert preflight.cpu_threads(len(devices)) == threads
