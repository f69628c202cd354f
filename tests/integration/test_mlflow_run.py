"""`mlflow run . --env-manager local`, as the README's quick start uses it, on the cheapest entry point (stage 1 with
the tiny backbone: no training), and `--system-metrics` on a short stage run. The other entry points are checked
against the CLI without running (tests/unit/test_mlproject.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.tracking.setup import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

REPO = Path(__file__).resolve().parents[2]
NOISE = ("I0000", "E0000", "absl::InitializeLog", "oneDNN custom operations", "cuda drivers", "cuInit")


@pytest.mark.slow
def test_mlflow_run_lands_in_the_suites_experiment_with_clean_output(tmp_path):
    mlflow_exe = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert mlflow_exe, "mlflow is installed with the suite"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    # made beforehand only to keep its artifacts in tmp (a SQLite store puts them under ./mlruns of the project)
    client.create_experiment("mtl-suite", artifact_location=(tmp_path / "artifacts").as_uri())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TF_CPP", "MTL_SUITE_SET"))}
    env.update(MLFLOW_TRACKING_URI=uri, MTL_SUITE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([mlflow_exe, "run", ".", "-e", "stage1", "--env-manager", "local", "-P", "backbone=tiny",
                           "-P", "weights=none", "-P", "image_size=48"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    experiments = {e.name: e for e in client.search_experiments()}
    assert set(experiments) == {"Default", "mtl-suite"}
    assert client.search_runs([experiments["Default"].experiment_id], run_view_type=3) == []
    runs = client.search_runs([experiments["mtl-suite"].experiment_id])
    assert len(runs) == 1  # `mlflow run`'s own run is the stage run
    run = runs[0]
    assert (run.info.run_name, run.info.status) == ("stage1-tiny-imagenet", "FINISHED")
    assert run.data.tags["mlflow.project.entryPoint"] == "stage1" and run.data.tags["run_kind"] == "stage"
    assert experiments["mtl-suite"].tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    noise = [line for line in (done.stdout + done.stderr).splitlines() if any(n in line for n in NOISE)]
    assert noise == []
    assert f"stage1 run {run.info.run_id}" in done.stdout


@pytest.mark.slow
def test_system_metrics_are_logged_per_run(tmp_path, monkeypatch):
    pytest.importorskip("psutil", reason="the dev extra installs psutil")
    from mtl_suite.cli.common import SYSTEM_METRICS_ENV

    monkeypatch.setenv(SYSTEM_METRICS_ENV, "false")  # restored after the test: the option sets it for the process
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MTL_SUITE_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.MlflowClient(uri).create_experiment("sm", artifact_location=(tmp_path / "artifacts").as_uri())
    result = CliRunner().invoke(app, ["classical", "--backbone", "tiny", "--weights", "none", "--image-size", "48",
                                      "--folds", "1", "--epochs", "1", "--finetune-epochs", "0", "--system-metrics",
                                      "--tracking-uri", uri, "--experiment", "sm", "--quiet"])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sm").experiment_id])
    stage = next(r for r in runs if r.data.tags.get("run_kind") == "stage")
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(stage.data.metrics)
