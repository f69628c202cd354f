"""`mtl-suite assess` end to end on the bundled sample with the tiny backbone: one assessment of two splits whose
first attempt dies on the second split, then the same command again, which reuses the finished split and completes.
Every figure of the report is recomputed from the per-image predictions CSV beside it, and nothing is registered.
Then the same assessment by two worker processes sharing its units through an Optuna journal file: each trains one
split, one of them writes the report, and every split's figures are those of the one process."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from scipy.stats import binomtest, t
from typer.testing import CliRunner

from conftest import tiny_recipe
from mtl_suite.cli import app

TINY_RECIPE = tiny_recipe("classical")
SEEDS = (1000, 1001)

# the workers import this checkout's mtl_suite: not pytest's sys.path, which a loaded pyfunc extends with the code
# copy it logged (under ./mlruns), whose bundled sample is another folder
REPO = Path(__file__).resolve().parents[2]
BARRIER_WORKER = Path(__file__).with_name("barrier_worker.py")


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def assessed(tmp_path_factory):
    root = tmp_path_factory.mktemp("assess")
    os.environ["MTL_SUITE_CACHE"] = str(root / "cache")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE, encoding="utf-8")
    uri = f"sqlite:///{root}/mlflow.db"
    args = ["assess", str(recipe), "--splits", "2", "--out", str(root / "out"), "--tracking-uri", uri,
            "--experiment", "a"]
    import mtl_suite.workflows.stage as stage

    real = stage.run_stage

    def dies_on_the_second_split(request, say=print):
        if request.config.data.seed == SEEDS[1]:
            raise Crash("the machine went away")
        return real(request, say)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage, "run_stage", dies_on_the_second_split)
        first = CliRunner().invoke(app, args)
    assert isinstance(first.exception, Crash), first.output
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("a").experiment_id
    after_crash = client.search_runs([experiment], "tags.run_kind = 'assessment'")
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    runs = client.search_runs([experiment])
    return {"root": root, "recipe": recipe, "client": client, "runs": runs, "after_crash": after_crash,
            "output": second.output, "out": root / "out"}


def by_kind(assessed, kind):
    return [r for r in assessed["runs"] if r.data.tags.get("run_kind") == kind]


def test_a_rerun_after_a_crash_resumes_the_assessment_and_reuses_the_finished_split(assessed):
    (crashed,) = assessed["after_crash"]
    assert crashed.info.status == "FAILED"
    (run,) = by_kind(assessed, "assessment")
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    stages = by_kind(assessed, "stage")
    assert sorted(int(r.data.tags["assessment_split"]) for r in stages) == list(SEEDS)  # split 1000 trained once
    assert all(r.data.tags["mlflow.parentRunId"] == run.info.run_id for r in stages)
    assert f"split {SEEDS[0]}: reusing finished run" in assessed["output"]
    assert f"resuming assessment run {run.info.run_id}" in assessed["output"]


def test_nothing_is_registered(assessed):
    assert assessed["client"].search_registered_models() == []
    assert by_kind(assessed, "promotion") == [] and by_kind(assessed, "recipe") == []


def test_every_figure_recomputes_from_the_predictions_csv(assessed):
    out, client = assessed["out"], assessed["client"]
    table = pd.read_csv(out / "predictions.csv")
    report = json.loads((out / "assessment.json").read_text(encoding="utf-8"))["assessment"]
    stages = {r.info.run_id: r for r in by_kind(assessed, "stage")}
    accuracies = []
    for row in report["splits"]:
        part = table[table["split_seed"] == row["split_seed"]]
        run = stages[row["run_id"]]
        assert set(part["run_id"]) == {row["run_id"]} and len(part) == run.data.metrics["test/n"]
        accuracy = (part["predicted"] == part["label"]).mean()
        assert accuracy == pytest.approx(row["accuracy"]) == pytest.approx(run.data.metrics["test/accuracy"])
        colour = (part["colour_predicted"] == part["label"]).mean()
        assert colour == pytest.approx(row["colour_accuracy"])
        assert colour == pytest.approx(run.data.metrics["shortcut/best/test_accuracy"])  # the run's own figure
        accuracies.append(accuracy)
    mean, sd = sum(accuracies) / 2, pd.Series(accuracies).std()
    half = t.ppf(0.975, 1) * sd / math.sqrt(2)
    assert (report["accuracy"]["mean"], report["accuracy"]["low"]) == pytest.approx((mean, mean - half))
    leukemia, normal = table[table["label"] != "Benign"], table[table["label"] == "Benign"]
    for key, rows, hit in (("sensitivity", leukemia, leukemia["predicted"] != "Benign"),
                           ("specificity", normal, normal["predicted"] == "Benign")):
        figure = report["binary"][key]
        interval = binomtest(int(hit.sum()), len(rows)).proportion_ci(0.95, method="wilson")
        assert (figure["successes"], figure["n"]) == (hit.sum(), len(rows))
        assert (figure["low"], figure["high"]) == pytest.approx((interval.low, interval.high))
    probabilities = table[[f"p_{c}" for c in report["classes"]]].to_numpy()
    onehot = pd.get_dummies(table["label"]).reindex(columns=report["classes"], fill_value=0).to_numpy(float)
    assert report["calibration"]["brier"] == pytest.approx(((probabilities - onehot) ** 2).sum(axis=1).mean())


def test_the_report_names_the_command_the_recipe_copy_and_where_everything_went(assessed):
    out = assessed["out"]
    text = (out / "report.md").read_text(encoding="utf-8")
    digest = hashlib.sha256((out / "tiny.yaml").read_bytes()).hexdigest()
    assert (out / "tiny.yaml").read_text(encoding="utf-8") == TINY_RECIPE and digest in text
    assert f"mtl-suite assess {assessed['recipe']} --splits 2" in text and "code: git " in text
    assert "data seeds 1000-1001" in text and "colour alone" in text
    (run,) = by_kind(assessed, "assessment")
    logged = {a.path for a in assessed["client"].list_artifacts(run.info.run_id, "assessment")}
    assert logged == {f"assessment/{name}" for name in ("report.md", "assessment.json", "predictions.csv",
                                                         "tiny.yaml")}
    assert assessed["output"].strip().splitlines()[-1] == str(out / "report.md")  # stdout: the report
    assert run.info.run_id in assessed["output"] and str(out / "predictions.csv") in assessed["output"]


# A worker whose first unit waits (up to a minute) until the other worker holds one too: both have claimed a unit
# before either trains, so the two splits are trained by different processes whatever their start-up times.


def test_two_workers_share_the_units_and_get_the_figures_of_one_process(assessed, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MTL_SUITE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen([sys.executable, str(BARRIER_WORKER), str(barrier), "assess",
                                 str(assessed["recipe"]), "--splits", "2", "--out", str(tmp_path / f"out{i}"),
                                 "--tracking-uri", uri, "--experiment", "a", "--storage", str(tmp_path / "units.log")],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("a").experiment_id])
    stages = [r for r in runs if r.data.tags.get("run_kind") == "stage"]
    assert len(stages) == 2 and len({r.data.tags["mtl.pid"] for r in stages}) == 2  # one split each
    assert all(r.data.tags["assessment_unit"].startswith("assess-") for r in stages)
    (run,) = [r for r in runs if r.data.tags.get("run_kind") == "assessment"]
    assert run.info.status == "FINISHED"
    written = [i for i in range(2) if (tmp_path / f"out{i}" / "report.md").is_file()]
    assert len(written) == 1  # the last worker to finish wrote the report; the other names it
    report = tmp_path / f"out{written[0]}" / "report.md"
    assert all(Path(output.strip().splitlines()[-1]).resolve() == report.resolve() for output in outputs)
    shared = json.loads((report.parent / "assessment.json").read_text(encoding="utf-8"))["assessment"]
    alone = json.loads((assessed["out"] / "assessment.json").read_text(encoding="utf-8"))["assessment"]
    figures = ("split_seed", "accuracy", "colour_accuracy")
    assert [[row[k] for k in figures] for row in shared["splits"]] == [[row[k] for k in figures]
                                                                       for row in alone["splits"]]
    assert shared["accuracy"] == alone["accuracy"]


ENSEMBLE_RECIPE = tiny_recipe("stage3", members="[{}, {train.seed: 1}]", cell_size=32)


@pytest.mark.slow
def test_an_ensemble_recipe_is_trained_as_train_does_on_every_split(tmp_path, monkeypatch):
    """Per split: one stage 1 -> stage 2 chain, both members' stage 3 from that stage 2, their ensemble, scored."""
    monkeypatch.setenv("MTL_SUITE_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "pair.yaml"
    recipe.write_text(ENSEMBLE_RECIPE, encoding="utf-8")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(app, ["assess", str(recipe), "--splits", "2", "--out", str(tmp_path / "out"),
                                      "--tracking-uri", uri, "--experiment", "e", "--quiet"])
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("e").experiment_id], "tags.run_kind = 'stage'")
    for seed in SEEDS:
        split = {r.info.run_id: r.data.tags for r in runs if r.data.tags.get("assessment_split") == str(seed)}
        (ensemble,) = [tags for tags in split.values() if "ensemble_members" in tags]
        trained = {run: tags for run, tags in split.items() if "ensemble_members" not in tags}
        (stage1,) = [run for run, tags in trained.items() if tags["stage"] == "stage1"]
        (stage2,) = [run for run, tags in trained.items() if tags["stage"] == "stage2"]
        members = [run for run, tags in trained.items() if tags["stage"] == "stage3"]
        assert trained[stage2]["parent_stage_run"] == stage1 and len(members) == 2
        assert {trained[run]["parent_stage_run"] for run in members} == {stage2}
        assert sorted(ensemble["ensemble_members"].split(",")) == sorted(members)
    table = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert sorted(table["split_seed"].unique()) == list(SEEDS)


def test_fewer_than_two_splits_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["assess", str(tmp_path / "none.yaml"), "--splits", "1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "error: --splits must be at least 2: a t-interval needs two or more splits (the headline protocol uses at "
        "least 5). Received: 1"]
