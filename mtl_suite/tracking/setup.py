"""Where runs go: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
(MLflow 3's own default), so a user always knows which store holds their results."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow.entities import Experiment
from mlflow.exceptions import MlflowException
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent first use of a new SQLite store stays unsafe there
    fcntl = None

from mtl_suite.config import DEFAULT_TRACKING_URI
from mtl_suite.tracking.reachability import check_tracking_uri


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_tracking(uri: str | None, experiment: str) -> tuple[str, str]:
    """Point MLflow at the store and experiment; return (tracking URI, experiment id)."""
    # Artifact download bars would interleave with our progress lines; a user can turn them back on.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    resolved = resolve_tracking_uri(uri)
    check_tracking_uri(resolved)  # a wrong or unreachable store: one line naming it, before any work
    mlflow.set_tracking_uri(resolved)
    with _store_setup_lock(resolved):
        experiment_id = _set_experiment(experiment, resolved)
    return resolved, experiment_id


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


def artifacts_beside_store(uri: str, experiment: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: `mlruns/<experiment>` beside the database file,
    so the store and its models move, and are deleted, together. MLflow's own default is ./mlruns of whatever
    directory the command that created the experiment ran in: a store opened later from elsewhere finds runs whose
    models are gone with that directory. None for a server store, whose artifacts the server places."""
    database = _sqlite_path(uri)
    if database is None:
        return None
    return (database.parent / "mlruns" / re.sub(r"[^A-Za-z0-9._-]", "_", experiment)).as_uri()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path if path.startswith("/") else path).resolve()


# --- one experiment, whichever way the suite is started --------------------------------------------------------------

# MLflow 3's UI opens an experiment without this tag on its GenAI pages (traces, sessions); with it, on the training
# runs. The values are the UI's ExperimentKind (mlflow/server/js: "genai_development", "custom_model_development").
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
LAUNCHER_RUN_ENV = "MLFLOW_RUN_ID"  # set by `mlflow run` for the command it starts
MOVED_TO_TAG = "mtl_suite.moved_to_experiment"


def _set_experiment(name: str, uri: str) -> str:
    """The command's experiment: the one `mlflow run`'s run is in when the user chose it (`--experiment-name`,
    $MLFLOW_EXPERIMENT_NAME/_ID), else `name` (--experiment, which reads $MLFLOW_EXPERIMENT_NAME, else mtl-suite).
    Created only when a run is about to go into it (its artifacts beside a SQLite store's file), and tagged as a
    model-development experiment."""
    chosen = _chosen_launcher_experiment()
    if not chosen:
        create_experiment(name, uri)
    experiment = mlflow.set_experiment(experiment_id=chosen) if chosen else mlflow.set_experiment(name)
    # When another process creates the experiment at the same moment, MLflow (3.x) returns it without making it the
    # active one, and this command's runs would land in the Default experiment: activate it by id, whichever path ran.
    experiment = mlflow.set_experiment(experiment_id=experiment.experiment_id)
    _tag_kind(experiment)
    return experiment.experiment_id


def create_experiment(name: str, uri: str, tags: dict[str, str] | None = None) -> str:
    """The experiment `name`'s id, created when missing (artifacts beside a SQLite store's file); a worker that
    loses the race to create it gets the winner's."""
    client = mlflow.MlflowClient(uri)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts_beside_store(uri, name), tags=tags)
    except MlflowException:
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def _tag_kind(experiment: Experiment) -> None:
    """Tag the experiment's kind unless it has one (a kind the user picked in the UI stays). Workers starting
    together on a new experiment may all see it untagged: on a server store the later inserts violate the tag's key
    (UniqueViolation); the tag is then there, which is all that is needed."""
    if EXPERIMENT_KIND_TAG in experiment.tags:
        return
    client = mlflow.MlflowClient()
    try:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    except MlflowException:
        if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment.experiment_id).tags:
            raise


def _chosen_launcher_experiment() -> str | None:
    """The experiment of `mlflow run`'s run, unless `mlflow run` put it in MLflow's Default experiment only because
    nobody named one (then the suite's own default applies)."""
    run_id = os.environ.get(LAUNCHER_RUN_ENV)
    if not run_id:
        return None
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    named = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    return experiment_id if experiment_id != DEFAULT_EXPERIMENT_ID or named else None


def record_in_launcher_run(experiment_id: str, tags: dict[str, str], files: tuple[Path, ...] = ()) -> str | None:
    """For a command that makes no run of its own (report, promote): the run `mlflow run` made for it keeps what
    the command did (tags, files), so `mlflow run . -e report` leaves a run worth opening, not an empty one."""
    run_id = take_launcher_run(experiment_id)
    if run_id is not None:
        client = mlflow.MlflowClient()
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        for file in files:
            client.log_artifact(run_id, str(file))
    return run_id


def take_launcher_run(experiment_id: str) -> str | None:
    """The run `mlflow run` made for this command, to become the command's own (first) run; None without one, and
    after the first call. `mlflow run <this project>` puts it in the suite's experiment itself (mtl_suite_mlflow.py);
    one left in MLflow's Default (the suite not installed, so that hook missing) is closed with a note that says
    where the work went. It cannot be deleted: `mlflow run` sets its status once more when the command ends."""
    run_id = os.environ.pop(LAUNCHER_RUN_ENV, None)
    if not run_id:
        return None
    client = mlflow.MlflowClient()
    if client.get_run(run_id).info.experiment_id == experiment_id:
        return run_id
    name = client.get_experiment(experiment_id).name
    client.set_tag(run_id, MOVED_TO_TAG, experiment_id)
    client.set_tag(run_id, "mlflow.note.content", f"This command's runs are in experiment {name!r} (id "
                   f"{experiment_id}). Name it for `mlflow run` with --experiment-name or $MLFLOW_EXPERIMENT_NAME.")
    client.set_terminated(run_id, "FINISHED")
    return None
