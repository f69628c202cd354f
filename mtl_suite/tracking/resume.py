"""Resuming a stage run that was interrupted (SIGKILL, power loss, Ctrl-C, an error) from the tracking store.

Running the same command again finds the interrupted run by its resume key (a digest of everything that decides
the results: stage, settings, parent run, split), and the new run adopts it:
- its finished fold runs move under the new run (their results come back from each fold's fold_result.json);
- its unfinished fold runs are deleted (they are redone, from their last epoch checkpoint when this machine has
  one), so no duplicate fold runs remain;
- the old run is marked KILLED if it was left RUNNING, and both runs point at each other (resumed_by /
  resumed_from tags).
A run still RUNNING in a live process on this machine is never adopted: two identical commands at once each get
their own run.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.entities import Run, RunStatus

from mtl_suite.cache import default_cache_root
from mtl_suite.errors import UserError
from mtl_suite.training.cv import FoldResult

RESUME_KEY = "resume_key"
ORIGIN = "resume_origin"  # the first attempt's run id: names the epoch-checkpoint folder of every later attempt
PID, HOST = "mtl.pid", "mtl.host"
FOLD_RESULT = "fold_result.json"
RUNNING = RunStatus.to_string(RunStatus.RUNNING)
FINISHED = RunStatus.to_string(RunStatus.FINISHED)


def resume_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:32]


def owner_tags() -> dict[str, str]:
    """Which process runs this run, so a later command can tell a dead run from a live one."""
    return {PID: str(os.getpid()), HOST: socket.gethostname()}


def owner_alive(run: Run) -> bool:
    """True when the run's process is alive on this machine, or the run belongs to another machine (which we
    cannot check, so we do not take its run away)."""
    tags = run.data.tags
    if tags.get(HOST) != socket.gethostname():
        return HOST in tags
    try:
        pid = int(tags.get(PID, ""))
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # this process is not running it now: it is choosing what to resume
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_finished_run(experiment_id: str, key: str) -> Run | None:
    """The newest finished run with this resume key (same settings, data, split and parent run), if any."""
    runs = mlflow.search_runs(experiment_ids=[experiment_id], filter_string=f"tags.{RESUME_KEY} = '{key}' and "
                              f"attributes.status = '{FINISHED}'", order_by=["attributes.start_time DESC"],
                              max_results=1, output_format="list")
    return runs[0] if runs else None


def find_interrupted_run(experiment_id: str, key: str, resume: str) -> Run | None:
    """The run to resume: `resume` is 'auto' (the newest interrupted run with this key, if any), 'never', or a
    run id (checked: same settings, not finished, not running elsewhere)."""
    if resume == "never":
        return None
    if resume != "auto":
        return _check_explicit(resume, key)
    runs = mlflow.search_runs(experiment_ids=[experiment_id], filter_string=f"tags.{RESUME_KEY} = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=50, output_format="list")
    for run in runs:
        tags = run.data.tags
        if run.info.status == FINISHED or "resumed_by" in tags:
            continue
        if run.info.status == RUNNING and owner_alive(run):
            continue
        return run
    return None


def _check_explicit(run_id: str, key: str) -> Run:
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"--resume {run_id}: no such run in the tracking store") from None
    tags = run.data.tags
    if tags.get(RESUME_KEY) != key:
        raise UserError(f"--resume {run_id}: that run was made with other settings, data or parent run (resume "
                        f"key {tags.get(RESUME_KEY, 'none')}, this command's {key}); run the command it was made "
                        f"with, or leave out --resume to start a new run")
    if run.info.status == FINISHED:
        raise UserError(f"--resume {run_id}: that run finished; nothing to resume")
    if "resumed_by" in tags:
        raise UserError(f"--resume {run_id}: already resumed by run {tags['resumed_by']}; resume that one")
    if run.info.status == RUNNING and owner_alive(run):
        raise UserError(f"--resume {run_id}: still running (process {tags.get(PID)} on {tags.get(HOST)}); stop it "
                        "first")
    return run


def origin_of(run: Run) -> str:
    """The first attempt's run id, which names the epoch checkpoints every attempt shares."""
    return run.data.tags.get(ORIGIN) or run.info.run_id


def adopt(previous: Run, new_run_id: str, say: Callable[[str], None],
          reusable: Callable[[str], bool] = lambda fold: True) -> dict[str, FoldResult]:
    """Move `previous`'s finished folds under `new_run_id` and return their results; delete its unfinished fold
    runs, and the finished ones that are not `reusable` (the training will redo them: one run per fold); mark it
    KILLED if it was left RUNNING."""
    client = mlflow.MlflowClient()
    old_id = previous.info.run_id
    if previous.info.status == RUNNING:  # its process died without closing it
        client.set_terminated(old_id, RunStatus.to_string(RunStatus.KILLED))
    client.set_tag(new_run_id, "resumed_from", old_id)
    folds: dict[str, FoldResult] = {}
    for child in _children(previous):
        fold = child.data.tags.get("fold", "")
        finished = child.info.status == FINISHED and fold != "final" and reusable(fold)
        result = _fold_result(child) if finished else None
        if result is not None and fold not in folds:
            client.set_tag(child.info.run_id, "mlflow.parentRunId", new_run_id)
            client.set_tag(child.info.run_id, "adopted_from", old_id)
            folds[fold] = result
        else:
            client.delete_run(child.info.run_id)  # redone (from its epoch checkpoint where there is one)
    client.set_tag(old_id, "resumed_by", new_run_id)
    say(f"resuming interrupted run {old_id}: {len(folds)} finished fold(s) reused "
        f"({', '.join(sorted(folds)) or 'none'}); the rest is trained again")
    return folds


def _children(run: Run) -> list[Run]:
    return mlflow.search_runs(experiment_ids=[run.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                              max_results=1000, output_format="list")


def _fold_result(run: Run) -> FoldResult | None:
    try:
        return FoldResult.from_json(mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{FOLD_RESULT}"))
    except Exception:  # noqa: BLE001 - a fold without a readable result is simply trained again
        return None


def checkpoint_folder(origin: str) -> Path:
    """Epoch checkpoints of every attempt of one run (local to this machine; the tracking store has the folds)."""
    return default_cache_root() / "checkpoints" / origin
