"""Workers started together on a new study: the one whose create_study made it opens the study's MLflow run, the
others wait for that run's id (bounded), and stop waiting at once when no opener is recorded or it is dead."""

from __future__ import annotations

import threading
import time

import optuna

from mtl_suite.tuning.optuna_engine import OPENER_ATTR, open_study, wait_for_study_run
from mtl_suite.tuning.resume import this_owner


def storage():
    return optuna.storages.InMemoryStorage()


def test_only_the_creator_is_the_founder():
    shared = storage()
    first, founder = open_study("s", shared, "maximize", optuna.pruners.NopPruner(), optuna.samplers.RandomSampler())
    second, other = open_study("s", shared, "maximize", optuna.pruners.NopPruner(), optuna.samplers.RandomSampler())
    assert (founder, other) == (True, False) and first._study_id == second._study_id
    assert first.user_attrs[OPENER_ATTR] == this_owner()


def test_a_joining_worker_waits_for_the_founders_run():
    study, _ = open_study("s", storage(), "maximize", optuna.pruners.NopPruner(), optuna.samplers.RandomSampler())
    threading.Timer(1.0, lambda: study.set_user_attr("mlflow_run_id", "abc")).start()
    said = []
    started = time.monotonic()
    assert wait_for_study_run(study, said.append, timeout_s=30) == "abc"
    assert 0.9 < time.monotonic() - started < 10 and len(said) == 1 and "waiting" in said[0]


def test_no_wait_without_a_live_opener():
    study = optuna.create_study(storage=storage())  # made before openers were recorded
    started = time.monotonic()
    assert wait_for_study_run(study, lambda m: None, timeout_s=30) is None
    study.set_user_attr(OPENER_ATTR, f"{this_owner().split(':')[0]}:999999999:1")  # this host, no such process
    assert wait_for_study_run(study, lambda m: None, timeout_s=30) is None
    assert time.monotonic() - started < 5
