"""A tuning study killed mid-trial and resumed equals an uninterrupted one (mtl_suite/tuning/resume.py), shown with
a fake objective and pure Optuna on a journal file: no TensorFlow, a second or so. The real command is killed and
resumed in tests/integration/test_tune.py and benchmarks/faults_study.py."""

import math
import os
import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from mtl_suite.tuning.optuna_private import bracket_as_optuna_asks, storage_of, study_id, trial_id
from mtl_suite.tuning.resume import (
    FAILED_TRIAL, NO_SLOT, OWNER_ATTR, SLOT_ATTR, STOPPED_ATTR, SlotHyperbandPruner, SlotSeededSampler,
    owner_is_dead, owner_of, recover_dead_trials, repair_journal, retry_trial, this_owner,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TARGET = 8


def tpe(seed):
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)  # model-based draws after 3 trials


PRUNERS = {"none": optuna.pruners.NopPruner,
           "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2),
           "hyperband": lambda: SlotHyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)}


def draw(trial):
    return (trial.suggest_float("lr", 1e-4, 1e-1, log=True), trial.suggest_int("units", 8, 64),
            trial.suggest_categorical("aug", ["none", "paper"]))


def objective(trial):
    lr, units, aug = draw(trial)
    value = -abs(math.log10(lr) + 2.5) + units / 64 + (0.2 if aug == "paper" else 0.0)
    for step in range(9):
        trial.report(value * (step + 1) / 9, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def new_study(path, pruner):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.create_study(study_name="s", storage=storage, direction="maximize", load_if_exists=True,
                               sampler=SlotSeededSampler(tpe, 42), pruner=PRUNERS[pruner]())


def run_to_target(study):
    finished = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    study.optimize(objective, n_trials=TARGET - finished,
                   callbacks=[optuna.study.MaxTrialsCallback(TARGET, states=FINISHED)])


def by_slot(study):
    return [(t.system_attrs[SLOT_ATTR], t.params, t.state.name, t.value)
            for t in sorted((t for t in study.trials if t.state in FINISHED), key=lambda t: t.system_attrs[SLOT_ATTR])]


def dead_owner():
    """This host, this pid, another start time: a pid that now belongs to another process."""
    return owner_of(os.getpid()).rsplit(":", 1)[0] + ":1"


@pytest.mark.parametrize("pruner", ["none", "median", "hyperband"])
def test_a_killed_and_resumed_study_equals_an_uninterrupted_one(tmp_path, pruner):
    uninterrupted = new_study(tmp_path / "a.log", pruner)
    run_to_target(uninterrupted)

    crashed = new_study(tmp_path / "b.log", pruner)
    crashed.optimize(objective, n_trials=4)
    # the worker dies mid-trial: its trial (slot 4) has drawn and reported, and is left RUNNING
    killed = crashed.ask()
    draw(killed)
    killed.report(0.1, 0)
    storage_of(crashed).set_trial_system_attr(trial_id(killed), OWNER_ATTR, dead_owner())
    # a second worker died between creating its trial and recording it: no owner, no slot, nothing drawn
    storage_of(crashed).create_new_trial(study_id(crashed))

    resumed = new_study(tmp_path / "b.log", pruner)  # the same command again, in a new process
    retries = []
    failed = recover_dead_trials(resumed, lambda study, trial: retries.append(retry_trial(study, trial, 1)),
                                 ownerless_grace_s=0.0, wait=True)
    assert failed == [killed.number, killed.number + 1]
    assert len(retries) == 2 and retries[1] is None  # the ownerless trial drew nothing: no retry
    retry = retries[0]
    assert retry.state == TrialState.WAITING and retry.params == killed.params
    assert retry.system_attrs[SLOT_ATTR] == 4 and retry.system_attrs[FAILED_TRIAL] == killed.number
    # not judged by the dead worker once popped
    assert OWNER_ATTR not in retry.system_attrs and STOPPED_ATTR not in retry.system_attrs
    run_to_target(resumed)

    states = [t.state for t in resumed.trials]
    assert states[killed.number:killed.number + 2] == [TrialState.FAIL, TrialState.FAIL]
    assert resumed.trials[killed.number + 1].system_attrs[SLOT_ATTR] == NO_SLOT
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert by_slot(resumed) == by_slot(uninterrupted)  # same configurations, values and prunings, slot by slot
    assert len(by_slot(resumed)) == TARGET
    if pruner == "hyperband":
        hb = resumed.pruner
        assert bracket_as_optuna_asks(hb, resumed, resumed.trials[killed.number]) == \
            bracket_as_optuna_asks(hb, resumed, resumed.trials[retry.number])
    # the slot-4 trial of the uninterrupted study had the parameters the killed trial drew
    assert by_slot(uninterrupted)[4][1] == killed.params


def test_a_second_worker_draws_other_parameters(tmp_path):
    """Two trials running at once take slots 0 and 1, so the second worker does not repeat the first's draw; the
    second draw is the one a single worker makes for its second trial."""
    single = new_study(tmp_path / "single.log", "none")
    single.optimize(objective, n_trials=2)
    shared = new_study(tmp_path / "shared.log", "none")
    first, second = shared.ask(), new_study(tmp_path / "shared.log", "none").ask()
    draw(first), draw(second)
    assert [t.system_attrs[SLOT_ATTR] for t in shared.trials] == [0, 1]
    assert first.params != second.params
    assert [first.params, second.params] == [t.params for t in single.trials]


def test_retry_is_queued_once_and_within_max_retry(tmp_path):
    study = new_study(tmp_path / "r.log", "none")
    trial = study.ask()
    draw(trial)
    frozen = storage_of(study).get_trial(trial_id(trial))
    assert retry_trial(study, frozen, 1) is not None
    assert retry_trial(study, frozen, 1) is None  # already queued: an interrupt and a recovery may both ask
    study.tell(trial, state=TrialState.FAIL)
    again = study.ask()  # the retry, popped
    assert again.params == trial.params
    study.tell(again, state=TrialState.FAIL)
    assert retry_trial(study, storage_of(study).get_trial(trial_id(again)), 1) is None  # one retry allowed
    assert retry_trial(study, storage_of(study).get_trial(trial_id(again)), 2) is not None
    assert retry_trial(study, frozen, 0) is None


def test_owner_is_dead_only_for_this_hosts_gone_processes():
    assert not owner_is_dead(this_owner())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = owner_of(child.pid)
    child.wait()
    assert owner_is_dead(owner)
    assert owner_is_dead(dead_owner())  # pid reused by a process started at another time
    assert owner_is_dead(f"{socket.gethostname()}:{child.pid}")  # the `worker` user attribute of older studies
    assert not owner_is_dead(f"another-host-{socket.gethostname()}:{child.pid}:1")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        zombie_owner = owner_of(zombie.pid)
        while open(f"/proc/{zombie.pid}/stat").read().split(")")[-1].split()[0] != "Z":
            time.sleep(0.01)  # exited, not yet reaped: a killed worker whose parent has not waited for it
        assert owner_is_dead(zombie_owner)
    finally:
        zombie.wait()


def test_a_torn_last_journal_record_is_dropped(tmp_path):
    path = tmp_path / "j.log"
    study = new_study(path, "none")
    study.optimize(objective, n_trials=1)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":4,"worker_id":"x","trial_id":0,"st')  # power loss mid-write
    assert repair_journal(path) and path.read_bytes() == whole
    assert not repair_journal(path)
    resumed = new_study(path, "none")
    resumed.optimize(objective, n_trials=1)
    assert [t.state for t in new_study(path, "none").trials] == [TrialState.COMPLETE] * 2
