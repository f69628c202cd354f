"""A comparison spread over workers, for real (docs/scaling-out.md, "A comparison over several machines"): two
`mtl-suite compare` processes with the same command against an `mlflow server` (PostgreSQL backend) and an Optuna
storage on PostgreSQL share its units; one is SIGKILLed in the middle of a stage run. The survivor closes the dead
worker's runs KILLED, redoes that unit in a run that adopts the killed one, writes the report, and every pair's
figures equal those of the same command run by one process alone (its own SQLite store, at the same time).

Needs PostgreSQL as tests/integration/test_scale_out.py does: fails without it under CI=true, skips otherwise. Lean
on purpose (tiny backbone, 32 px, 2 folds, 1 epoch, the 2 pairs a t-test needs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_server import fresh_database, mlflow_server  # noqa: E402
from postgres_fixture import postgres_url  # noqa: E402, F401 (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
COMPARE = ["compare", "--backbone", "tiny", "--weights", "none", "--image-size", "32", "--folds", "2", "--epochs", "1",
           "--finetune-epochs", "0", "--task", "binary", "--runs", "2"]
STAGE_UNITS = 8  # 2 pairs x (classical, stage1, stage2, stage3)


def start(root: Path, name: str, env: dict, *args: str) -> subprocess.Popen:
    log = open(root / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "mtl_suite", *COMPARE, *args], cwd=root, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def log_of(root: Path, name: str) -> str:
    return (root / f"{name}.log").read_text()[-3000:]


def test_two_workers_share_a_comparison_survive_a_kill_and_match_one_process(postgres_url, tmp_path):
    started = time.monotonic()
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MTL_SUITE_CACHE": str(tmp_path / "cache")}
    env.pop("MTL_SUITE_OPTUNA_STORAGE", None)
    with fresh_database(postgres_url) as backend, fresh_database(postgres_url, "mtl_optuna") as storage, \
            mlflow_server(backend, tmp_path / "artifacts", tmp_path / "server.log") as url:
        team_env = {**env, "MLFLOW_TRACKING_URI": url}
        shared = ["--storage", storage, "--heartbeat-interval", "1", "--grace-period", "4", "--experiment", "spread",
                  "--out", str(tmp_path / "team"), "-q"]
        workers = {"alone": start(tmp_path, "alone", env, "--tracking-uri", f"sqlite:///{tmp_path}/alone.db",
                                  "--experiment", "alone", "--out", str(tmp_path / "alone"), "-q"),
                   "worker-a": start(tmp_path, "worker-a", team_env, *shared),
                   "worker-b": start(tmp_path, "worker-b", team_env, *shared)}
        client = mlflow.MlflowClient(url)
        try:
            killed_run = wait_for(lambda: stage_run_of(client, workers["worker-a"].pid), workers, 300,
                                  "worker-a is in the middle of a stage run", tmp_path)
            workers["worker-a"].send_signal(signal.SIGKILL)
            workers["worker-a"].wait(timeout=30)
            for name in ("worker-b", "alone"):
                assert workers[name].wait(timeout=600) == 0, log_of(tmp_path, name)
        finally:
            for process in workers.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert workers["worker-a"].returncode == -signal.SIGKILL

        # The units: each settled by exactly one finished claim; the dead worker's claim failed and was redone.
        study_name, = optuna.get_all_study_names(storage)
        trials = optuna.load_study(study_name=study_name, storage=storage).trials
        finished = [t for t in trials if t.state.name == "COMPLETE"]
        assert sorted(t.user_attrs["unit"] for t in finished) == sorted(
            {t.user_attrs["unit"] for t in finished}) and len(finished) == STAGE_UNITS + 1
        dead = [t for t in trials if t.state.name == "FAIL"]
        assert len(dead) == 1 and dead[0].user_attrs["worker"].endswith(f":{workers['worker-a'].pid}")
        assert any(t.user_attrs["unit"] == dead[0].user_attrs["unit"] for t in finished)
        assert finished[-1].user_attrs["unit"] == "report"
        assert finished[-1].user_attrs["result:written_by"].endswith(f":{workers['worker-b'].pid}")

        # MLflow through the server: nothing RUNNING, the killed run KILLED with its reason, one finished run per
        # stage unit, the comparison run FINISHED with the units' progress on it.
        experiment = client.get_experiment_by_name("spread")
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
        killed = client.get_run(killed_run)
        assert killed.info.status == "KILLED" and "worker" in killed.data.tags["state_reason"]
        stage_runs = [r for r in runs if r.data.tags.get("run_kind") == "stage" and r.info.status == "FINISHED"]
        units = [(r.data.tags["comparison_pair"], r.data.tags["stage"]) for r in stage_runs]
        assert len(units) == len(set(units)) == STAGE_UNITS  # no unit ran twice to completion
        # the redo adopted the killed run (its finished folds): the claim of a unit is not part of what a run is
        assert [r.data.tags.get("resumed_from") for r in stage_runs
                if r.data.tags["comparison_unit"] != killed.data.tags["comparison_unit"]
                and (r.data.tags["comparison_pair"], r.data.tags["stage"]) == (
                    killed.data.tags["comparison_pair"], killed.data.tags["stage"])] == [killed_run]
        parent, = [r for r in runs if r.data.tags.get("run_kind") == "comparison"]
        assert parent.info.status == "FINISHED" and parent.data.tags["units_done"] == str(STAGE_UNITS + 1)

        # Same figures as one process: every pair's test scores, and every test image's probabilities.
        team, alone = figures(client, experiment.experiment_id), figures(
            mlflow.MlflowClient(f"sqlite:///{tmp_path}/alone.db"),
            mlflow.MlflowClient(f"sqlite:///{tmp_path}/alone.db").get_experiment_by_name("alone").experiment_id)
        assert team == alone and len(team) == 4
        predictions = [pd.read_csv(next((tmp_path / side).glob("*-predictions.csv"))).drop(columns="run_id")
                       for side in ("team", "alone")]
        pd.testing.assert_frame_equal(*predictions)
        print(log_of(tmp_path, "worker-b"))
    print(f"spread test: {time.monotonic() - started:.0f} s")


def stage_run_of(client, pid: int) -> str | None:
    """A stage run of process `pid` that has begun training (its first fold run exists): mid-unit."""
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], f"tags.`mtl.pid` = '{pid}' AND "
                                      "attributes.status = 'RUNNING' AND tags.run_kind = 'stage'"):
            if client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"):
                return run.info.run_id
    return None


def figures(client, experiment_id: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(pair, arm stage) -> (test accuracy, test macro-F1) of the comparison's arm runs."""
    runs = client.search_runs([experiment_id], "tags.comparison_role = 'arm' AND attributes.status = 'FINISHED'")
    return {(r.data.tags["comparison_pair"], r.data.tags["stage"]): (r.data.metrics["test/accuracy"],
                                                                     r.data.metrics["test/f1_macro"]) for r in runs}


def wait_for(condition, processes, timeout: float, what: str, root: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for name, process in processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode} before {what}:\n{log_of(root, name)}")
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
