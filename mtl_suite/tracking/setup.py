"""Where runs go: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
(MLflow 3's own default), so a user always knows which store holds their results."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import mlflow

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first use of a new SQLite store stays unsafe there
    fcntl = None

from mtl_suite.config import DEFAULT_TRACKING_URI


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_tracking(uri: str | None, experiment: str) -> tuple[str, str]:
    """Point MLflow at the store and experiment; return (tracking URI, experiment id)."""
    # Artifact download bars would interleave with our progress lines; a user can turn them back on.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    with _store_setup_lock(resolved):
        experiment_obj = mlflow.set_experiment(experiment)
    return resolved, experiment_obj.experiment_id


@contextlib.contextmanager
def _store_setup_lock(uri: str) -> Iterator[None]:
    """Two commands opening one new SQLite store at once would both create and migrate its tables (and both create
    the experiment) and crash ("table already exists", alembic errors). An exclusive lock on a file beside the
    database lets the first set it up while the others wait. Once set up, MLflow's own SQLite busy timeout (20 s)
    lets concurrent runs write; a server store (postgresql://, http://) needs no lock."""
    database = _sqlite_path(uri)
    if database is None or fcntl is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".setup-lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path if path.startswith("/") else path).resolve()
