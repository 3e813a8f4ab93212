"""Contract tests of sweep.engine.internals: each Optuna and submitit private attribute it relies on.

Each test checks the behaviour posweep needs through the public API, so a library release that moves or
changes an attribute fails here, naming it, before a sweep claims a trial twice or loses a requeue.
"""

import signal

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep.engine import internals

VERSIONS = f"optuna {optuna.__version__}"


def journal_study(tmp_path, name="s"):
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "study.journal")))
    return optuna.create_study(study_name=name, storage=storage)


def test_study_storage_and_id_are_what_the_public_api_reads(tmp_path):
    study = journal_study(tmp_path)
    storage = internals.study_storage(study)
    assert storage.get_study_id_from_name("s") == internals.study_id(study), VERSIONS
    assert storage.get_all_trials(internals.study_id(study)) == [], VERSIONS
    study.enqueue_trial({"x": 1.0})
    waiting = storage.get_all_trials(internals.study_id(study), states=(TrialState.WAITING,))
    assert [t.params for t in waiting] == [{}] and waiting[0].number == 0, VERSIONS


def test_trial_id_addresses_the_same_trial_frozen_and_live(tmp_path):
    study = journal_study(tmp_path)
    study.enqueue_trial({"x": 1.0})
    study.enqueue_trial({"x": 2.0})
    storage = internals.study_storage(study)
    frozen = storage.get_all_trials(internals.study_id(study))[1]
    assert storage.set_trial_state_values(internals.trial_id(frozen), state=TrialState.RUNNING), VERSIONS
    live = optuna.Trial(study, internals.trial_id(frozen))
    assert internals.trial_id(live) == internals.trial_id(frozen) and live.number == 1, VERSIONS
    assert live.suggest_float("x", 0, 5) == 2.0, VERSIONS
    # a second claim of the same trial is refused: what makes a claim atomic
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        study.tell(1, 1.0)
        storage.set_trial_state_values(internals.trial_id(frozen), state=TrialState.RUNNING)


def test_fixed_params_are_suggested_as_given_and_enqueued_ones_win(tmp_path):
    study = journal_study(tmp_path)
    study.enqueue_trial({"method": "dpo"})
    trial = study.ask()
    internals.fix_params(trial, {"method": "ipo", "dpo.beta": 0.25})
    assert trial.suggest_categorical("method", ["dpo", "ipo"]) == "dpo", VERSIONS
    assert trial.suggest_float("dpo.beta", 0.01, 1.0, log=True) == 0.25, VERSIONS
    study.tell(trial, 0.5)
    assert study.trials[0].params == {"method": "dpo", "dpo.beta": 0.25}, VERSIONS
    assert study.trials[0].distributions["dpo.beta"].log, VERSIONS


def test_storage_engine_is_none_for_a_journal_and_the_engine_for_a_database(tmp_path):
    study = journal_study(tmp_path)
    assert internals.storage_engine(internals.study_storage(study)) is None
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    database = optuna.create_study(study_name="d", storage=url)
    engine = internals.storage_engine(internals.study_storage(database))
    assert engine is not None and engine.dialect.name == "sqlite", VERSIONS
    assert str(engine.url) == url, VERSIONS


def test_submitit_requeue_signal_is_the_one_its_handler_is_installed_on(monkeypatch):
    submitit = pytest.importorskip("submitit")
    from submitit.core.job_environment import JobEnvironment
    from submitit.slurm.slurm import SlurmJobEnvironment

    assert internals.submitit_requeue_signal() == signal.SIGUSR2, submitit.__version__
    installed = []
    monkeypatch.setattr(JobEnvironment, "USR_SIG", "USR1")
    monkeypatch.setattr(signal, "signal", lambda number, handler: installed.append(number))
    SlurmJobEnvironment._handle_signals(object.__new__(SlurmJobEnvironment), [], [])
    assert internals.submitit_requeue_signal() == signal.SIGUSR1, submitit.__version__
    assert signal.SIGUSR1 in installed, submitit.__version__
