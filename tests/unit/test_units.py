"""Units of work shared through the Optuna storage (tuning/units.py), without training: dependencies, failures,
bad input that stops every worker, a dead worker's unit redone once, duplicates standing down, rounds."""

from __future__ import annotations

import socket
import subprocess
import sys

import optuna
import pytest

from mtl_suite.catalog import (
    PROMOTE_STEP, REPORT_STEP, Unit, assessment_units, comparison_units, training_units, unit_member,
)
from mtl_suite.errors import UserError
from mtl_suite.tuning.optuna_private import storage_of, trial_id
from mtl_suite.tuning.resume import OWNER_ATTR
from mtl_suite.tuning.units import (
    BLOCKED, DONE, DUPLICATE_ATTR, FAILED, INDEX_ATTR, KEY_ATTR, RUNNING, UNIT_MAX, UNIT_PARAM, WAITING, BoardView,
    UnitBoard, UnitStatus, run_result, unit_index,
)

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

CHAIN = [Unit("report", -1, REPORT_STEP, after=("a", "b1", "b2"), despite_failures=True, every_round=True),
         Unit("a", 0, "classical"), Unit("b1", 0, "stage1"), Unit("b2", 0, "stage2", after=("b1",))]


def recorder(order: list[str], fail: tuple[str, ...] = ()):
    def run(unit, view, tag):
        order.append(unit.key)
        if unit.key in fail:
            return {"failure": f"{unit.key} failed"}
        for key in unit.after:  # a unit starts only once what it comes after is settled
            assert view.statuses[key].state in (DONE, FAILED, BLOCKED)
        return {"run_id": f"run-{unit.key}"}
    return run


def test_comparison_units_are_the_catalogs_chain():
    units = comparison_units(2)
    assert units[0].key == REPORT_STEP and set(units[0].after) == {u.key for u in units[1:]}
    assert [u.key for u in units[1:5]] == ["pair0/ctl/classical", "pair0/mtl/stage1", "pair0/mtl/stage2",
                                           "pair0/mtl/stage3"]
    assert units[3].after == ("pair0/mtl/stage1",) and units[4].after == ("pair0/mtl/stage2",)
    assert [u.key for u in comparison_units(3)[:9]] == [u.key for u in units]  # more pairs: appended


def test_assessment_units_chain_the_members_as_train_does_then_the_ensemble_and_wait_for_every_split():
    """The first member's chain; a later member trains only its final stage, from the first member's stage 2 (as
    `train`'s later members start from the stage-2 run its first member made)."""
    units = {u.key: u for u in assessment_units((1000, 1001), 2, "stage3")}
    assert units["split1000/m1/stage2"].after == ("split1000/m1/stage1",) and units["split1000/m1/stage1"].after == ()
    assert units["split1000/m2/stage3"].after == ("split1000/m1/stage2",)
    assert not {"split1000/m2/stage1", "split1000/m2/stage2"} & set(units)
    assert units["split1001/ensemble"].after == ("split1001/m1/stage3", "split1001/m2/stage3")
    assert units[REPORT_STEP].after == ("split1000/ensemble", "split1001/ensemble")
    assert not units[REPORT_STEP].despite_failures  # every split's figures, or no report
    alone = assessment_units((1000, 1001), 1, "classical")
    assert [u.key for u in alone] == [REPORT_STEP, "split1000/m1/classical", "split1001/m1/classical"]
    pair = {u.key: u for u in assessment_units((1000,), 2, "classical")}  # one stage: nothing to share
    assert pair["split1000/m2/classical"].after == () and pair["split1000/ensemble"].after == (
        "split1000/m1/classical", "split1000/m2/classical")


def test_training_units_are_one_split_of_an_assessment_then_the_promotion_of_its_final_run():
    """`train --storage`: the same chain as an assessment's split (later members from the first member's stage 2),
    the promotion first in the list (units are only ever appended) and after the final run, redone by every new
    command as a rerun of `train` promotes again."""
    units = {u.key: u for u in training_units(3, "stage3")}
    assert list(units) == [PROMOTE_STEP, "m1/stage1", "m1/stage2", "m1/stage3", "m2/stage3", "m3/stage3", "ensemble"]
    assert units["m2/stage3"].after == units["m3/stage3"].after == ("m1/stage2",)
    assert units["ensemble"].after == ("m1/stage3", "m2/stage3", "m3/stage3")
    assert units[PROMOTE_STEP].after == ("ensemble",) and units[PROMOTE_STEP].every_round
    split = [u.key.removeprefix("split7/") for u in assessment_units((7,), 3, "stage3")[1:]]
    assert split == list(units)[1:]
    alone = training_units(1, "classical")
    assert [(u.key, u.after) for u in alone] == [(PROMOTE_STEP, ("m1/classical",)), ("m1/classical", ())]
    assert [unit_member(k) for k in ("m1/stage1", "m3/stage3", "split7/m2/stage3", "ensemble", "split7/ensemble")
            ] == [0, 2, 1, None, None]


def test_one_worker_in_order_runs_the_list_depth_first():
    """Alone and in_order (an assessment without a storage): split by split, as before it had units."""
    units = assessment_units((1000, 1001), 1, "stage2")
    order: list[str] = []
    assert _opened(UnitBoard("work", units, None, in_order=True)).work(recorder(order)).settled
    assert order == ["split1000/m1/stage1", "split1000/m1/stage2", "split1001/m1/stage1", "split1001/m1/stage2",
                     REPORT_STEP]


def test_one_process_runs_every_unit_in_dependency_order():
    order: list[str] = []
    board = UnitBoard("work", CHAIN, None)
    assert board.open()
    view = board.work(recorder(order))
    assert order == ["a", "b1", "b2", "report"] and view.settled
    assert view.statuses["b2"].results == {"run_id": "run-b2"} and view.statuses["b2"].seconds is not None


def test_a_failed_unit_blocks_what_comes_after_it_but_not_the_report():
    order: list[str] = []
    view = _opened(UnitBoard("work", CHAIN, None)).work(recorder(order, fail=("b1",)))
    assert order == ["a", "b1", "report"]
    assert [view.statuses[k].state for k in ("a", "b1", "b2", "report")] == [DONE, FAILED, BLOCKED, DONE]
    assert "b1 failed" in view.statuses["b2"].note


def test_bad_input_stops_every_worker_with_the_same_line(tmp_path):
    journal = str(tmp_path / "units.log")

    def bad(unit, view, tag):
        raise UserError("--data /nope: no such folder")

    with pytest.raises(UserError, match="no such folder"):
        _opened(UnitBoard("work", CHAIN, journal)).work(bad)
    other = _opened(UnitBoard("work", CHAIN, journal))
    with pytest.raises(UserError, match=r"^--data /nope: no such folder$"):
        other.work(recorder([]))
    other.new_round()  # the next command on the same work starts afresh
    assert other.work(recorder([])).settled


def test_a_dead_workers_unit_is_closed_and_redone_once(tmp_path):
    """A claim whose worker process is gone (as after SIGKILL): the next worker fails it, closes what it opened
    (on_dead) and runs the unit again; the unit completes exactly once."""
    journal = str(tmp_path / "units.log")
    board = _opened(UnitBoard("work", CHAIN, journal))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    worker = f"{socket.gethostname()}:{int(dead.stdout)}"
    board.study.enqueue_trial({UNIT_PARAM: 1}, user_attrs={KEY_ATTR: "a", INDEX_ATTR: 1})
    trial = board.study.ask()  # the dead worker's claim of unit "a"
    trial.suggest_int(UNIT_PARAM, 0, UNIT_MAX)
    trial.set_user_attr("worker", worker)
    storage_of(board.study).set_trial_system_attr(trial_id(trial), OWNER_ATTR, f"{worker}:1")
    closed, order = [], []
    survivor = _opened(UnitBoard("work", CHAIN, journal,
                                 on_dead=lambda key, worker, since, note: closed.append((key, worker))))
    view = survivor.work(recorder(order))
    assert closed == [("a", worker)]
    assert sorted(order) == ["a", "b1", "b2", "report"]
    completes = [t for t in survivor.study.trials if t.state.name == "COMPLETE" and unit_index(t) == 1]
    assert len(completes) == 1 and view.statuses["a"].state == DONE
    assert [t.state.name for t in survivor.study.trials if t.number == trial.number] == ["FAIL"]


def test_a_unit_queued_twice_runs_once(tmp_path):
    board = _opened(UnitBoard("work", CHAIN, str(tmp_path / "units.log")))
    for _ in range(2):  # two workers that both found "a" ready
        board.study.enqueue_trial({UNIT_PARAM: 1}, user_attrs={KEY_ATTR: "a", INDEX_ATTR: 1})
    order: list[str] = []
    board.work(recorder(order))
    assert order.count("a") == 1
    stood_down = [t for t in board.study.trials if t.state.name == "PRUNED"]
    assert len(stood_down) == 1 and DUPLICATE_ATTR in stood_down[0].user_attrs


def test_a_new_round_retries_failures_and_redoes_the_report(tmp_path):
    journal = str(tmp_path / "units.log")
    order: list[str] = []
    _opened(UnitBoard("work", CHAIN, journal)).work(recorder(order, fail=("b1",)))
    board = _opened(UnitBoard("work", CHAIN, journal))
    assert board.view().settled  # a worker joining a settled round has nothing to do
    board.new_round()
    order.clear()
    view = board.work(recorder(order))
    assert order == ["b1", "b2", "report"] and all(s.state == DONE for s in view.statuses.values())


def _opened(board: UnitBoard) -> UnitBoard:
    board.open()
    return board


@pytest.fixture(autouse=True)
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    yield
    optuna.logging.set_verbosity(level)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_a_claim_without_heartbeats_is_failed_through_the_storages_callback(tmp_path):
    """A worker on another host (its process cannot be checked from here) that stops sending heartbeats: the RDB
    storage's stale-trial callback closes what it opened and queues its unit again."""
    url = f"sqlite:///{tmp_path}/units.db"
    board = _opened(UnitBoard("work", CHAIN, url, heartbeat_interval=1, grace_period=2))
    board.study.enqueue_trial({UNIT_PARAM: 1}, user_attrs={KEY_ATTR: "a", INDEX_ATTR: 1})
    trial = board.study.ask()
    trial.suggest_int(UNIT_PARAM, 0, UNIT_MAX)
    trial.set_user_attr("worker", "elsewhere:4242")
    storage_of(board.study).record_heartbeat(trial_id(trial))  # its last sign of life
    closed, order = [], []
    survivor = _opened(UnitBoard("work", CHAIN, url, heartbeat_interval=1, grace_period=2,
                                 on_dead=lambda key, worker, since, note: closed.append((key, worker, note))))
    survivor.work(recorder(order), poll_s=0.2)
    assert closed == [("a", "elsewhere:4242", "its worker stopped sending heartbeats")]
    assert sorted(order) == ["a", "b1", "b2", "report"]


def test_a_worker_waits_for_what_the_studys_maker_shares(tmp_path):
    """The worker that made the study shares a fact (the command's MLflow run) once it has it; another worker
    waits for it, and gets None when it never comes (its maker died first)."""
    import threading

    journal = str(tmp_path / "units.log")
    maker, said = _opened(UnitBoard("work", CHAIN, journal)), []
    other = _opened(UnitBoard("work", CHAIN, journal, say=said.append))
    assert maker.created and not other.created
    assert maker.awaited("run", "the run") is None  # the maker never waits: it makes the fact
    assert other.awaited("run", "the run", timeout_s=0.6) is None
    threading.Timer(0.3, maker.share, ("run", "run-1")).start()
    assert other.awaited("run", "the run", timeout_s=30) == "run-1"
    assert said and "waiting for the worker that made the study work to open the run" in said[0]
    assert _opened(UnitBoard("alone", CHAIN, None)).awaited("run", "the run") is None  # one worker never waits


def test_the_time_left_comes_from_units_that_did_their_work_not_from_reused_ones():
    """A resumed command finds earlier units finished in seconds: averaged in, they would promise an end far too
    soon."""
    stage = [Unit(f"s{i}", i, "stage3") for i in range(4)]
    view = BoardView({
        "s0": UnitStatus(stage[0], DONE, run_result("r0", reused=True), seconds=2.0),
        "s1": UnitStatus(stage[1], DONE, run_result("r1"), seconds=3600.0),
        "s2": UnitStatus(stage[2], RUNNING, worker="host:1"),
        "s3": UnitStatus(stage[3], WAITING),
    })
    assert view.seconds_left() == 7200.0  # two unsettled units of an hour each, one worker
    view.statuses["s1"] = UnitStatus(stage[1], DONE, run_result("r1", reused=True), seconds=1.0)
    assert view.seconds_left() is None  # nothing done here yet says what a unit costs
