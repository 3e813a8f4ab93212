"""Stops are not lost: a Ctrl-C or SIGTERM that a library swallows still ends the trial as interrupted."""

from __future__ import annotations

import contextlib
import os
import signal

import datasets
import pytest
from datasets.fingerprint import Hasher, update_fingerprint
from test_engine import inputs, run, trial_files, write_recipe

from sweep.signals import EXIT_TERMINATED, Terminated, exit_code, graceful_stops, raise_if_stopped

__all__ = ["inputs"]  # the engine tests' module fixture (tiny model, reward model, data), used here too


def _swallowing(signum: int) -> None:
    """What datasets' fingerprinting does to a stop that lands in it: a bare `except:` that carries on."""
    with contextlib.suppress(BaseException):
        os.kill(os.getpid(), signum)


def test_a_swallowed_ctrl_c_is_raised_again_at_the_next_checkpoint_and_forgotten_after_the_run():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with graceful_stops():
        raise_if_stopped()  # nothing arrived yet
        _swallowing(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt) as raised:
            raise_if_stopped()
        assert not isinstance(raised.value, Terminated) and exit_code(raised.value) == 130
    raise_if_stopped()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_swallowed_sigterm_is_raised_again_as_terminated_and_a_second_one_is_ignored():
    before = signal.getsignal(signal.SIGTERM)
    with graceful_stops():
        _swallowing(signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the run is already stopping
        with pytest.raises(Terminated) as raised:
            raise_if_stopped()
        assert exit_code(raised.value) == EXIT_TERMINATED
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_process_started_with_ctrl_c_ignored_keeps_ignoring_it():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with graceful_stops():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_inside_fingerprinting(monkeypatch, when) -> list[str]:
    """Send this process a Ctrl-C from inside datasets' hashing of a `map` transform, once `when()` holds."""
    fired: list[str] = []
    hash_value = Hasher.hash.__func__

    def hashing(cls, value):
        if not fired and not isinstance(value, str) and when():
            fired.append(type(value).__name__)
            os.kill(os.getpid(), signal.SIGINT)
        return hash_value(cls, value)

    monkeypatch.setattr(Hasher, "hash", classmethod(hashing))
    return fired


def test_datasets_still_swallows_a_ctrl_c_raised_while_it_fingerprints_a_transform(monkeypatch):
    """The premise of the checkpoints: if datasets stops swallowing it, the stop simply arrives earlier."""
    fired = _interrupt_inside_fingerprinting(monkeypatch, lambda: True)
    with graceful_stops():
        fingerprint = update_fingerprint("base", datasets.Dataset.map, {"function": len})
        assert fired and len(fingerprint) > 0
        with pytest.raises(KeyboardInterrupt):
            raise_if_stopped()


def test_ctrl_c_while_trl_prepares_the_data_ends_the_trial_interrupted(inputs, tmp_path, monkeypatch):
    """The real case: the Ctrl-C lands in TRL's tokenization `map` of the first trial, and datasets swallows
    it; the trial still ends `interrupted` (exit 130), no later trial starts, and a rerun completes both."""
    methods = {"dpo": {"beta": [0.1, 0.2], "learning_rate": [1e-3]}}
    recipe = write_recipe(inputs, "swallowed", methods)
    sweep = tmp_path / "swallowed"
    fired = _interrupt_inside_fingerprinting(monkeypatch, lambda: any(sweep.glob("trials/*/params.json")))
    result = run("run", recipe, "--results", tmp_path, "--quiet")
    assert fired, "no trial fingerprinted a transform: the planted Ctrl-C never fired"
    assert result.exit_code == 130, result.output
    states = {trial: metrics["state"] for trial, metrics in trial_files(sweep).items()}
    assert states == {"dpo-b0.1-lr0.001-s0": "interrupted"}
    monkeypatch.undo()
    assert run("run", recipe, "--results", tmp_path, "--quiet").exit_code == 0
    assert {m["state"] for m in trial_files(sweep).values()} == {"complete"}
    assert len(trial_files(sweep)) == 2


def test_a_sigterm_that_a_library_turns_into_an_error_of_its_own_ends_the_trial_interrupted(
    inputs, tmp_path, monkeypatch
):
    """A stop landing in a library that raises something else instead (seen as a flaky `failed` trial
    under `--workers 2`): the trial is recorded interrupted, not failed, the run exits 143, and a rerun
    retrains it and completes."""
    import transformers

    methods = {"dpo": {"beta": [0.1], "learning_rate": [1e-3]}}
    recipe = write_recipe(inputs, "converted", methods)
    sweep = tmp_path / "converted"
    step = transformers.Trainer.training_step

    def converting(self, *args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt as error:
            raise RuntimeError("the library's own error") from error
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", converting)
    result = run("run", recipe, "--results", tmp_path, "--quiet")
    assert result.exit_code == EXIT_TERMINATED, result.output
    assert {t: m["state"] for t, m in trial_files(sweep).items()} == {"dpo-b0.1-lr0.001-s0": "interrupted"}
    monkeypatch.undo()
    assert run("run", recipe, "--results", tmp_path, "--quiet").exit_code == 0
    assert {m["state"] for m in trial_files(sweep).values()} == {"complete"}
