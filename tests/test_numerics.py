"""Training numerics: TR-* reference updates as published, the tau warning, divergence at any step."""

import copy
import math

import pytest
import torch
from test_trial import make_worker, model_dir, plain_pairs, spec  # noqa: F401 (model_dir is a fixture)
from transformers import TrainerCallback

from sweep.io import read_json
from sweep.spec.methods import get_method
from sweep.train.callback import TrialCallback
from sweep.train.trial import Worker

pytestmark = pytest.mark.slow


class Snapshots(TrainerCallback):
    """The policy's and the reference's weights after every optimizer step."""

    def __init__(self, reference):
        self.reference = reference
        self.policy_at: dict[int, list[torch.Tensor]] = {}
        self.reference_at: dict[int, list[torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.policy_at[state.global_step] = [p.detach().clone() for p in model.parameters()]
        self.reference_at[state.global_step] = [p.detach().clone() for p in self.reference.parameters()]


def test_tr_dpo_mixes_the_reference_every_tau_steps(model_dir, tmp_path):  # noqa: F811
    worker = make_worker(model_dir, tmp_path, train={"max_steps": 16})
    method, trial = get_method("tr-dpo"), spec("tr", "tr-dpo", alpha=0.6, tau=4)
    policy = copy.deepcopy(worker.sft).float().requires_grad_(True).train()
    reference = copy.deepcopy(worker.sft).float()
    start = [p.detach().clone() for p in reference.parameters()]
    callback = TrialCallback(lambda record: None, None, None, None)
    trainer = worker._trainer(trial, method, policy, reference, tmp_path / "scratch", callback)
    snapshots = Snapshots(trainer.ref_model)
    trainer.add_callback(snapshots)
    assert trainer.train().global_step == 16
    changed = [
        step
        for step in range(1, 17)
        if any(
            not torch.equal(now, before)
            for now, before in zip(snapshots.reference_at[step], snapshots.reference_at.get(step - 1, start))
        )
    ]
    assert changed == [4, 8, 12, 16], "the reference must move exactly every tau steps"
    expected = start
    for step in changed:
        expected = [0.6 * p + 0.4 * r for p, r in zip(snapshots.policy_at[step], expected, strict=True)]
        for got, want in zip(snapshots.reference_at[step], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    hard = [0.6 * p + 0.4 * r for p, r in zip(snapshots.policy_at[16], start, strict=True)]
    assert not all(torch.allclose(a, b) for a, b in zip(hard, expected, strict=True)), "updates must compound"


def test_tau_past_the_trial_s_steps_warns_and_notes_it(model_dir, tmp_path):  # noqa: F811
    worker = make_worker(model_dir, tmp_path)
    result = worker.run(spec("tr-512", "tr-dpo", tau=512))
    assert result.state == "complete"
    notes = read_json(worker.trial_dir("tr-512") / "params.json")["notes"]
    assert len(notes) == 1 and "tau (512) >= the trial's 4 optimizer steps" in notes[0]
    assert any("warning" in line and "tr-512" in line for line in worker.messages)
    worker.run(spec("tr-2", "tr-dpo", tau=2))
    assert "notes" not in read_json(worker.trial_dir("tr-2") / "params.json")


class Poison(TrainerCallback):
    """Puts a NaN into the policy's weights at one step's beginning or end."""

    def __init__(self, step: int, at: str):
        self.step, self.at = step, at

    def _poison(self, state, model):
        if state.global_step + (self.at == "begin") == self.step:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = math.nan

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.at == "begin":
            self._poison(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.at == "end":
            self._poison(state, model)


@pytest.mark.parametrize(("at", "kind"), [("begin", "NonFiniteLoss"), ("end", "NonFiniteWeights")])
def test_divergence_between_logged_steps_is_seen(model_dir, tmp_path, monkeypatch, at, kind):  # noqa: F811
    build = Worker._trainer

    def poisoned(self, *args, **kwargs):
        trainer = build(self, *args, **kwargs)
        trainer.add_callback(Poison(4, at))
        return trainer

    monkeypatch.setattr(Worker, "_trainer", poisoned)
    worker = make_worker(model_dir, tmp_path, pairs=plain_pairs(), train={"logging_steps": 100})
    result = worker.run(spec(f"nan-{at}", "dpo"))
    assert result.state == "diverged", result
    assert result.error["type"] == kind
    assert result.metrics["train"]["steps"] == 4
