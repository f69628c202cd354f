"""Stages 1-3 and the classical baseline end to end on the bundled sample with the tiny backbone, asserting what
landed in a temporary MLflow store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mtl_suite.cli import app

FAST = ["--backbone", "tiny", "--weights", "none", "--image-size", "48", "--folds", "2", "--epochs", "1",
        "--finetune-epochs", "1", "--unfreeze-layers", "2", "--batch-size", "32", "--quiet"]


# Backbone run every epoch (no feature cache): slow enough for a signal to land mid-fold.
RESUMABLE = ["classical", "--backbone", "tiny", "--weights", "none", "--image-size", "48", "--folds", "2",
             "--epochs", "3", "--finetune-epochs", "4", "--no-feature-cache", "--unfreeze-layers", "2",
             "--batch-size", "16", "--early-stopping-patience", "0", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    uri = f"sqlite:///{root}/mlflow.db"
    os.environ["MTL_SUITE_CACHE"] = str(root / "cache")
    result = invoke("stage3", *FAST[:-1], "--tracking-uri", uri, "--experiment", "t")  # not quiet: progress shown
    assert result.exit_code == 0, result.output
    classical = invoke(*RESUMABLE, "--tracking-uri", uri, "--experiment", "t")  # also the kill test's reference
    assert classical.exit_code == 0, classical.output
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("t")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return {"uri": uri, "client": client, "runs": runs, "output": result.output + classical.output}


def stage_run(store, stage):
    found = [r for r in store["runs"] if r.data.tags.get("run_kind") == "stage" and r.data.tags["stage"] == stage]
    assert len(found) == 1, [r.info.run_name for r in store["runs"]]
    return found[0]


def children(store, run):
    return [r for r in store["runs"] if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]


def artifact_paths(client, run_id, path=""):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def test_stage3_runs_missing_stages_first_and_links_them(store):
    s1, s2, s3 = (stage_run(store, s) for s in ("stage1", "stage2", "stage3"))
    assert s2.data.tags["parent_stage_run"] == s1.info.run_id
    assert s3.data.tags["parent_stage_run"] == s2.info.run_id
    assert s3.data.tags["stage1_run"] == s1.info.run_id and s3.data.tags["stage2_run"] == s2.info.run_id
    for run in (s1, s2, s3):
        assert run.info.status == "FINISHED"
        assert run.data.tags["backbone"] == "tiny" and run.data.tags["seed"] == "42"
        assert run.data.tags["git_commit"]
    assert s2.data.tags["task"] == "binary" and s2.data.tags["classes"] == "normal,blast"
    assert s3.data.tags["task"] == "multiclass" and s3.data.tags["classes"] == "Benign,Early,Pre,Pro"
    assert "running stage2 first" in store["output"] and s3.info.run_id in store["output"]


def test_each_fold_is_a_nested_run_with_epoch_curves(store):
    s3 = stage_run(store, "stage3")
    nested = children(store, s3)
    assert sorted(r.data.tags["fold"] for r in nested) == ["final", "fold-0", "fold-1"]
    client = store["client"]
    for run in nested:
        assert run.info.status == "FINISHED" and run.data.tags["stage"] == "stage3"
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == [0, 1]  # warm-up epoch, then fine-tuning epoch continues the steps
    fold0 = next(r for r in nested if r.data.tags["fold"] == "fold-0")
    assert {"fold/accuracy", "fold/f1_macro", "fold/auc_macro"} <= set(fold0.data.metrics)
    assert len(client.get_metric_history(fold0.info.run_id, "val/loss")) == 2


def test_stage_run_holds_aggregates_test_metrics_and_artifacts(store):
    s3 = stage_run(store, "stage3")
    fold_f1 = [r.data.metrics["fold/f1_macro"] for r in children(store, s3) if r.data.tags["fold"] != "final"]
    metrics = s3.data.metrics
    assert metrics["cv/f1_macro_mean"] == pytest.approx(np.mean(fold_f1))
    assert metrics["cv/f1_macro_std"] == pytest.approx(np.std(fold_f1, ddof=1))
    for key in ("cv/accuracy_mean", "cv/precision_macro_mean", "cv/recall_macro_mean", "cv/auc_micro_mean",
                "cv/auc_macro_mean", "cv/auc/Benign_mean", "test/accuracy", "test/f1_macro", "test/auc_macro"):
        assert key in metrics, key
    paths = set(artifact_paths(store["client"], s3.info.run_id))
    for expected in ("cv/confusion_matrix.png", "cv/roc.png", "cv/curves.png", "cv/oof_predictions.csv",
                     "cv/classification_report.txt", "test/confusion_matrix.png", "test/predictions.csv",
                     "backbone/backbone.npz", "data/split.json", "config.yaml", "model_info.json"):
        assert expected in paths, expected
    run = mlflow.get_run(s3.info.run_id)
    assert run.inputs.dataset_inputs and run.data.tags["split_digest"]
    assert mlflow.search_logged_models(filter_string=f"source_run_id = '{s3.info.run_id}'", output_format="list")


def test_the_final_stage_carries_its_detector_and_sets_and_every_figure_is_in_its_rows(store, tmp_path):
    """Stage 3 (the served model) logs reliability/ (detector, threshold, conformal calibration), its test-part
    figures recompute from the per-image rows it logs, its folds carry the development-side shifts; the stages
    that only start another carry none of it."""
    s3, s2 = stage_run(store, "stage3"), stage_run(store, "stage2")
    metrics = s3.data.metrics
    paths = set(artifact_paths(store["client"], s3.info.run_id))
    assert {"reliability/detector.keras", "reliability/reliability.json", "reliability/test_readings.csv"} <= paths
    assert not any(p.startswith("reliability/") for p in artifact_paths(store["client"], s2.info.run_id))
    rows = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=s3.info.run_id,
                                                           artifact_path="reliability/test_readings.csv",
                                                           dst_path=str(tmp_path)))
    assert len(rows) == metrics["test/n"]
    assert metrics["test/ood/flagged_share"] == pytest.approx(1 - rows["in_distribution"].mean())
    assert metrics["test/ood/flagged_share"] <= 0.2  # in-lab images: the threshold aims at 1.5% of them
    unflagged = rows[rows["in_distribution"]]
    assert metrics["test/ood/unflagged_accuracy"] == pytest.approx(np.mean(unflagged["predicted"] == unflagged["label"]))
    covered = [label in str(s).split("|") for label, s in zip(rows["label"], rows["prediction_set"])]
    assert metrics["test/conformal_99/coverage"] == pytest.approx(np.mean(covered))
    assert metrics["conformal/calibration_n"] == metrics["ood/heldout_n"] == 76  # two folds over 76 images
    for key in ("stain_accuracy", "magnified_accuracy", "magnified_flagged_share", "val_flagged_share"):
        assert f"cv/shift/{key}_mean" in metrics, key
    assert "stage3 reliability: " in store["output"] and "flagged as unlike the training images" in store["output"]


def test_final_stages_record_their_look_at_the_test_part_and_count_the_earlier_ones(store):
    """Stage 3 and then the classical run score the same outer test part (one split of the sample): each records
    its test images' digest and its configuration, the classical run counts stage 3 as an earlier configuration,
    and says so; the stages that only start another score no test part of their own."""
    from mtl_suite.config import DataConfig
    from mtl_suite.data.looks import part_digest
    from mtl_suite.tasks import smear_split

    split = smear_split(DataConfig(folds=2))
    digest = part_digest(split.entries[i].sha256 for i in split.test_indices)
    s3, classical = stage_run(store, "stage3"), stage_run(store, "classical")
    for run, earlier in ((s3, "0"), (classical, "1")):
        tags = run.data.tags
        assert tags["test_part_digest"] == digest and tags["test_part_images"] == str(len(split.test_indices))
        assert tags["test_part_model"] == f"run:{run.info.run_id}"
        assert tags["test_part_earlier_configurations"] == earlier
    assert s3.data.tags["test_part_configuration"] == "stage3 tiny multiclass, seed 42, refit"
    assert not any("test_part_digest" in stage_run(store, s).data.tags for s in ("stage1", "stage2"))
    assert "stage3 finished: run" in store["output"]
    assert f"classical run {classical.info.run_id} (experiment " in store["output"]
    assert "this test part had been scored by 1 earlier configuration\n" in store["output"]


def test_stage3_starts_from_stage2_weights(store, tmp_path):
    """Weight transfer really transfers: stage 3's initial backbone is stage 2's final one, which training
    changed from stage 1's."""
    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.transfer import backbone_state, load_backbone
    from mtl_suite.training.stages import model_factory
    from mtl_suite.config import TrainConfig

    s1, s2 = stage_run(store, "stage1"), stage_run(store, "stage2")
    w1 = mlflow.artifacts.download_artifacts(run_id=s1.info.run_id, artifact_path="backbone/backbone.npz",
                                             dst_path=str(tmp_path / "1"))
    w2 = mlflow.artifacts.download_artifacts(run_id=s2.info.run_id, artifact_path="backbone/backbone.npz",
                                             dst_path=str(tmp_path / "2"))
    _, stage3_backbone = model_factory("tiny", 48, w2, "dense_dropout", 4, TrainConfig())()
    reference, _ = build_backbone("tiny", 48, "none")
    load_backbone(reference, w2)
    from_stage2, _ = backbone_state(reference)
    initial, _ = backbone_state(stage3_backbone)
    for key in from_stage2:
        np.testing.assert_array_equal(initial[key], from_stage2[key])
    load_backbone(reference, w1)
    from_stage1, _ = backbone_state(reference)
    assert any(not np.array_equal(from_stage1[k], from_stage2[k]) for k in from_stage1)


def test_classical_baseline_starts_from_imagenet_without_parent(store):
    run = stage_run(store, "classical")
    assert run.data.tags["parent_stage_run"] == "" and run.data.tags["weights"] == "none"
    assert run.data.tags["split_digest"] == stage_run(store, "stage3").data.tags["split_digest"]
    assert "cv/f1_macro_mean" in run.data.metrics


def test_explicit_parent_of_another_backbone_is_refused(store):
    s2 = stage_run(store, "stage2")
    result = invoke("stage3", *FAST[2:], "--backbone", "mobilenet_025", "--parent-run", s2.info.run_id,
                    "--tracking-uri", store["uri"], "--experiment", "t")
    assert result.exit_code == 2
    assert "used backbone 'tiny'" in result.output and "Traceback" not in result.output


def test_parent_of_the_wrong_stage_is_refused(store):
    s1 = stage_run(store, "stage1")
    result = invoke("stage3", *FAST, "--parent-run", s1.info.run_id, "--tracking-uri", store["uri"],
                    "--experiment", "t")
    assert result.exit_code == 2 and "is a stage1 run; expected a stage2 run" in result.output


def test_failed_parent_is_refused(store):
    client = store["client"]
    experiment = client.get_experiment_by_name("t")
    failed = client.create_run(experiment.experiment_id, tags={"stage": "stage2", "backbone": "tiny",
                                                               "run_kind": "stage"})
    client.set_terminated(failed.info.run_id, "FAILED")
    result = invoke("stage3", *FAST, "--parent-run", failed.info.run_id, "--tracking-uri", store["uri"],
                    "--experiment", "t")
    assert result.exit_code == 2 and "did not finish (status FAILED)" in result.output


VARIANTS = ("hist8", "hist16", "hist32", "stats", "hist32_stats")


def test_trained_stages_log_the_colour_shortcut_and_say_it_beside_the_cnn(store):
    """Every trained stage logs each colour baseline on its own split, the best (by CV) under shortcut/best, the
    stain-shift robustness of both, and the test accuracy's interval and majority class; stage 3 says it."""
    import re

    for stage in ("stage2", "stage3", "classical"):
        run = stage_run(store, stage)
        m, best = run.data.metrics, run.data.tags["shortcut/best_variant"]
        for variant in VARIANTS:
            assert 0 <= m[f"shortcut/{variant}/cv_accuracy"] <= 1 and 0 <= m[f"shortcut/{variant}/test_accuracy"] <= 1
        assert m["shortcut/best/cv_accuracy"] == max(m[f"shortcut/{v}/cv_accuracy"] for v in VARIANTS)
        assert m["shortcut/best/test_accuracy"] == m[f"shortcut/{best}/test_accuracy"]
        n = m["test/n"]
        assert n > 0 and m["test/accuracy"] * n == pytest.approx(round(m["test/accuracy"] * n))
        assert 0 <= m["test/accuracy_ci_low"] <= m["test/accuracy"] <= m["test/accuracy_ci_high"] <= 1
        assert m["test/accuracy_ci_high"] - m["test/accuracy_ci_low"] > 0.1  # some dozen test images: a wide interval
        assert 1 / len(run.data.tags["classes"].split(",")) <= m["test/majority_class_accuracy"] <= 1
        assert 0 <= m["robustness/stain_shift_accuracy"] <= 1
        assert 0 <= m["robustness/shortcut_stain_shift_accuracy"] <= 1
    m3 = stage_run(store, "stage3").data.metrics
    best3 = stage_run(store, "stage3").data.tags["shortcut/best_variant"]
    assert (f"stage3: CNN test accuracy {m3['test/accuracy']:.3f} vs colour alone "
            f"{m3['shortcut/best/test_accuracy']:.3f} ({best3}+lr)") in store["output"]
    n3 = int(m3["test/n"])
    said = re.search(rf"stage3 finished: .*test accuracy {m3['test/accuracy']:.3f} \((\d+)/{n3}; 95% CI "
                     rf"(\d\.\d\d)-(\d\.\d\d); majority class (\d\.\d\d)\)", store["output"])
    assert said, store["output"][-2000:]
    assert int(said.group(1)) == round(m3["test/accuracy"] * n3)
    assert float(said.group(2)) == pytest.approx(m3["test/accuracy_ci_low"], abs=0.005)
    assert float(said.group(4)) == pytest.approx(m3["test/majority_class_accuracy"], abs=0.005)


def test_multiclass_runs_are_also_read_as_normal_vs_leukemia(store, tmp_path):
    """The sample's Benign class is normal: a multiclass run's logged predictions, grouped as Benign vs the other
    classes, give its as_binary metrics (CV per fold, test with n and interval) and the line stage 3 says; the
    binary cell stage has none."""
    import pandas as pd

    client = store["client"]
    for stage in ("stage3", "classical"):
        run = stage_run(store, stage)
        m = run.data.metrics
        test = pd.read_csv(client.download_artifacts(run.info.run_id, "test/predictions.csv", str(tmp_path)))
        right = (test["label"] == "Benign") == (test["predicted"] == "Benign")
        assert m["test/as_binary/accuracy"] == pytest.approx(right.mean()) and m["test/as_binary/n"] == len(test)
        low, high = m["test/as_binary/accuracy_ci_low"], m["test/as_binary/accuracy_ci_high"]
        assert low <= m["test/as_binary/accuracy"] <= high
        oof = pd.read_csv(client.download_artifacts(run.info.run_id, "cv/oof_predictions.csv", str(tmp_path)))
        oof["right"] = (oof["label"] == "Benign") == (oof["predicted"] == "Benign")
        assert m["cv/as_binary/accuracy_mean"] == pytest.approx(oof.groupby("fold")["right"].mean().mean())
        assert 0 <= m["shortcut/best/as_binary/cv_accuracy"] <= 1
        assert m["shortcut/best/as_binary/test_accuracy"] >= m["shortcut/best/test_accuracy"]  # grouping only forgives
    m3 = stage_run(store, "stage3").data.metrics
    assert (f"stage3 read as Benign vs leukemia: CNN test accuracy {m3['test/as_binary/accuracy']:.3f} "
            f"({round(m3['test/as_binary/accuracy'] * m3['test/n'])}/{int(m3['test/n'])}; 95% CI") in store["output"]
    assert not any(k.startswith(("test/as_binary", "cv/as_binary")) for k in stage_run(store, "stage2").data.metrics)


def test_stain_control_is_a_layer_of_the_logged_model(tmp_path):
    """--stain reaches the model: the logged Keras model holds the layer (safe-mode load) and the run its param."""
    from mtl_suite.tracking.report_queries import load_run_model

    uri, previous = f"sqlite:///{tmp_path}/m.db", mlflow.get_tracking_uri()
    try:
        result = invoke("classical", *FAST, "--folds", "1", "--finetune-epochs", "0", "--stain", "gray",
                        "--tracking-uri", uri, "--experiment", "stain")
        assert result.exit_code == 0, result.output
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name("stain").experiment_id], "tags.run_kind = 'stage'")[0]
        assert run.data.params["train.stain"] == "gray"
        model = load_run_model(run.info.run_id)
        assert model.get_layer("backbone").get_layer("stain").mode == "gray"
    finally:
        mlflow.set_tracking_uri(previous)


@contextmanager
def classical_run(tmp_path, experiment: str, *options: str):
    """A classical stage run (FAST, plus `options`) in a fresh store made current while the block runs: yields the
    client, the stage run, its logged model, its logged test predictions and the pixels of those test images."""
    import pandas as pd

    from mtl_suite.data.images import read_resized
    from mtl_suite.paths import SAMPLE_IMAGES
    from mtl_suite.tracking.report_queries import load_run_model

    uri, previous = f"sqlite:///{tmp_path}/m.db", mlflow.get_tracking_uri()
    try:
        result = invoke("classical", *FAST, *options, "--tracking-uri", uri, "--experiment", experiment)
        assert result.exit_code == 0, result.output
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        run = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                 "tags.run_kind = 'stage'")[0]
        logged = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                                 artifact_path="test/predictions.csv"))
        pixels = np.stack([read_resized(SAMPLE_IMAGES / path, 48) for path in logged["path"]]).astype("float32")
        yield client, run, load_run_model(run.info.run_id), logged, pixels
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_fold_ensemble_with_flips_is_logged_as_one_model_that_predicts_what_was_scored(tmp_path):
    """--ensemble folds --tta flips: no refit, the logged model is the two fold models averaged over four flips (one
    Keras graph, safe-mode load), and it gives the outer-test probabilities the run logged, from the image files."""
    from mtl_suite.models.ensemble import prediction_parts

    with classical_run(tmp_path, "ensemble", "--ensemble", "folds", "--tta", "flips") as (
            client, run, model, logged, pixels):
        assert run.data.tags["final_model"] == "fold_ensemble_2" and run.data.tags["tta"] == "flips"
        assert "backbone" not in [a.path for a in client.list_artifacts(run.info.run_id)]  # it starts no stage
        flips = prediction_parts(model)
        assert len(flips) == 4 and len(prediction_parts(flips[0][1])) == 2
        probabilities = logged[[c for c in logged.columns if c.startswith("p_")]].to_numpy()
        np.testing.assert_allclose(model.predict(pixels, verbose=0), probabilities, atol=1e-4)
        assert run.data.metrics["test/accuracy"] == pytest.approx(
            float((logged["predicted"] == logged["label"]).mean()))


@pytest.mark.parametrize("args,message", [
    (["--stain", "macenko"], "'macenko' is not one of 'none', 'gray', 'reinhard'"),
    (["--backbone", "resnet9000"], "'resnet9000' is not one of 'inception_v3', 'xception'"),
    (["--backbone", "inception_v3", "--image-size", "64"], "below inception_v3's minimum of 75"),
    (["--task", "ternary"], "'ternary' is not one of 'binary', 'multiclass'"),
    (["--epochs", "-1"], "'train.warmup_epochs' must be 0 or more"),
])
def test_bad_options_are_one_clear_line(tmp_path, args, message):
    result = invoke("classical", *FAST, *args, "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_binary_task_without_a_normal_class_needs_a_mapping(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("A", "B", "C"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    result = invoke("classical", *FAST, "--task", "binary", "--data", str(tmp_path / "data"),
                    "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert result.exit_code == 2 and "Pass --normal-class NAME" in result.output


def start_run(uri: str, experiment: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mtl_suite", *RESUMABLE, "--tracking-uri", uri,
                             "--experiment", experiment], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_fold(client, process: subprocess.Popen, experiment: str, fold: str) -> None:
    deadline, found = time.time() + 180, []
    while time.time() < deadline and not found and process.poll() is None:
        time.sleep(0.5)
        if client.get_experiment_by_name(experiment):
            found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                       f"tags.fold = '{fold}'")
    assert found, f"the run never reached {fold}"


@pytest.mark.slow
def test_killed_runs_are_marked_and_a_rerun_resumes_to_the_uninterrupted_result(store, tmp_path):
    """SIGTERM in fold 0: the runs are closed KILLED. SIGKILL in fold 1 of the rerun: nothing runs, the runs stay
    RUNNING. The next rerun adopts it and ends with exactly the uninterrupted run's (the store's classical run)
    metrics."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()

    process = start_run(uri, "k")
    wait_for_fold(client, process, "k", "fold-0")
    process.send_signal(signal.SIGTERM)  # unwinds like Ctrl-C: open runs are closed as KILLED
    process.wait(timeout=60)
    experiment_id = client.get_experiment_by_name("k").experiment_id
    statuses = {r.data.tags.get("run_kind"): r.info.status for r in client.search_runs([experiment_id])}
    assert statuses == {"stage": "KILLED", "fold": "KILLED"}

    process = start_run(uri, "k")
    wait_for_fold(client, process, "k", "fold-1")
    time.sleep(2)  # into fold 1's training
    process.kill()  # SIGKILL: no handler runs, the runs are left RUNNING
    process.wait(timeout=30)

    resumed = invoke(*RESUMABLE, "--tracking-uri", uri, "--experiment", "k")
    assert resumed.exit_code == 0, resumed.output

    stage_runs = client.search_runs([experiment_id], "tags.run_kind = 'stage'", order_by=["attributes.start_time"])
    assert [r.info.status for r in stage_runs] == ["KILLED", "KILLED", "FINISHED"]
    first, second, new = stage_runs
    assert second.data.tags["resumed_from"] == first.info.run_id
    assert new.data.tags["resumed_from"] == second.info.run_id and second.data.tags["resumed_by"] == new.info.run_id
    folds = client.search_runs([experiment_id], "tags.run_kind = 'fold'")  # deleted runs are not listed
    assert sorted((r.data.tags["fold"], r.info.status) for r in folds) == [
        ("final", "FINISHED"), ("fold-0", "FINISHED"), ("fold-1", "FINISHED")]
    assert all(r.data.tags["mlflow.parentRunId"] == new.info.run_id for r in folds)
    assert next(r for r in folds if r.data.tags["fold"] == "fold-0").data.tags["adopted_from"] == second.info.run_id

    want = stage_run(store, "classical").data.metrics
    got = new.data.metrics
    keys = [k for k in want if k.startswith(("cv/", "test/"))]
    assert keys and {k: got[k] for k in keys} == {k: want[k] for k in keys}


def test_colour_fusion_is_logged_as_one_model_that_predicts_what_was_scored(tmp_path):
    """--colour-fusion average on the binary task (a single sigmoid head): the logged model is the refit network and
    a colour classifier averaged in one graph, and it gives the outer-test probabilities the run logged."""
    from mtl_suite.models.ensemble import prediction_parts

    with classical_run(tmp_path, "fused", "--task", "binary", "--colour-fusion", "average") as (
            _, run, model, logged, pixels):
        assert run.data.tags["colour_fusion"] == "average" and run.data.tags["final_model"] == "refit"
        assert "robustness/stain_shift_accuracy" in run.data.metrics
        assert [member.name for _, member in prediction_parts(model)][1] == "colour"
        positive = logged[[c for c in logged.columns if c.startswith("p_")]].to_numpy()[:, 1:]
        np.testing.assert_allclose(model.predict(pixels, verbose=0), positive, atol=1e-4)
