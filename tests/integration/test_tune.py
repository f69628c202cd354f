"""`mtl-suite tune` end to end on the bundled sample with the tiny backbone (64 px, 1 epoch, 2 folds), a tmp MLflow
store and a tmp Optuna journal; asserts what landed in MLflow and in the study. Several workers on PostgreSQL, one
killed, through a tracking server: tests/integration/test_scale_out.py."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.config import load_config
from mtl_suite.tuning.space import load_space, space_file
from mtl_suite.tuning.study import TuneRequest
from mtl_suite.workflows.tune import tune

pytestmark = pytest.mark.slow
runner = CliRunner()
EXPERIMENT = "tune-test"
TINY = ["--backbone", "tiny", "--weights", "none", "--image-size", "64", "--folds", "2", "--quiet"]
REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    uri = f"sqlite:///{root}/mlflow.db"
    # artifacts under tmp too (a sqlite store otherwise puts them in ./mlruns of the working directory)
    mlflow.MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    return {"root": root, "mlflow": uri, "optuna": str(root / "optuna-studies.log")}


def runs_of(store, study):
    mlflow.set_tracking_uri(store["mlflow"])
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string=f"tags.study = '{study}'",
                              output_format="list")
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    trials = sorted((r for r in runs if r.data.tags.get("run_kind") == "trial"), key=lambda r: int(r.data.tags["trial"]))
    return parents, trials


def tune_cli(store, study, *extra):
    return invoke("tune", "--stage", "stage3", *TINY, "--study-name", study, "--storage", store["optuna"],
                  "--tracking-uri", store["mlflow"], "--experiment", EXPERIMENT, *extra)


@pytest.fixture(scope="module")
def three_trials(store):
    """A 3-trial TPE study (stage 1 and 2 are made first, once, for the module). The default median pruner judges
    none of 3 trials (it waits for 5), but the study run records the step it would judge from."""
    result = tune_cli(store, "three", "--trials", "3")
    assert result.exit_code == 0, result.output
    return result


def test_three_trials_are_nested_runs_with_params_values_and_fold_metrics(store, three_trials):
    parents, trials = runs_of(store, "three")
    assert len(parents) == 1 and len(trials) == 3
    parent = parents[0]
    tags = parent.data.tags
    assert (tags["sampler"], tags["stage"], tags["backbone"], tags["storage"]) == ("tpe", "stage3", "tiny",
                                                                                   store["optuna"])
    space = load_space(space_file("stage3"), "stage3", "tiny")  # the warm-up epochs it draws from, at most
    assert tags["pruner"] == f"median (judged from step {space.max_warmup_epochs(load_config(None).train)})"
    study = optuna.load_study(study_name="three", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(store["optuna"])))
    values = {t.number: t.value for t in study.trials}
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    client = mlflow.MlflowClient()
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["state"] == "COMPLETE" and run.info.status == "FINISHED"
        # the resolved config under the keys stage runs use (the MLflow UI lines them up), the draws under search.*
        assert {"train.learning_rate", "train.batch_size", "train.dropout", "train.dense_units", "data.folds",
                "search.learning_rate", "search.dense_layers"} <= set(run.data.params)
        assert "learning_rate" not in run.data.params
        number = int(run.data.tags["trial"])
        assert run.data.metrics["value"] == pytest.approx(values[number])
        drawn = study.trials[number].params
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(drawn["learning_rate"])
        assert float(run.data.params["search.learning_rate"]) == pytest.approx(drawn["learning_rate"])
        assert run.info.run_name == f"three-trial-{number}"
        folds = client.get_metric_history(run.info.run_id, "fold/f1_macro")
        assert sorted(m.step for m in folds) == [0, 1]
        assert sum(m.value for m in folds) / 2 == pytest.approx(values[number])  # value = mean CV macro-F1
        assert client.get_metric_history(run.info.run_id, "fold0/val/f1_macro")  # per-epoch report of fold 0
    assert parent.data.metrics["best_value"] == pytest.approx(max(values.values()))
    assert parent.info.run_name == "tune-three"
    assert study.metric_names == ["cv/f1_macro_mean"]  # optuna-dashboard names the objective
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "study/plots")}
    assert {f"study/plots/{n}.png" for n in ("optimization_history", "param_importances", "parallel_coordinate",
                                             "slice")} <= names
    best = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="study/best_params.yaml", dst_path=str(store["root"] / "dl"))
    ).read_text())
    assert best["trial"] == study.best_trial.number and best["value"] == pytest.approx(study.best_value)
    assert best["params"]["learning_rate"] == pytest.approx(study.best_params["learning_rate"])


def test_best_params_round_trip_into_stage3(store, three_trials):
    study = optuna.load_study(study_name="three", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(store["optuna"])))
    best = study.best_trial
    result = invoke("stage3", "--params-from-study", "three", "--storage", store["optuna"], "--folds", "2",
                    "--dropout", "0.05", "--tracking-uri", store["mlflow"], "--experiment", EXPERIMENT, "--quiet")
    assert result.exit_code == 0, result.output
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list",
                              filter_string="tags.run_kind = 'stage' AND tags.study = 'three'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["trial"] == str(best.number) and run.data.tags["stage"] == "stage3"
    params = run.data.params
    assert float(params["train.learning_rate"]) == pytest.approx(best.params["learning_rate"])
    assert int(params["train.batch_size"]) == best.params["batch_size"]
    units = best.params["dense_units"]
    expected = ",".join(str(max(8, units // 2 ** i)) for i in range(best.params["dense_layers"]))
    assert params["train.dense_units"] == expected
    assert (params["train.backbone"], params["data.image_size"], params["train.warmup_epochs"]) == ("tiny", "64", "1")
    assert params["train.dropout"] == "0.05"  # a typed option wins over the study
    wrong = invoke("classical", "--params-from-study", "three", "--storage", store["optuna"])
    assert wrong.exit_code == 2 and "the study tuned stage3, not classical" in wrong.output
    missing = invoke("stage3", "--params-from-study", "nope", "--storage", store["optuna"])
    assert missing.exit_code == 2 and "no such study" in missing.output and "three" in missing.output


def test_a_pruned_trial_is_recorded_as_pruned(store, three_trials):
    """A pruner that stops every trial at its first report (fold 0, epoch 0): the trial is PRUNED in Optuna and
    in MLflow, and never reaches a fold result."""
    config = load_config(None, {"train.backbone": "tiny", "train.weights": "none", "data.image_size": 64,
                                "tracking.tracking_uri": store["mlflow"], "tracking.experiment": EXPERIMENT})
    outcome = tune(TuneRequest(stage="stage3", config=config, trials=1, folds=2, study_name="pruned",
                               storage=store["optuna"], pruner=optuna.pruners.ThresholdPruner(lower=2.0),
                               quiet=True), say=lambda message: None)
    assert outcome.counts == {"COMPLETE": 0, "PRUNED": 1, "FAIL": 0}
    _, trials = runs_of(store, "pruned")
    assert len(trials) == 1
    run = trials[0]
    assert run.data.tags["state"] == "PRUNED" and run.info.status == "FINISHED"
    assert run.data.metrics["pruned_at_step"] == 0 and "value" not in run.data.metrics
    assert "fold/f1_macro" not in run.data.metrics and "fold0/val/f1_macro" in run.data.metrics


def test_interrupted_and_killed_study_resumes_as_if_uninterrupted(store, three_trials):
    """Ctrl-C during the second trial; the same command again, SIGKILLed while it redoes that trial; the same
    command once more: it redoes the trial a second time and stops at the target. The finished trial is neither
    rerun nor relogged, both stopped runs end KILLED, and every configuration and value equals the uninterrupted
    `three` study's (same seed and options), slot by slot."""
    journal = str(store["root"] / "interrupt.log")
    command = [sys.executable, "-m", "mtl_suite", "tune", "--stage", "stage3", *TINY, "--study-name", "resume",
               "--storage", journal, "--tracking-uri", store["mlflow"], "--experiment", EXPERIMENT,
               "--pruner", "none", "--trials", "2", "--max-retry", "2"]
    storage = lambda: optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))  # noqa
    # "During trial N": RUNNING with its whole configuration drawn (user attr `params`, set after its MLflow run
    # opened, before it trains), so the redo can be compared with it and most of the trial is left for the signal.
    mid_trial = lambda number: lambda: (  # noqa: E731
        _states(storage, "resume")[number:number + 1] == ["RUNNING"]
        and "params" in _trial(storage, "resume", number).user_attrs)
    stop(command, store, lambda: _states(storage, "resume")[:1] == ["COMPLETE"] and mid_trial(1)(), signal.SIGINT)
    assert _states(storage, "resume") == ["COMPLETE", "FAIL", "WAITING"]  # the interrupted trial is queued again
    first_run = runs_of(store, "resume")[1][0].info.run_id
    stop(command, store, mid_trial(2), signal.SIGKILL)  # killed while it redoes the configuration
    assert _states(storage, "resume") == ["COMPLETE", "FAIL", "RUNNING"]

    result = invoke(*command[3:])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="resume", storage=storage())
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert study.trials[1].params == study.trials[2].params == study.trials[3].params
    assert study.trials[3].system_attrs["failed_trial"] == 1
    parents, trials = runs_of(store, "resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the same study run, resumed
    assert [(r.data.tags["trial"], r.data.tags["state"], r.info.status) for r in trials] == [
        ("0", "COMPLETE", "FINISHED"), ("1", "KILLED", "KILLED"), ("2", "KILLED", "KILLED"),
        ("3", "COMPLETE", "FINISHED")]
    assert trials[0].info.run_id == first_run and trials[3].data.tags["retry_of"] == "1"
    # slot by slot, the uninterrupted study of the same seed: same parameters, same values
    reference = optuna.load_study(study_name="three", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(store["optuna"])))
    for ref, got in ((reference.trials[0], study.trials[0]), (reference.trials[1], study.trials[3])):
        assert got.params == ref.params
        assert got.value == pytest.approx(ref.value, abs=1e-6)
    again = invoke(*command[3:])  # target reached: nothing runs
    assert again.exit_code == 0 and [t.state.name for t in optuna.load_study(
        study_name="resume", storage=storage()).trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]


def stop(command, store, condition, signum):
    """Start the command, send `signum` once `condition` holds, wait for the process to end."""
    # A shell's Ctrl-C reaches a process whose SIGINT is at its default. pytest itself may run with SIGINT ignored
    # (a non-interactive shell starts its background jobs so, as POSIX asks: `pytest &` in a script), its children
    # inherit that across exec, and Python then never raises KeyboardInterrupt.
    worker = subprocess.Popen(command, cwd=store["root"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(condition, worker, 300)
        worker.send_signal(signum)
        worker.wait(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode != 0


def test_keras_tuner_engine_runs_two_trials(store, three_trials):
    result = invoke("tune", "--engine", "keras-tuner", "--stage", "stage3", *TINY, "--trials", "2",
                    "--study-name", "kt", "--storage", store["root"] / "keras-tuner",
                    "--tracking-uri", store["mlflow"], "--experiment", EXPERIMENT)
    assert result.exit_code == 0, result.output
    parents, trials = runs_of(store, "kt")
    assert len(parents) == 1 and parents[0].data.tags["engine"] == "keras-tuner"
    assert [r.data.tags["state"] for r in trials] == ["COMPLETE", "COMPLETE"]
    for run in trials:
        assert run.data.tags["engine"] == "keras-tuner"
        assert {"train.learning_rate", "search.learning_rate"} <= set(run.data.params)
        assert 0 <= run.data.metrics["value"] <= 1
    client = mlflow.MlflowClient()
    names = {a.path for a in client.list_artifacts(parents[0].info.run_id, "study")}
    assert "study/best_params.yaml" in names
    assert parents[0].data.metrics["best_value"] == pytest.approx(max(r.data.metrics["value"] for r in trials))


def test_bad_options_are_one_line_errors(store, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  dropout: {type: float, low: 0.6, high: 0.2}\n")
    result = tune_cli(store, "bad", "--space", bad)
    assert result.exit_code == 2 and f"{bad}: 'params.dropout': low (0.6) is greater than high (0.2)" in result.output
    result = tune_cli(store, "bad", "--sampler", "annealing")
    assert result.exit_code == 2 and "'annealing' is not one of 'tpe', 'random', 'cmaes', 'gp'" in result.output
    result = tune_cli(store, "bad", "--metric", "f1")
    assert result.exit_code == 2 and "binary task" in result.output


def wait_for(condition, process, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return
        except (KeyError, ValueError):  # the study does not exist yet
            pass
        if process.poll() is not None:
            stderr = process.stderr.read().decode()[-3000:] if process.stderr and hasattr(process.stderr, "read") \
                else ""
            raise AssertionError(f"worker exited with {process.returncode} before the condition held: {stderr}")
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the worker")


def _states(storage, study):
    return [t.state.name for t in optuna.load_study(study_name=study, storage=storage()).trials]


def _trial(storage, study, number):
    trials = optuna.load_study(study_name=study, storage=storage()).trials
    if len(trials) <= number:
        raise KeyError(number)
    return trials[number]
