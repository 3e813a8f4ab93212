"""`posweep export`: a trial as a standalone Hugging Face folder that generates what was evaluated."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_engine import inputs, run, write_recipe  # noqa: F401  (the module-scoped tiny inputs)
from transformers import AutoModelForCausalLM, AutoTokenizer

from sweep.results import SweepFolder

pytestmark = pytest.mark.slow


def greedy(folder, prompt) -> str:
    """A response from the exported folder the way any transformers user would get one."""
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**encoded)
    return tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)


def weights(folder) -> dict[str, torch.Tensor]:
    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(path).items()}


def test_export_best_generates_the_recorded_responses_and_a_retrain_reproduces_its_weights(
    inputs,  # noqa: F811
    tmp_path,
):
    methods = {"dpo": {"beta": [0.1, 0.5], "learning_rate": [1e-2]}}
    recipe = write_recipe(inputs, "export", methods, execution={"keep": "best"})
    assert run("run", recipe, "--results", tmp_path, "--quiet").exit_code == 0
    sweep = tmp_path / "export"
    objectives = {
        path.parent.name: json.loads(path.read_text())["objective"]
        for path in sweep.glob("trials/*/metrics.json")
    }
    best = max(sorted(objectives), key=objectives.get)
    result = run("export", sweep, "--best", "--out", tmp_path / "kept")
    assert result.exit_code == 0, result.output
    assert f"exported {best} (rank 1 of 2, kept weights)" in result.output
    samples = [s for s in SweepFolder(sweep).trial(best).read_samples() if s["sample"] == 0][:3]
    assert len(samples) == 3 and any(s["response"] for s in samples)
    for sample in samples:
        assert greedy(tmp_path / "kept", sample["prompt"]) == sample["response"], sample["prompt_index"]
    card = (tmp_path / "kept" / "README.md").read_text()
    metrics = json.loads((sweep / "trials" / best / "metrics.json").read_text())
    low, high = metrics["win_rate_vs_sft_ci"]
    assert f"# {best}" in card and "Rank **1 of 2**" in card and "| beta |" in card
    assert f"| win_rate_vs_sft | {metrics['win_rate_vs_sft']:.4g} | [{low:.4g}, {high:.4g}] |" in card
    assert "weights the sweep kept" in card and "seed: 0" in card

    shutil.rmtree(sweep / "trials" / best / "model")
    result = run("export", sweep, "--trial", best, "--out", tmp_path / "retrained")
    assert result.exit_code == 0, result.output
    assert (
        "retrained" in result.output and "retrained it" in (tmp_path / "retrained" / "README.md").read_text()
    )
    kept, retrained = weights(tmp_path / "kept"), weights(tmp_path / "retrained")
    assert kept.keys() == retrained.keys() and kept
    assert all(torch.equal(kept[name], retrained[name]) for name in kept)
    sft = weights(inputs / "model")
    assert any(not torch.equal(sft[name], kept[name]) for name in sft if name in kept), (
        "export is the SFT model"
    )
    assert not list(tmp_path.glob(".retrained*")), "the scratch retraining folder was left behind"
    for args, message in [
        (["--best", "--out", tmp_path / "kept"], "already exists"),
        (["--out", tmp_path / "new"], "exactly one of --best or --trial"),
        (["--trial", "dpo-nope", "--out", tmp_path / "new"], "no trial 'dpo-nope'"),
        (["--trial", best, "--adapter", "--out", tmp_path / "new"], "has no LoRA adapter"),
    ]:
        result = run("export", sweep, *args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "new").exists()


def test_export_of_a_folder_that_is_no_sweep_is_refused(tmp_path):
    result = run("export", tmp_path, "--best", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "not a sweep folder" in result.output, result.output
