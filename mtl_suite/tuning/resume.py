"""What makes an Optuna study resumable after its worker is killed at any moment (SIGKILL, power loss), with the
same result as an uninterrupted study of the same seed. Pure Optuna (no TensorFlow, no MLflow), so it is tested
on its own.

Slots. Every trial holds a *slot* (a trial system attribute): the smallest one no other trial of the study holds.
A trial's draw comes from a sampler created afresh for it with a seed derived from (seed, slot)
(`SlotSeededSampler`), so it depends only on the seed, the slot and the finished trials the sampler reads, never on
how many processes or trials came before. A redone trial keeps its slot, so the trials after it draw what they
would have drawn without the kill. A second worker's trial takes the next free slot while the first one's trial
still runs, so two workers never draw from the same seed.

Owners. Before it draws, a trial records its worker as host:pid:start-time (`OWNER_ATTR`). A RUNNING trial whose
worker is dead on this host (no such pid, a zombie, or the pid now belongs to a process that started at another
time) is failed by the next command or worker on the host (`recover_dead_trials`) and queued again with the same
parameters and slot (`retry_trial`). Optuna's JournalStorage, the default storage, has no heartbeats (only
RDBStorage inherits BaseHeartbeat), so this is the only way a journal study learns of a dead worker; RDB storages
have both (heartbeats cover workers on other hosts).

Pruners. The median pruner compares against the complete trials only, so it decides a redone trial as it decided
the first try. Optuna's HyperbandPruner picks a trial's bracket from a hash of its *number*, and a redone trial has
a new number; `SlotHyperbandPruner` hashes the slot instead, so the redo lands in the same bracket (and its sampler
sees the same bracket's trials).
"""

from __future__ import annotations

import binascii
import hashlib
import os
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from mtl_suite.tuning.optuna_private import HyperbandBracketHook, storage_of, trial_id, unfiltered_study

SLOT_ATTR = "mtl_suite:slot"
OWNER_ATTR = "mtl_suite:worker"
STOPPED_ATTR = "mtl_suite:stopped"  # why recover_dead_trials failed the trial
NO_SLOT = -1  # a trial that died before it was given a slot: it drew nothing, so it holds none
# Optuna's own keys (RetryHeartbeatStaleTrialCallback.retried_trial_number / retry_history read them)
FAILED_TRIAL, RETRY_HISTORY = "failed_trial", "retry_history"
# A RUNNING trial gets its owner within milliseconds of being created; one without an owner for this long died
# before it got one (journal storages; RDB storages leave those to heartbeats).
OWNERLESS_GRACE_S = 30.0


# --- slots and seeds --------------------------------------------------------------------------------------------

def slot_seed(seed: int, slot: int) -> int:
    """A 32-bit seed for (study seed, slot), well mixed, so seeds 42 and 43 share no draws."""
    return int.from_bytes(hashlib.sha256(f"mtl-suite:{seed}:{slot}".encode()).digest()[:4], "little")


def assign_slot(trials: Iterable[FrozenTrial], trial: FrozenTrial) -> int:
    """The smallest slot no other trial holds. Trials that do not have one yet (just created by another worker,
    or made before slots existed) and are older than `trial` are counted as holding the next free slots, so two
    workers creating trials at the same moment still take different slots."""
    trials = list(trials)
    taken = {t.system_attrs[SLOT_ATTR] for t in trials if t.number != trial.number and SLOT_ATTR in t.system_attrs}
    for _ in (t for t in trials if t.number < trial.number and SLOT_ATTR not in t.system_attrs):
        taken.add(_next_free(taken))
    return _next_free(taken)


def slot_of(trial: FrozenTrial) -> int | None:
    slot = trial.system_attrs.get(SLOT_ATTR)
    return None if slot is None or slot < 0 else int(slot)


def _next_free(taken: set[int]) -> int:
    slot = 0
    while slot in taken:
        slot += 1
    return slot


class SlotSeededSampler(BaseSampler):
    """Wraps a sampler factory (seed -> sampler): each trial is drawn by `factory(slot_seed(seed, slot))`, created
    for that trial alone. Records the trial's owner and slot before anything is drawn."""

    def __init__(self, factory: Callable[[int], BaseSampler], seed: int):
        self.factory, self.seed = factory, seed
        self._samplers: dict[int, BaseSampler] = {}  # trial id -> its sampler, until after_trial

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        base = unfiltered_study(study)  # slots count the trials of every Hyperband bracket
        storage_of(base).set_trial_system_attr(trial_id(trial), OWNER_ATTR, this_owner())
        if SLOT_ATTR not in trial.system_attrs:  # a retried trial keeps the slot it copied
            slot = assign_slot(base.get_trials(deepcopy=False), trial)
            storage_of(base).set_trial_system_attr(trial_id(trial), SLOT_ATTR, slot)
            trial.system_attrs[SLOT_ATTR] = slot  # the Trial's own cached copy, read by the pruner
        self._sampler(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._sampler(trial).after_trial(study, trial, state, values)
        self._samplers.pop(trial_id(trial), None)

    def reseed_rng(self) -> None:
        pass  # every trial's seed is fixed by its slot; reseeding would break a resumed study's equality

    def _sampler(self, trial: FrozenTrial) -> BaseSampler:
        sampler = self._samplers.get(trial_id(trial))
        if sampler is None:
            slot = slot_of(trial)
            sampler = self.factory(slot_seed(self.seed, slot if slot is not None else trial.number))
            self._samplers[trial_id(trial)] = sampler
        return sampler


class SlotHyperbandPruner(HyperbandBracketHook):
    """HyperbandPruner with the bracket chosen by the trial's slot (Optuna hashes the trial number, which a redone
    trial does not keep). Optuna reaches `bracket_id` through optuna_private's hook; tests/unit/test_tune_resume.py
    checks it."""

    def bracket_id(self, study: Study, trial: FrozenTrial) -> int:
        if not self.brackets_ready():
            return 0  # as Optuna: no bracket before initialisation
        key = slot_of(trial)
        if key is None and trial.state in (TrialState.RUNNING, TrialState.WAITING) \
                and SLOT_ATTR not in trial.system_attrs:
            key = assign_slot(unfiltered_study(study).get_trials(deepcopy=False), trial)  # before before_trial
        if key is None:
            key = trial.number
        return self.bracket_of_hash(binascii.crc32(f"{study.study_name}_{key}".encode()))


# --- owners -----------------------------------------------------------------------------------------------------

def this_owner() -> str:
    return owner_of(os.getpid())


def owner_of(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def owner_is_dead(owner: str) -> bool:
    """True only when the owner is known dead: its host is this host and its process is gone, a zombie, or its
    pid now names a process that started at another time. Another host's worker is never judged here."""
    parts = owner.split(":")
    host, pid_text, started = (parts + ["", ""])[:3]  # host:pid:start, or host:pid (the `worker` user attribute)
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat is None:
        return False  # no /proc (not Linux): the pid exists, so alive as far as we can tell
    state, now_started = stat
    return state in ("Z", "X") or (bool(started) and started != now_started)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": field 3 (state) onwards
    return fields[0], fields[19]  # state, starttime (field 22, clock ticks since boot)


def _start_time(pid: int) -> str | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def trial_owner(trial: FrozenTrial) -> str | None:
    """The system attribute, else the `worker` user attribute (host:pid) of studies made before it."""
    return trial.system_attrs.get(OWNER_ATTR) or trial.user_attrs.get("worker")


# --- recovery ---------------------------------------------------------------------------------------------------

def retry_trial(study: Study, trial: FrozenTrial, max_retry: int | None) -> FrozenTrial | None:
    """Queue the trial again (WAITING) with its parameters and slot, as Optuna's RetryHeartbeatStaleTrialCallback
    does (same `failed_trial` / `retry_history` attributes), but without its user attributes (its MLflow run,
    its worker) and only once per failed trial, whoever calls. None when the retries are used up or it was
    already queued."""
    history = list(trial.system_attrs.get(RETRY_HISTORY, [])) + [trial.number]
    if max_retry is not None and len(history) > max_retry:
        return None
    if trial.system_attrs.get(SLOT_ATTR) == NO_SLOT or not trial.params:
        return None  # it drew nothing: the next new trial takes its place
    trials = study.get_trials(deepcopy=False)
    if any(t.system_attrs.get(RETRY_HISTORY, [])[-1:] == [trial.number] for t in trials):
        return None
    attrs = {k: v for k, v in trial.system_attrs.items() if k not in (OWNER_ATTR, STOPPED_ATTR)}
    attrs.update({FAILED_TRIAL: trial.system_attrs.get(FAILED_TRIAL, trial.number), RETRY_HISTORY: history})
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, system_attrs=attrs))
    return study.get_trials(deepcopy=False)[-1]


def recover_dead_trials(study: Study, on_dead: Callable[[Study, FrozenTrial], None],
                        ownerless_grace_s: float | None = OWNERLESS_GRACE_S, wait: bool = False) -> list[int]:
    """Fail the RUNNING trials whose worker is dead on this host (and, with `ownerless_grace_s`, those that never got
    an owner within that time), then call `on_dead(study, failed_trial)` for each this process failed (another
    worker failing the same trial at the same time wins or loses atomically). With `wait`, a trial too young to
    judge is waited for (at most `ownerless_grace_s`), so a command started right after a kill sees a settled
    study. Returns the failed trials' numbers."""
    storage = storage_of(study)
    deadline = time.monotonic() + (ownerless_grace_s or 0) + 1
    failed: list[int] = []
    while True:
        undecided = False
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = trial_owner(trial)
            if owner is None:
                if ownerless_grace_s is None:
                    continue
                started = trial.datetime_start or datetime.now()
                if (datetime.now() - started).total_seconds() < ownerless_grace_s:
                    undecided = True
                    continue
                note = "its worker died before the trial recorded it"
            elif owner_is_dead(owner):
                note = f"its worker {':'.join(owner.split(':')[:2])} died"
            else:
                continue
            done = _fail(storage, trial, note)
            if done is not None:
                failed.append(done.number)
                on_dead(study, done)
        if not (wait and undecided) or time.monotonic() > deadline:
            return failed
        time.sleep(0.5)


def _fail(storage: optuna.storages.BaseStorage, trial: FrozenTrial, note: str) -> FrozenTrial | None:
    try:
        storage.set_trial_system_attr(trial_id(trial), STOPPED_ATTR, note)
        if SLOT_ATTR not in trial.system_attrs:
            storage.set_trial_system_attr(trial_id(trial), SLOT_ATTR, NO_SLOT)
        if not storage.set_trial_state_values(trial_id(trial), TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None  # another worker failed (or the owner finished) it first
    return storage.get_trial(trial_id(trial))


# --- the journal file -------------------------------------------------------------------------------------------

def repair_journal(path: Path) -> bool:
    """Drop a torn last record (a write cut by a power loss: no final newline). Optuna skips such a line while it is
    last, but the next append would join it to a new record and make the journal unreadable. Under the journal's
    own lock, so a live writer is never cut."""
    if not path.is_file() or path.stat().st_size == 0 or _last_byte(path) == b"\n":
        return False
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        if _last_byte(path) == b"\n":
            return False
        data = path.read_bytes()
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())
        return True
    finally:
        lock.release()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)
