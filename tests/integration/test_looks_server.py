"""The ledger of looks through a real tracking server (mlflow_server.py's `mlflow server`, on a SQLite backend store
here, so it needs no PostgreSQL): looks at the sample's outer test part written in two experiments, then one tiny
classical run through the server that counts them and says so, and `data looks` reading every look back through the
server. The one training run is the tiniest the suite makes (tiny backbone, 48 px, 2 folds, one epoch each); the
rest of the ledger is tested on a SQLite store in tests/unit/test_looks.py."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.config import DataConfig
from mtl_suite.data.looks import Look, part_digest
from mtl_suite.tasks import smear_split

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_server import mlflow_server  # noqa: E402

pytestmark = pytest.mark.slow
TINY = ["--backbone", "tiny", "--weights", "none", "--image-size", "48", "--folds", "2", "--epochs", "1",
        "--finetune-epochs", "1", "--unfreeze-layers", "2", "--batch-size", "32", "--quiet"]


def test_a_stage_run_counts_the_looks_made_in_any_experiment_of_a_tracking_server(tmp_path):
    split = smear_split(DataConfig(folds=2))  # the classical run's split: the sample, seed 42, 2 folds
    digest = part_digest(split.entries[i].sha256 for i in split.test_indices)
    previous = mlflow.get_tracking_uri()
    with mlflow_server(f"sqlite:///{tmp_path}/backend.db", tmp_path / "artifacts", tmp_path / "server.log") as url:
        try:
            client = mlflow.MlflowClient(url)
            start = int(time.time() * 1000) - 60_000
            earlier = []
            for k, (experiment, model) in enumerate((("lab-a", "run:m1"), ("lab-b", "run:m2"), ("lab-b", "run:m1"))):
                found = client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id if found else client.create_experiment(experiment)
                run = client.create_run(experiment_id, start_time=start + k * 1000, tags={
                    "run_kind": "stage", **Look(digest, len(split.test_indices), model, f"model {model}").tags(k)})
                client.set_terminated(run.info.run_id)
                earlier.append(run.info.run_id)

            result = CliRunner().invoke(app, ["classical", *TINY, "--tracking-uri", url, "--experiment", "mine"])
            assert result.exit_code == 0, result.output
            last = result.stdout.strip().splitlines()[-1]
            assert last.endswith("; this test part had been scored by 2 earlier configurations"), last
            run_id = last.split()[2]
            assert client.get_run(run_id).data.tags["test_part_earlier_configurations"] == "2"

            listed = CliRunner().invoke(app, ["data", "looks", "--tracking-uri", url, "--format", "json"])
            assert listed.exit_code == 0, listed.output
            part, = json.loads(listed.stdout)["parts"]
            assert part["digest"] == digest and part["configurations"] == 3  # m1, m2 and the classical run
            assert [look["run_id"] for look in part["looks"]] == [*earlier, run_id]
            assert [look["experiment"] for look in part["looks"]] == ["lab-a", "lab-b", "lab-b", "mine"]
        finally:
            mlflow.set_tracking_uri(previous)
