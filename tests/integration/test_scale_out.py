"""The scale-out recipe of docs/scaling-out.md, for real: an `mlflow server` with a PostgreSQL backend store and
proxied artifacts (a directory standing in for the artifact store), the Optuna study on the same PostgreSQL server, and
`mtl-suite` workers as separate processes that know the server only by MLFLOW_TRACKING_URI (standing in for other
machines), started together: one trains a stage run, two tune one study; one of those is SIGKILLed mid-trial.

Needs PostgreSQL (`export MTL_SUITE_TEST_POSTGRES_URL=$(.ci/start-postgres.sh)`; its role must be allowed to
create databases, which that script grants): fails without it under CI=true, skips otherwise. Lean on purpose
(tiny backbone, 64 px, 2 folds, 1 epoch, 3 trials): it replaces the former two-worker test of test_tune.py, which
ran the same kill against a local SQLite tracking store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.data.splits import load_split
from mtl_suite.io_utils import sha256_file
from mtl_suite.paths import SAMPLE_IMAGES

sys.path.insert(0, str(Path(__file__).parent))
from mlflow_server import fresh_database, mlflow_server  # noqa: E402
from postgres_fixture import postgres_url  # noqa: E402, F401 (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
EXPERIMENT = "scale-out"
TINY = ["--backbone", "tiny", "--weights", "none", "--image-size", "64", "--folds", "2", "--quiet"]
TRIALS = 2  # the fewest that show it: each worker starts one; the survivor finishes its own, then redoes the other


@pytest.fixture(scope="module")
def team(postgres_url, tmp_path_factory):
    """The server (fresh backend database, artifacts under tmp) and the environment a worker machine would have."""
    root = tmp_path_factory.mktemp("scale-out")
    with fresh_database(postgres_url) as backend, \
            mlflow_server(backend, root / "artifacts", root / "server.log") as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        previous = mlflow.get_tracking_uri()
        bars = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        mlflow.set_tracking_uri(url)  # this process reads through the server too (runs:/ URIs resolve through it)
        try:
            yield {"url": url, "root": root, "env": env, "storage": postgres_url, "artifacts": root / "artifacts"}
        finally:
            mlflow.set_tracking_uri(previous)
            if bars is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bars


def worker(team, name: str, *args: str) -> subprocess.Popen:
    """A `mtl-suite` process that knows the team's stores only through its environment (as on another machine)."""
    log = open(team["root"] / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "mtl_suite", *args, "--experiment", EXPERIMENT],
                            cwd=team["root"], env=team["env"], stdout=log, stderr=subprocess.STDOUT)


def log_of(team, name: str) -> str:
    return (team["root"] / f"{name}.log").read_text()[-3000:]


def wait_for(condition, processes, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except KeyError:  # the study does not exist yet
            value = None
        if value is not None and value is not False:
            return value
        for name, process in processes.items():
            if process.poll() not in (None, 0):
                raise AssertionError(f"{name} exited with {process.returncode} before {what}")
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_team_on_one_server_survives_a_killed_worker(team):
    started = time.monotonic()
    client = mlflow.MlflowClient(team["url"])
    study_name = f"team-{uuid.uuid4().hex[:8]}"
    storage = lambda: optuna.storages.RDBStorage(team["storage"])  # noqa: E731

    # All at once, as a team would: a stage run and two workers tuning one study, all of the classical baseline (it
    # starts from ImageNet: no earlier stage to wait for, and the cheapest stage run); worker-a is SIGKILLed in the
    # middle of its trial.
    tune = ["tune", "--stage", "classical", *TINY, "--trials", str(TRIALS), "--pruner", "none", "--study-name",
            study_name, "--storage", team["storage"], "--heartbeat-interval", "1", "--grace-period", "4"]
    workers = {"stage": worker(team, "stage", "classical", *TINY, "--epochs", "1", "--finetune-epochs", "0",
                               "--augment", "none"),
               "worker-a": worker(team, "worker-a", *tune), "worker-b": worker(team, "worker-b", *tune)}
    try:
        try:
            killed = wait_for(lambda: running_trial_of(storage, study_name, workers["worker-a"].pid), workers, 240,
                              "worker-a reports mid-trial")
        except AssertionError as failure:  # say why a worker ended: its own log, not only its exit code
            raise AssertionError("\n".join([str(failure), *(f"--- {name}:\n{log_of(team, name)}" for name in workers)]))
        workers["worker-a"].send_signal(signal.SIGKILL)
        workers["worker-a"].wait(timeout=30)
        for name in ("worker-b", "stage"):
            assert workers[name].wait(timeout=300) == 0, log_of(team, name)
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    assert workers["worker-a"].returncode == -signal.SIGKILL

    # Optuna: the killed trial failed, its configuration was redone once, the target was reached.
    study = optuna.load_study(study_name=study_name, storage=storage())
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed] == "FAIL", states
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert TRIALS <= len(finished) <= TRIALS + 1, states  # +1: worker-b began a trial before it saw the death
    redone = [t for t in study.trials
              if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed]
    assert len(redone) == 1 and redone[0].params == study.trials[killed].params and redone[0] in finished

    # MLflow, through the server: nothing left RUNNING, one study run holding every trial, folds under the stage run.
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied: workers never see the disk
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    by_kind = {}
    for run in runs:
        by_kind.setdefault(run.data.tags.get("run_kind"), []).append(run)
    studies = [r for r in by_kind["study"] if r.data.tags.get("study") == study_name]
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    trials = {int(r.data.tags["trial"]): r for r in by_kind["trial"] if r.data.tags.get("study") == study_name}
    assert set(trials) == set(states) and all(
        r.data.tags["mlflow.parentRunId"] == studies[0].info.run_id for r in trials.values())
    assert (trials[killed].info.status, trials[killed].data.tags["state"]) in (("KILLED", "KILLED"),
                                                                             ("FAILED", "FAIL"))
    assert {n for n, r in trials.items() if r.data.tags["state"] == "COMPLETE"} == {t.number for t in finished}
    stages = by_kind["stage"]
    assert len(stages) == 1 and stages[0].info.status == "FINISHED" and stages[0].data.tags["stage"] == "classical"
    stage_id = stages[0].info.run_id
    folds = [r for r in by_kind["fold"] if r.data.tags.get("mlflow.parentRunId") == stage_id]
    assert sorted(r.data.tags["fold"] for r in folds) == ["final", "fold-0", "fold-1"]
    assert studies[0].data.tags["stage"] == "classical" and studies[0].data.tags["weights"] == "none"

    # Artifacts, downloaded through the server: split, figures, the Keras model, the study's results.
    out = team["root"] / "downloads"
    split = Path(mlflow.artifacts.download_artifacts(run_id=stage_id, artifact_path="data/split.json",
                                                     dst_path=str(out / "split"), tracking_uri=team["url"]))
    assert sha256_file(split) == stages[0].data.tags["split_digest"] and len(load_split(split).entries) > 90
    figure = Path(mlflow.artifacts.download_artifacts(run_id=stage_id, artifact_path="cv/confusion_matrix.png",
                                                      dst_path=str(out / "figure"), tracking_uri=team["url"]))
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{stage_id}/model",
                                                     dst_path=str(out / "model"), tracking_uri=team["url"]))
    assert (model / "MLmodel").is_file()
    best = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(
        run_id=studies[0].info.run_id, artifact_path="study/best_params.yaml", dst_path=str(out / "study"),
        tracking_uri=team["url"])).read_text())
    assert best["trial"] == study.best_trial.number
    assert any(team["artifacts"].rglob("split.json"))  # they live where the server was told to keep them

    # 3. The registry through the server: promote the stage run, then classify with the champion.
    runner = CliRunner()
    promoted = runner.invoke(app, ["promote", "--stage", "classical", "--tracking-uri", team["url"],
                                   "--experiment", EXPERIMENT, "-q"])
    assert promoted.exit_code == 0, promoted.output
    version = client.get_model_version_by_alias("mtl-all-classifier", "champion")
    assert version.run_id == stage_id and version.tags["stage_run"] == stage_id
    images = SAMPLE_IMAGES / "Benign"
    predicted = runner.invoke(app, ["predict", str(images), "--format", "csv", "--tracking-uri", team["url"], "-q"])
    assert predicted.exit_code == 0, predicted.output
    rows = [line.split(",") for line in predicted.output.strip().splitlines()[1:]]
    assert len(rows) == len(list(images.glob("*.jpg"))) and all(row[1] in ("Benign", "Early", "Pre", "Pro")
                                                                 for row in rows)
    print(f"scale-out test: {time.monotonic() - started:.0f} s after the server was up")


def running_trial_of(storage, study_name: str, pid: int) -> int | None:
    """The number of the trial `pid` is running once it has drawn its whole configuration (user attr `params`, set
    after its MLflow run opened and before it trains), else None. Not "once it has reported an epoch": what is left
    of a tiny trial after its first epoch can end before the kill lands; and not earlier: a trial killed before it
    has drawn every parameter cannot be redone with the same ones."""
    for trial in optuna.load_study(study_name=study_name, storage=storage()).trials:
        if trial.state.name == "RUNNING" and trial.user_attrs.get("worker", "").endswith(f":{pid}") \
                and "params" in trial.user_attrs:
            return trial.number
    return None
