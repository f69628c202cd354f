"""`mlflow run . --env-manager local`, as the README uses it, on the one-command entry point (`train`, a recipe of two
tiny members: both trained, combined and promoted; run again, it reuses both members), and `--system-metrics` on a
short stage run. The other entry points are checked against the CLI without running (tests/unit/test_mlproject.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from conftest import tiny_recipe
from mtl_suite.cli import app
from mtl_suite.tracking.setup import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

REPO = Path(__file__).resolve().parents[2]
NOISE = ("I0000", "E0000", "absl::InitializeLog", "oneDNN custom operations", "cuda drivers", "cuInit")


TINY_RECIPE = tiny_recipe("classical", members="[{}, {train.seed: 1}]", image_size=48, folds=1)


@pytest.mark.slow
def test_mlflow_run_trains_a_recipe_to_a_champion_in_the_suites_experiment(tmp_path, monkeypatch):
    """`mlflow run . -e train`: the recipe's two members, their ensemble and the promotion, with `mlflow run`'s own
    run as the recipe run that names them all, in the suite's experiment, and no TensorFlow noise on the terminal."""
    mlflow_exe = shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert mlflow_exe, "mlflow is installed with the suite"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    # made beforehand only to keep its artifacts in tmp (a SQLite store puts them under ./mlruns of the project)
    client.create_experiment("mtl-suite", artifact_location=(tmp_path / "artifacts").as_uri())
    recipe = tmp_path / "tiny-pair.yaml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TF_CPP", "MTL_SUITE_SET"))}
    env.update(MLFLOW_TRACKING_URI=uri, MTL_SUITE_CACHE=str(tmp_path / "cache"))
    monkeypatch.setenv("MTL_SUITE_CACHE", env["MTL_SUITE_CACHE"])  # the rerun below, in this process
    done = subprocess.run([mlflow_exe, "run", ".", "-e", "train", "--env-manager", "local", "-P", f"recipe={recipe}",
                           "-P", "name=tiny-pair"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    experiments = {e.name: e for e in client.search_experiments()}
    assert set(experiments) == {"Default", "mtl-suite"}
    assert client.search_runs([experiments["Default"].experiment_id], run_view_type=3) == []
    runs = client.search_runs([experiments["mtl-suite"].experiment_id], "attributes.status = 'FINISHED'")
    by_kind: dict[str, list] = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("run_kind"), []).append(run)
    (recipe_run,) = by_kind["recipe"]
    assert recipe_run.data.tags["mlflow.project.entryPoint"] == "train"  # `mlflow run`'s run is the recipe run
    stage_runs = {run.info.run_id: run for run in by_kind["stage"]}
    assert len(stage_runs) == 3 and {r.data.tags["recipe"] for r in stage_runs.values()} == {"tiny-pair"}
    final = stage_runs[recipe_run.data.tags["final_run"]]
    members = recipe_run.data.tags["member_runs"].split(",")
    assert final.data.tags["ensemble_members"].split(",") == members
    assert [stage_runs[m].data.tags["seed"] for m in members] == ["42", "1"]
    champion = client.get_model_version_by_alias("tiny-pair", "champion")
    assert (champion.run_id, recipe_run.data.tags["registered_version"]) == (final.info.run_id, str(champion.version))
    assert "recipe/tiny-pair.yaml" in {a.path for a in client.list_artifacts(final.info.run_id, "recipe")}
    # stdout is the result alone, for scripts: the epoch lines Keras writes go to stderr with the progress
    assert done.stdout.strip().splitlines() == [f"models:/tiny-pair/{champion.version}"], done.stdout[-2000:]
    assert "mtl-suite serve --model models:/tiny-pair@champion" in done.stderr
    assert "progress: stages 3/3 (ensemble)" in done.stderr  # two members, then their ensemble
    noise = [line for line in (done.stdout + done.stderr).splitlines() if any(n in line for n in NOISE)]
    assert noise == []
    assert experiments["mtl-suite"].tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    # The same recipe again (as after a crash), in this process: both finished members are reused, only the ensemble
    # is made anew.
    again = CliRunner().invoke(app, ["train", str(recipe), "--name", "tiny-pair", "--tracking-uri", uri])
    assert again.exit_code == 0, again.output
    assert [m for m in members if f"reusing finished run {m}" in again.output] == members, again.output
    # the reused members took no time, so no time left is promised from them
    reused = [line for line in again.output.splitlines() if line.startswith("progress: stages 2/3")]
    assert reused and not any("left" in line for line in reused), again.output
    runs = client.search_runs([experiments["mtl-suite"].experiment_id], "attributes.status = 'FINISHED'")
    recipe_runs = [r for r in runs if r.data.tags.get("run_kind") == "recipe"]
    assert [r.data.tags["member_runs"] for r in recipe_runs] == [recipe_run.data.tags["member_runs"]] * 2
    assert len([r for r in runs if r.data.tags.get("run_kind") == "stage"]) == len(stage_runs) + 1


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
