"""`mtl-suite train RECIPE --storage`: two worker processes share a two-member recipe through an Optuna journal file.
Each trains one member, one of them makes the ensemble and promotes it, and both print the same registered version.
The same command again, once everything is settled, trains nothing and promotes the same final run again; with
another tracking store it is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from conftest import tiny_recipe
from mtl_suite.cli import app

REPO = Path(__file__).resolve().parents[2]
BARRIER_WORKER = Path(__file__).with_name("barrier_worker.py")
PAIR_RECIPE = tiny_recipe("classical", members="[{}, {train.seed: 1}]", folds=1)


@pytest.mark.slow
def test_two_workers_train_the_members_side_by_side_and_end_with_the_same_champion(tmp_path, monkeypatch):
    recipe = tmp_path / "pair.yaml"
    recipe.write_text(PAIR_RECIPE, encoding="utf-8")
    (tmp_path / "barrier").mkdir()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MTL_SUITE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    train = ["train", str(recipe), "--tracking-uri", uri, "--experiment", "t", "--storage", str(tmp_path / "units.log")]
    workers = [subprocess.Popen([sys.executable, str(BARRIER_WORKER), str(tmp_path / "barrier"), *train],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    printed = {out.strip() for out, _ in outputs}  # stdout: the registered version only
    assert printed == {"models:/mtl-all-classifier/1"}, outputs

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("t").experiment_id

    def runs(kind: str) -> list:
        """Stage runs of the members ("stage"), their ensemble ("ensemble") or the recipe run ("recipe")."""
        found = client.search_runs([experiment], "tags.run_kind != 'fold'")
        return [r for r in found if ("ensemble" if "ensemble_members" in r.data.tags else r.data.tags["run_kind"])
                == kind]

    members = runs("stage")
    assert len(members) == 2 and len({r.data.tags["mtl.pid"] for r in members}) == 2  # one member each
    assert sorted(r.data.params["train.seed"] for r in members) == ["1", "42"]
    assert all(r.data.tags["recipe_unit"].startswith("train-pair-") for r in members)
    (ensemble,) = runs("ensemble")
    assert set(ensemble.data.tags["ensemble_members"].split(",")) == {r.info.run_id for r in members}
    (recipe_run,) = runs("recipe")
    assert recipe_run.data.tags["final_run"] == ensemble.info.run_id
    assert set(recipe_run.data.tags["member_runs"].split(",")) == {r.info.run_id for r in members}
    champion = client.get_model_version_by_alias("mtl-all-classifier", "champion")
    assert str(champion.version) == "1" and champion.run_id == ensemble.info.run_id

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTL_SUITE_CACHE", env["MTL_SUITE_CACHE"])
    again = CliRunner().invoke(app, train)
    assert again.exit_code == 0, again.output
    assert "new round" in again.output and again.stdout.strip().endswith("models:/mtl-all-classifier/1")
    assert len(runs("stage")) == 2 and len(runs("ensemble")) == 1  # nothing trained again
    assert len(runs("recipe")) == 2 and all(r.data.tags["final_run"] == ensemble.info.run_id for r in runs("recipe"))

    # the same units with another tracking store: refused in one line, nothing trained there
    other = [*train[:train.index("--tracking-uri") + 1], f"sqlite:///{tmp_path}/other.db",
             *train[train.index("--tracking-uri") + 2:]]
    refused = CliRunner().invoke(app, other)
    assert refused.exit_code == 2 and "which tracking store" in refused.output, refused.output
    assert "Traceback" not in refused.output
