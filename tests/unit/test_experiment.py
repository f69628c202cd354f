"""One experiment, whichever way the suite is started: the CLI's --experiment (which reads $MLFLOW_EXPERIMENT_NAME,
else mtl-suite), and `mlflow run`'s run taken over as the command's own run when it is in that experiment. The
suite's experiments say they hold model training (mlflow.experimentKind), so MLflow 3's UI opens on the runs."""

from __future__ import annotations

import mlflow
import pytest
import typer.main

import mtl_suite_mlflow
from mtl_suite.cli import app
from mtl_suite.config import DEFAULT_EXPERIMENT
from mtl_suite.tracking.setup import (
    EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, LAUNCHER_RUN_ENV, MOVED_TO_TAG, take_launcher_run, use_tracking,
)


@pytest.fixture
def store(tmp_path, monkeypatch):
    for name in (LAUNCHER_RUN_ENV, "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    client.search_experiments()  # creates the store (and MLflow's Default experiment)
    yield uri, client
    mlflow.set_tracking_uri(None)


def _names(client) -> set[str]:
    return {e.name for e in client.search_experiments()}


def test_the_command_experiment_is_created_and_tagged_as_model_development(store):
    uri, client = store
    _, experiment_id = use_tracking(uri, DEFAULT_EXPERIMENT)
    experiment = client.get_experiment(experiment_id)
    assert experiment.name == "mtl-suite" and experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "genai_development")  # the user's choice stays
    use_tracking(uri, DEFAULT_EXPERIMENT)
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_a_sqlite_stores_artifacts_sit_beside_its_file_wherever_the_command_ran(store, tmp_path, monkeypatch):
    """MLflow's default, ./mlruns of the working directory, left a store's runs without their models once that
    directory was deleted; the suite's new experiments keep them beside the database, for the CLI and `mlflow run`."""
    uri, client = store
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    _, experiment_id = use_tracking(uri, "my runs/1")
    mlflow.set_tracking_uri(uri)
    launcher_id = mtl_suite_mlflow.MtlSuiteProjectExperiment().get_experiment_id()
    for found, folder in ((experiment_id, "my_runs_1"), (launcher_id, "mtl-suite")):
        assert client.get_experiment(found).artifact_location == (tmp_path / "mlruns" / folder).as_uri()
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_text("kept", "note.txt")
    assert [p.name for p in (tmp_path / "mlruns" / "my_runs_1").rglob("note.txt")] == ["note.txt"]
    assert list(elsewhere.iterdir()) == []
    other = client.create_experiment("made by hand", artifact_location=(tmp_path / "own").as_uri())
    assert use_tracking(uri, "made by hand")[1] == other  # an existing experiment keeps its own place


def test_mlflow_runs_run_in_a_named_experiment_becomes_the_commands_run(store, monkeypatch):
    """`MLFLOW_EXPERIMENT_NAME=other mlflow run .`: its run is in `other`, so is the command's; no empty mtl-suite."""
    uri, client = store
    other = client.create_experiment("other")
    launcher = client.create_run(other).info.run_id
    monkeypatch.setenv(LAUNCHER_RUN_ENV, launcher)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", other)
    _, experiment_id = use_tracking(uri, DEFAULT_EXPERIMENT)  # --experiment left at its default
    assert experiment_id == other and take_launcher_run(experiment_id) == launcher
    assert take_launcher_run(experiment_id) is None  # once per process
    assert _names(client) == {"Default", "other"}


def test_a_run_left_in_default_says_where_the_work_went(store, monkeypatch):
    """`mlflow run` without the suite's hook put its run in Default: the command works in mtl-suite and closes the
    Default run with a note (it cannot delete it: `mlflow run` sets its status again afterwards)."""
    uri, client = store
    launcher = client.create_run("0").info.run_id
    monkeypatch.setenv(LAUNCHER_RUN_ENV, launcher)
    _, experiment_id = use_tracking(uri, DEFAULT_EXPERIMENT)
    assert client.get_experiment(experiment_id).name == "mtl-suite"
    assert take_launcher_run(experiment_id) is None
    left = client.get_run(launcher)
    assert left.info.status == "FINISHED" and left.data.tags[MOVED_TO_TAG] == experiment_id
    assert "'mtl-suite'" in left.data.tags["mlflow.note.content"]
    client.set_terminated(launcher, "FINISHED")  # what `mlflow run` does next must still work


def test_experiment_option_reads_mlflow_experiment_name_and_a_typed_one_wins(monkeypatch):
    command = typer.main.get_command(app).commands["stage3"]
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    assert command.make_context("stage3", []).params["experiment"] == "from-env"
    assert command.make_context("stage3", ["--experiment", "typed"]).params["experiment"] == "typed"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    assert command.make_context("stage3", []).params["experiment"] == DEFAULT_EXPERIMENT


def test_mlflow_run_of_this_project_defaults_to_the_suites_experiment(store, tmp_path, monkeypatch):
    """The `mlflow.default_experiment_provider` hook answers for `mlflow run <this project>` only."""
    from pathlib import Path

    repo = str(Path(mtl_suite_mlflow.__file__).parent)
    assert mtl_suite_mlflow.runs_this_project(["/venv/bin/mlflow", "run", repo, "-e", "stage3"])
    assert mtl_suite_mlflow.runs_this_project(["/x/mlflow/__main__.py", "run", "-e", "tune", repo])
    assert not mtl_suite_mlflow.runs_this_project(["/venv/bin/mlflow", "ui"])
    assert not mtl_suite_mlflow.runs_this_project(["/venv/bin/mlflow", "run", str(tmp_path)])
    (tmp_path / "MLproject").write_text("name: another-project\n")
    assert not mtl_suite_mlflow.runs_this_project(["/venv/bin/mlflow", "run", str(tmp_path)])
    assert mtl_suite_mlflow.EXPERIMENT == DEFAULT_EXPERIMENT
    assert (mtl_suite_mlflow.KIND_TAG, mtl_suite_mlflow.KIND) == (EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    uri, client = store
    mlflow.set_tracking_uri(uri)
    experiment_id = mtl_suite_mlflow.MtlSuiteProjectExperiment().get_experiment_id()
    experiment = client.get_experiment(experiment_id)
    assert experiment.name == "mtl-suite" and experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert mtl_suite_mlflow.MtlSuiteProjectExperiment().get_experiment_id() == experiment_id
