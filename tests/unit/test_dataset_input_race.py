"""Two runs of one split logging its dataset at the same moment (two members of a recipe, or a pair's two arms,
under --storage): the store looks for the dataset row, finds none, and refuses its insert because the other process
stored the row meanwhile. tracking/runs.py:log_input tries once more and links the existing row. The race is made
to happen, on a real SQLite store: the other process's row is committed just before this process's insert."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import sqlalchemy
from mlflow.entities import DatasetInput
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service.utils import _get_store

from mtl_suite.tracking.runs import log_input

# a local folder as a dataset source matches two equivalent source types: MLflow warns, harmlessly
pytestmark = pytest.mark.filterwarnings("ignore:The specified dataset source:UserWarning")


@pytest.fixture
def store_with_a_rival(tmp_path):
    """A store whose next insert of a dataset row is preceded by another run's insert of the same row."""
    uri, before = f"sqlite:///{tmp_path}/race.db", mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # the fluent API's store: another test of this process may have set another
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("race", artifact_location=(tmp_path / "artifacts").as_uri())
    rival = client.create_run(experiment).info.run_id
    dataset = mlflow.data.from_pandas(pd.DataFrame({"path": ["a.jpg", "b.jpg"], "label": [0.0, 1.0]}),
                                      source=str(tmp_path), name="split-0123456789ab")
    engine, raced = _get_store(uri).engine, []

    def rival_first(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO datasets") and not raced:
            raced.append(statement)
            client.log_inputs(rival, [DatasetInput(dataset._to_mlflow_entity())])

    sqlalchemy.event.listen(engine, "before_cursor_execute", rival_first)
    yield client, experiment, dataset, raced
    sqlalchemy.event.remove(engine, "before_cursor_execute", rival_first)
    mlflow.end_run()
    mlflow.set_tracking_uri(before)


def test_mlflow_alone_refuses_the_second_insert(store_with_a_rival):
    client, experiment, dataset, raced = store_with_a_rival
    with mlflow.start_run(experiment_id=experiment), pytest.raises(MlflowException, match="UNIQUE constraint failed"):
        mlflow.log_input(dataset, context="training")
    assert raced


def test_log_input_links_the_row_the_rival_stored(store_with_a_rival):
    client, experiment, dataset, raced = store_with_a_rival
    with mlflow.start_run(experiment_id=experiment) as run:
        log_input(dataset, context="training")
    assert raced
    (logged,) = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert logged.dataset.name == "split-0123456789ab" and logged.dataset.digest == dataset.digest
    assert [t.value for t in logged.tags if t.key == "mlflow.data.context"] == ["training"]
