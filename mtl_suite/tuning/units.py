"""A heavy command's units of work (catalog.Unit), shared by any number of workers through the Optuna storage the
team already runs: one study per piece of work, one trial per claim of a unit.

Why trials: the storage already does what sharing work needs, and the suite already runs it for `tune`. A unit is
an enqueued trial (its place in the command's list as the fixed parameter `unit`); a worker claims one with
`study.optimize(n_trials=1)`, which pops the oldest waiting trial atomically (RDB: SELECT ... FOR UPDATE; journal:
under its lock) and keeps a heartbeat while the unit runs. A worker that dies stops its heartbeats: the next worker
that looks fails the trial through the storage's stale-trial callback, which closes what the unit had opened
(`on_dead`) and queues the same unit again (tuning/resume.py:retry_trial, at most `max_retry` times). On one host a
dead worker is seen at once by its process id, as tuning does (journal storages have no heartbeats). No new
server, no new table: a PostgreSQL `optuna` database, a journal file for workers on one machine, or memory for one
process.

A unit is queued only once the units it comes `after` are settled, so dependencies need no locks. Whoever settles
a unit queues the ones it freed; any worker that finds a unit ready but not queued (its freer died between the two)
queues it. Two workers doing so at once queue it twice: the claim that finds an older live or finished claim of the
same unit stands down (PRUNED, `duplicate_of`), so no unit runs twice to completion.

Rounds: a command rerun on settled work (to retry failed units, or with more units) starts a new round: units
that failed in an earlier round are tried again, `every_round` units (a report) are redone, finished units stand.

Pure Optuna: what a unit does, and the MLflow runs it opens, belong to the caller (`run_unit`, `on_dead`)."""

from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from mtl_suite.catalog import Unit, UnitSharing
from mtl_suite.errors import UserError
from mtl_suite.tuning.optuna_private import heartbeat_enabled, storage_of, stored_trial, trial_id
from mtl_suite.tuning.resume import (
    OWNER_ATTR, OWNERLESS_GRACE_S, SLOT_ATTR, STOPPED_ATTR, recover_dead_trials, retry_trial, this_owner,
)

UNIT_PARAM = "unit"  # the unit's place in its command's list: the trial's only parameter
UNIT_MAX = 1_000_000
KEY_ATTR, INDEX_ATTR, WORKER_ATTR, ROUND_ATTR = "unit", "unit_index", "worker", "round"
ERROR_ATTR = "error"  # a unit stopped by bad input: the one line every worker stops with
DUPLICATE_ATTR = "duplicate_of"  # a claim that stood down for an older claim of the same unit
RESULT_PREFIX = "result:"  # what the unit returned, one user attribute per key
REUSED = "reused"  # a result key: the unit found its work finished earlier, so its time says nothing of a unit's cost
STOP_ATTR = "mtl_suite:stop"  # study: the one-line error that stops every worker
ROUND_KEY = "mtl_suite:round"  # study: the current round

DONE, FAILED, BLOCKED = "done", "failed", "blocked"  # settled
RUNNING, WAITING, READY, PENDING = "running", "waiting", "ready", "pending"  # claimed, queued, to queue, not yet
SETTLED = (DONE, FAILED, BLOCKED)
SHARED_WAIT_S = 60.0  # how long a worker waits for the worker that made the study to share a fact (UnitBoard.awaited)


@dataclass
class UnitStatus:
    unit: Unit
    state: str
    results: dict[str, Any] = field(default_factory=dict)  # the finished claim's (DONE, or FAILED by the unit)
    worker: str = ""  # host:pid of the claim running it
    seconds: float | None = None  # how long the finished claim took
    deaths: int = 0  # claims of this round whose worker died
    note: str = ""  # why FAILED or BLOCKED, when the unit itself did not say


@dataclass
class BoardView:
    statuses: dict[str, UnitStatus]

    def count(self, *states: str) -> int:
        return sum(s.state in states for s in self.statuses.values())

    @property
    def settled(self) -> bool:
        return all(s.state in SETTLED for s in self.statuses.values())

    def workers(self) -> list[str]:
        return sorted({s.worker for s in self.statuses.values() if s.state == RUNNING and s.worker})

    def seconds_left(self) -> float | None:
        """Unsettled units times the mean time a finished unit of the same step took (any step's mean where one has
        none yet; units that reused earlier work do not count), over the workers now running units; None before any
        unit did its work."""
        times: dict[str, list[float]] = {}
        for s in self.statuses.values():
            if s.seconds is not None and not s.results.get(REUSED):
                times.setdefault(s.unit.step, []).append(s.seconds)
        if not times:
            return None
        every = [t for values in times.values() for t in values]
        fallback = sum(every) / len(every)
        left = sum(sum(times[s.unit.step]) / len(times[s.unit.step]) if s.unit.step in times else fallback
                   for s in self.statuses.values() if s.state not in SETTLED)
        return left / max(1, len(self.workers()))

    def summary(self) -> str:
        """'7 of 9 units done, 1 running (host:pid), 1 waiting, about 3 min left'."""
        running = self.workers()
        parts = [f"{self.count(*SETTLED)} of {len(self.statuses)} units settled"]
        failed = self.count(FAILED, BLOCKED)
        if failed:
            parts.append(f"{failed} failed or blocked")
        if running:
            parts.append(f"{self.count(RUNNING)} running ({', '.join(running)})")
        waiting = self.count(WAITING, READY, PENDING)
        if waiting:
            parts.append(f"{waiting} waiting")
        left = self.seconds_left()
        if left is not None and not self.settled:
            parts.append(f"about {_duration(left)} left")
        return ", ".join(parts)


RunUnit = Callable[[Unit, BoardView, str], dict[str, Any]]  # (unit, the board now, its claim's tag) -> results


def run_result(run_id: str, reused: bool = False) -> dict[str, str]:
    """The results of a unit that made, or found finished (`reused`), the run `run_id`."""
    return {"run_id": run_id, REUSED: "1"} if reused else {"run_id": run_id}


class UnitBoard:
    """The units of one piece of work in the storage at `url` (None: in this process's memory, for one worker)."""

    def __init__(self, name: str, units: Sequence[Unit], url: str | None, *, heartbeat_interval: int = 10,
                 grace_period: int | None = None, max_retry: int = 3,
                 on_dead: Callable[[str, str, datetime | None, str], None] = lambda key, worker, since, note: None,
                 say: Callable[[str], None] = print, in_order: bool = False):
        self.name, self.units, self.url = name, list(units), url
        # one worker alone (no storage) runs the first ready unit of the list each time: an assessment split by
        # split, member by member, as it ran before it had units (shared units are claimed oldest-queued first)
        self.in_order = in_order
        self.index = {unit.key: i for i, unit in enumerate(self.units)}
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry
        # on_dead(unit key, its worker's host:pid, when the claim started, why): close what the dead claim opened
        self.on_dead, self.say = on_dead, say
        self.study: optuna.Study | None = None
        self.created = False

    @classmethod
    def for_sharing(cls, name: str, units: Sequence[Unit], sharing: UnitSharing, **options: Any) -> "UnitBoard":
        """The board of a command's units where `sharing` says (its storage, heartbeats and retries)."""
        return cls(name, units, sharing.storage, heartbeat_interval=sharing.heartbeat_interval,
                   grace_period=sharing.grace_period, max_retry=sharing.max_retry, **options)

    # --- the study -------------------------------------------------------------------------------------------

    def open(self) -> bool:
        """Create or load the work's study; True when this worker created it (exactly one worker does)."""
        from mtl_suite.tuning.optuna_engine import open_storage

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed claim is reported once, by the command
        storage = (optuna.storages.InMemoryStorage() if self.url is None else
                   open_storage(self.url, self.heartbeat_interval, self.grace_period, self._stale))
        sampler = optuna.samplers.RandomSampler(seed=0)  # never draws: every claim's parameter is fixed
        try:
            self.study = optuna.create_study(study_name=self.name, storage=storage, sampler=sampler)
            self.created = True
        except optuna.exceptions.DuplicatedStudyError:
            self.study = optuna.load_study(study_name=self.name, storage=storage, sampler=sampler)
        return self.created

    def use(self, units: Sequence[Unit]) -> None:
        """More units for the same work (a comparison given more pairs): appended, so earlier ones keep their place."""
        assert [u.key for u in units[:len(self.units)]] == [u.key for u in self.units[:len(units)]], "units appended"
        self.units = list(units)
        self.index = {unit.key: i for i, unit in enumerate(self.units)}

    @property
    def shared_by_workers(self) -> bool:
        return self.url is not None

    def shared(self, key: str) -> Any:
        """A fact every worker of this work reads (the study's user attribute)."""
        return self.study.user_attrs.get(key)

    def share(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def awaited(self, key: str, what: str, timeout_s: float = SHARED_WAIT_S) -> Any:
        """A fact the worker that made the study shares once it has it (e.g. the MLflow run it opens, `what` in the
        progress line): at once for that worker or a worker alone; another waits for it, up to `timeout_s`, and gets
        None if it never comes (that worker died first: the caller then makes the fact itself)."""
        value = self.shared(key)
        if value is not None or not self.shared_by_workers or self.created:
            return value
        self.say(f"waiting for the worker that made the study {self.name} to open {what}")
        deadline = time.monotonic() + timeout_s
        while value is None and time.monotonic() < deadline:
            time.sleep(0.5)
            value = self.shared(key)
        return value

    def round(self) -> int:
        return int(self.shared(ROUND_KEY) or 0)

    def new_round(self) -> None:
        """A new command on this work: failed units are tried again, `every_round` units redone."""
        self.share(ROUND_KEY, self.round() + 1)
        self.share(STOP_ATTR, "")

    def tag(self, number: int) -> str:
        """Names one claim, for the runs it opens: `<study>#<trial number>`."""
        return f"{self.name}#{number}"

    # --- what every unit is at now ----------------------------------------------------------------------------

    def view(self) -> BoardView:
        current = self.round()
        claims: dict[int, list[FrozenTrial]] = {}
        for trial in self.study.get_trials(deepcopy=False):
            index = unit_index(trial)
            if index is not None and trial.state != TrialState.PRUNED:
                claims.setdefault(index, []).append(trial)
        statuses: dict[str, UnitStatus] = {}
        for i, unit in enumerate(self.units):
            statuses[unit.key] = self._status(unit, claims.get(i, []), current)
        for unit in self.units:  # then what waits on whom
            self._resolve(unit, statuses, set())
        return BoardView(statuses)

    def _status(self, unit: Unit, trials: list[FrozenTrial], current: int) -> UnitStatus:
        def this_round(t: FrozenTrial) -> bool:
            return int(t.user_attrs.get(ROUND_ATTR, current)) == current

        for t in sorted(trials, key=lambda t: t.number):
            if t.state == TrialState.COMPLETE:
                results = {k[len(RESULT_PREFIX):]: v for k, v in t.user_attrs.items() if k.startswith(RESULT_PREFIX)}
                failed = bool(results.get("failure"))
                if (failed or unit.every_round) and not this_round(t):
                    continue  # an earlier round's: tried again
                return UnitStatus(unit, FAILED if failed else DONE, results, seconds=t.value)
        for state, name in ((TrialState.RUNNING, RUNNING), (TrialState.WAITING, WAITING)):
            live = [t for t in trials if t.state == state]
            if live:
                return UnitStatus(unit, name, worker=_host_pid(live[0].user_attrs.get(WORKER_ATTR, "")))
        deaths = [t for t in trials if t.state == TrialState.FAIL and this_round(t) and ERROR_ATTR not in t.user_attrs]
        if len(deaths) > self.max_retry:
            note = deaths[-1].system_attrs.get(STOPPED_ATTR) or "its worker stopped sending heartbeats"
            return UnitStatus(unit, FAILED, deaths=len(deaths),
                              note=f"its worker died {len(deaths)} times (last: {note}); not tried again")
        return UnitStatus(unit, PENDING, deaths=len(deaths))

    def _resolve(self, unit: Unit, statuses: dict[str, UnitStatus], seen: set[str]) -> str:
        status = statuses[unit.key]
        if status.state != PENDING or unit.key in seen:
            return status.state
        seen.add(unit.key)
        before = [self._resolve(self.units[self.index[key]], statuses, seen) for key in unit.after]
        if not unit.despite_failures and any(s in (FAILED, BLOCKED) for s in before):
            failed = [key for key, s in zip(unit.after, before) if s in (FAILED, BLOCKED)]
            status.state, status.note = BLOCKED, f"not run: {', '.join(failed)} failed"
        elif all(s in SETTLED for s in before):
            status.state = READY
        return status.state

    # --- working ----------------------------------------------------------------------------------------------

    def work(self, run_unit: RunUnit, on_progress: Callable[[BoardView], None] = lambda view: None,
             poll_s: float = 1.0) -> BoardView:
        """Claim and run units until every unit is settled (waiting, while others run the rest); the settled board.
        A unit stopped by bad input stops this worker and every other with its one-line error (UserError)."""
        shown = ""
        while True:
            self._check_stop()
            self._fail_dead()
            view = self.view()
            if view.settled:
                return view
            ready = [s for s in view.statuses.values() if s.state == READY]
            if self.in_order and not self.shared_by_workers:
                ready = ready[:1] if not view.count(WAITING) else []
            for status in ready:
                self.study.enqueue_trial({UNIT_PARAM: self.index[status.unit.key]},
                                         user_attrs={KEY_ATTR: status.unit.key,
                                                     INDEX_ATTR: self.index[status.unit.key]})
            if not self.shared_by_workers and not view.count(READY, WAITING):
                raise RuntimeError(f"nothing to run and nothing running, but unsettled units: {view.summary()}")
            if view.count(READY, WAITING):
                self.study.optimize(self._unit_objective(run_unit), n_trials=1)
                self._check_stop()
                view = self.view()
            elif view.summary() == shown:
                time.sleep(poll_s)  # the rest is running elsewhere
                continue
            shown = view.summary()
            on_progress(view)

    def _check_stop(self) -> None:
        message = self.shared(STOP_ATTR)
        if message:
            raise UserError(message)

    def _unit_objective(self, run_unit: RunUnit) -> Callable[[optuna.Trial], float]:
        def objective(trial: optuna.Trial) -> float:
            index = unit_index(stored_trial(trial))
            if index is None or index >= len(self.units):  # the queue emptied between the look and the claim
                trial.set_user_attr("idle", True)
                raise optuna.TrialPruned("no unit was waiting")
            trial.suggest_int(UNIT_PARAM, 0, UNIT_MAX)  # the fixed parameter becomes the trial's: a retry copies it
            unit = self.units[index]
            storage = storage_of(trial.study)
            storage.set_trial_system_attr(trial_id(trial), OWNER_ATTR, this_owner())  # a death seen by process id
            storage.set_trial_system_attr(trial_id(trial), SLOT_ATTR, index)  # a unit's slot: its place (retry_trial)
            trial.set_user_attr(KEY_ATTR, unit.key)
            trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
            trial.set_user_attr(ROUND_ATTR, self.round())
            older = self._claimed_elsewhere(unit, trial.number)
            if older is not None:
                trial.set_user_attr(DUPLICATE_ATTR, older)
                raise optuna.TrialPruned(f"unit {unit.key} already claimed by trial {older}")
            started = time.monotonic()
            try:
                results = run_unit(unit, self.view(), self.tag(trial.number))
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: another worker (or the next command) redoes the unit
                retry_trial(trial.study, stored_trial(trial), self.max_retry)
                raise
            except UserError as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                trial.set_user_attr(ERROR_ATTR, message)
                self.share(STOP_ATTR, message)
                raise
            for key, value in results.items():
                trial.set_user_attr(f"{RESULT_PREFIX}{key}", value)
            return time.monotonic() - started

        return objective

    def _claimed_elsewhere(self, unit: Unit, number: int) -> int | None:
        """An older live claim of the unit, or a finished one that stands this round (queued twice by a race)."""
        index, current = self.index[unit.key], self.round()
        for t in sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number):
            if t.number == number or unit_index(t) != index:
                continue
            if t.state == TrialState.RUNNING and t.number < number:
                return t.number
            if t.state == TrialState.COMPLETE and int(t.user_attrs.get(ROUND_ATTR, current)) == current:
                return t.number
        return None

    # --- dead workers -----------------------------------------------------------------------------------------

    def _fail_dead(self) -> None:
        """Fail the claims of dead workers: by heartbeat (RDB storages: any host), and on this host by process id
        (every storage: at once, and journal files have no heartbeats). One process alone has no one to wait for."""
        if not self.shared_by_workers:
            return
        storage = storage_of(self.study)
        if heartbeat_enabled(storage):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)  # calls _stale for each
        grace = None if heartbeat_enabled(storage) else OWNERLESS_GRACE_S
        recover_dead_trials(self.study, lambda study, trial: self._lost(study, trial,
                                                                       trial.system_attrs.get(STOPPED_ATTR, "")),
                            grace)

    def _stale(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """The RDB storage's stale-trial callback: a claim whose worker stopped sending heartbeats."""
        self._lost(study, trial, "its worker stopped sending heartbeats")

    def _lost(self, study: optuna.Study, trial: FrozenTrial, note: str) -> None:
        index = unit_index(trial)
        if index is None or index >= len(self.units):
            return
        key, worker = self.units[index].key, _host_pid(trial.user_attrs.get(WORKER_ATTR, ""))
        note = note or "its worker died"
        if worker:
            self.on_dead(key, worker, trial.datetime_start, note)
        again = retry_trial(study, trial, self.max_retry)
        self.say(f"unit {key} lost (claim {trial.number}: {note})"
                 + ("; queued again" if again is not None else ""))


def unit_index(trial: FrozenTrial) -> int | None:
    """Which unit a trial claims: its parameter once claimed (and in a retry), the enqueued attribute before."""
    value = trial.params.get(UNIT_PARAM, trial.user_attrs.get(INDEX_ATTR))
    return None if value is None else int(value)


def _host_pid(worker: str) -> str:
    return ":".join(worker.split(":")[:2])


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
