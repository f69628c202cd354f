"""`mtl-suite promote` and the registered raw-image pyfunc, end to end on two real stage-3 runs (tiny backbone), and
`mtl-suite ensemble` of the two: one stage run whose figures are the runs' logged probabilities averaged, whose model
averages theirs, and which promote and the registered pyfunc take like any other run."""

from __future__ import annotations

import base64
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.workflows.predict import predict_files
from mtl_suite.data.images import read_resized, read_rgb, resize
from mtl_suite.training.metrics import as_class_probabilities
from registry_store import IMAGE_SIZE, SAMPLES, trained_store

pytestmark = pytest.mark.slow
NAME = "mtl-all-classifier"


@pytest.fixture(scope="module")
def store():
    return trained_store()


@pytest.fixture(scope="module")
def client(store):
    mlflow.set_tracking_uri(store.uri)
    return mlflow.MlflowClient(tracking_uri=store.uri)


def promote(store, *args: str):
    result = CliRunner().invoke(app, ["promote", "--tracking-uri", store.uri, "--experiment", store.experiment,
                                      *args])
    return result


def champion(client, name=NAME):
    return client.get_model_version_by_alias(name, "champion")


def aliases(client, name=NAME) -> dict[str, str]:
    return dict(client.get_registered_model(name).aliases)


def expected_best(client, store, metric: str) -> str:
    """Best by the metric, ties to the newer run: computed here from what the runs logged."""
    runs = [client.get_run(r) for r in store.runs]
    return max(runs, key=lambda r: (r.data.metrics[metric], r.info.start_time)).info.run_id


def test_dry_run_changes_nothing(store, client):
    logged_before = len(mlflow.search_logged_models(experiment_ids=[_experiment_id(store)], output_format="list"))
    # test_serving.py may share this store (same worker) and have registered models already
    registered_before = [(m.name, len(client.search_model_versions(f"name = '{m.name}'")))
                         for m in client.search_registered_models()]
    result = promote(store, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "dry run: would register run" in result.output
    assert [(m.name, len(client.search_model_versions(f"name = '{m.name}'")))
            for m in client.search_registered_models()] == registered_before
    after = mlflow.search_logged_models(experiment_ids=[_experiment_id(store)], output_format="list")
    assert len(after) == logged_before


def test_promote_picks_best_and_moves_aliases(store, client):
    best = expected_best(client, store, "cv/f1_macro_mean")
    result = promote(store)
    assert result.exit_code == 0, result.output
    first = champion(client)
    assert first.run_id == best
    assert aliases(client) == {"champion": first.version}
    stage_run = client.get_run(best)
    for text in ("cv/f1_macro_mean", stage_run.data.tags["stage2_run"], stage_run.data.tags["stage1_run"],
                 stage_run.data.tags["dataset_digest"], stage_run.data.tags["split_digest"],
                 "- model: refit, test-time none, colour fusion none; on re-stained test images "):
        assert text in first.description
    # the sample's Benign class: the description also reads the 4-class model as normal vs leukemia
    assert f"test/as_binary/accuracy {stage_run.data.metrics['test/as_binary/accuracy']:.4f}" in first.description
    assert first.tags["dataset_digest"] == stage_run.data.tags["dataset_digest"]

    # Promoting the same run again does nothing.
    again = promote(store)
    assert again.exit_code == 0 and "already champion" in again.output
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1

    # A metric on which the other run is better: it becomes champion, the old one 'previous'.
    other = next(r for r in store.runs if r != best)
    client.log_metric(other, "select/score", 0.9)
    client.log_metric(best, "select/score", 0.5)
    result = promote(store, "--metric", "select/score")
    assert result.exit_code == 0, result.output
    second = champion(client)
    assert second.run_id == other and second.version != first.version
    assert aliases(client) == {"champion": second.version, "previous": first.version}

    # Going back to the worse run is refused without --force and leaves the aliases alone.
    refused = promote(store, "--metric", "select/score", best)
    assert refused.exit_code == 2
    assert "worse than the champion" in refused.output and "--force" in refused.output
    assert aliases(client) == {"champion": second.version, "previous": first.version}
    # a run id finds the run by its id: no --experiment needed (the default experiment is not in this store)
    forced = CliRunner().invoke(app, ["promote", "--tracking-uri", store.uri, "--metric", "select/score",
                                      best, "--force"])
    assert forced.exit_code == 0, forced.output
    third = champion(client)
    assert third.run_id == best
    assert aliases(client) == {"champion": third.version, "previous": second.version}


def test_promote_ties_go_to_the_newer_run(store, client):
    for run in store.runs:
        client.log_metric(run, "select/tie", 0.5)
    result = promote(store, "--metric", "select/tie", "--name", "tie-test")
    assert result.exit_code == 0, result.output
    newer = max((client.get_run(r) for r in store.runs), key=lambda r: r.info.start_time).info.run_id
    assert champion(client, "tie-test").run_id == newer


@pytest.mark.parametrize("args, message", [
    (["--metric", "cv/no_such_metric"], "no candidate run has the metric 'cv/no_such_metric'"),
    (["--stage", "classical"], "no finished classical run"),
    (["--task", "binary"], "no finished stage3 run"),
    (["--experiment", "missing-experiment"], "no experiment named 'missing-experiment'"),
])
def test_promote_bad_input(store, args, message):
    result = CliRunner().invoke(app, ["promote", "--tracking-uri", store.uri, "--experiment", store.experiment,
                                      "--name", "bad-input", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_promote_refuses_a_model_that_does_not_load(store, client):
    with mlflow.start_run(experiment_id=_experiment_id(store)) as run:
        mlflow.set_tags({"run_kind": "stage", "stage": "stage3", "task": "multiclass"})
        mlflow.log_metric("cv/f1_macro_mean", 0.99)
        mlflow.log_text("this is not an MLmodel file: [", "model/MLmodel")
        mlflow.log_dict({"class_names": ["a", "b"], "image_size": 64}, "model_info.json")
    try:
        result = promote(store, "--name", "broken")
        assert result.exit_code == 2
        assert f"run {run.info.run_id}" in result.output and ("fails to load" in result.output
                                                               or "no usable logged model" in result.output)
        assert client.search_registered_models(f"name = 'broken'") == []
    finally:
        client.delete_run(run.info.run_id)


def test_promote_refuses_a_model_without_its_detector(store, client, tmp_path):
    """A working model whose run has no reliability/ artifact (made before the suite fitted detectors) is refused:
    every served model says when an image is unlike its training images."""
    source = store.runs[0]
    model_dir = mlflow.artifacts.download_artifacts(run_id=source, artifact_path="model", dst_path=str(tmp_path))
    info = mlflow.artifacts.load_dict(f"runs:/{source}/model_info.json")
    with mlflow.start_run(experiment_id=_experiment_id(store)) as run:
        mlflow.set_tags({"run_kind": "stage", "stage": "stage3", "task": "multiclass"})
        mlflow.log_metric("cv/f1_macro_mean", 0.99)
        mlflow.log_artifacts(model_dir, "model")
        mlflow.log_dict(info, "model_info.json")
    try:
        result = promote(store, "--name", "no-detector")
        assert result.exit_code == 2, result.output
        assert f"run {run.info.run_id} has no 'reliability/' artifact" in result.output
        assert client.search_registered_models("name = 'no-detector'") == []
    finally:
        client.delete_run(run.info.run_id)


def test_champion_pyfunc_matches_keras_from_files_base64_and_arrays(store, client):
    mlflow.set_tracking_uri(store.uri)
    if not client.search_registered_models(f"name = '{NAME}'"):
        assert promote(store).exit_code == 0
    version = champion(client)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    keras_model = mlflow.keras.load_model(f"runs:/{version.run_id}/model")
    info = json.loads(mlflow.artifacts.load_text(f"runs:/{version.run_id}/model_info.json"))

    crops = [read_rgb(SAMPLES[0])[:200, :301], read_rgb(SAMPLES[1])]  # arbitrary sizes
    batch = np.stack([read_resized(p, IMAGE_SIZE) for p in SAMPLES] + [resize(c, IMAGE_SIZE) for c in crops])
    expected = as_class_probabilities(keras_model.predict(batch.astype("float32"), verbose=0))

    files = predict_files(pyfunc, SAMPLES)  # what `mtl-suite predict` does: reads them, sends arrays
    encoded = pyfunc.predict(pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in SAMPLES]}))
    arrays = pyfunc.predict(pd.DataFrame({"image": pd.Series([read_rgb(p) for p in SAMPLES] + crops, dtype=object)}))
    for frame, want in ((files, expected[:3]), (encoded, expected[:3]), (arrays, expected)):
        assert frame["error"].isna().all(), frame["error"].tolist()
        got = np.array(frame["probabilities"].tolist())
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert list(frame["label"]) == [info["class_names"][k] for k in want.argmax(axis=1)]
        assert all(list(names) == info["class_names"] for names in frame["class_names"])


def test_pyfunc_bad_image_in_a_batch_gets_an_error_row(store, client, tmp_path):
    mlflow.set_tracking_uri(store.uri)
    if not client.search_registered_models(f"name = '{NAME}'"):
        assert promote(store).exit_code == 0
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (7000, 7000, 3))  # 49 MP, no memory used
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in SAMPLES]
    inputs = [encoded[0], base64.b64encode(b"plain text, not an image").decode(), "@@not base64@@",
              read_rgb(SAMPLES[1]).astype(np.float32), np.zeros((10, 10, 4), np.uint8), huge, str(SAMPLES[1]),
              encoded[2]]
    out = pyfunc.predict(pd.DataFrame({"image": pd.Series(inputs, dtype=object)}))
    errors = out["error"].tolist()
    assert errors[0] is None and errors[-1] is None
    for i, fragment in [(1, "not an image"), (2, "not valid base64"), (3, "uint8"), (4, "(10, 10, 4)"),
                        (5, "too large"), (6, "file paths are turned off")]:
        assert fragment in errors[i], errors[i]
        assert out["probabilities"][i] is None and out["label"][i] is None
    alone = pyfunc.predict(pd.DataFrame({"image": [encoded[0], encoded[2]]}))
    np.testing.assert_allclose(np.array(out["probabilities"][[0, 7]].tolist()),
                               np.array(alone["probabilities"].tolist()), atol=1e-6)
    with pytest.raises(mlflow.exceptions.MlflowException, match="empty payload"):
        pyfunc.predict(pd.DataFrame({"image": pd.Series([], dtype=object)}))
    with pytest.raises(mlflow.exceptions.MlflowException, match="no usable image"):
        pyfunc.predict(pd.DataFrame({"image": ["@@"]}))


def test_predict_cli_on_a_folder(store, client, tmp_path):
    if not client.search_registered_models(f"name = '{NAME}'"):
        assert promote(store).exit_code == 0
    folder = tmp_path / "images"
    folder.mkdir()
    for p in SAMPLES:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(folder / "uniform.png")  # nothing like a smear
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(folder), "--format", "json", "--tracking-uri", store.uri, "-q"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["file"].rsplit("/", 1)[1] for r in records] == sorted(["broken.png", "uniform.png"]
                                                                    + [p.name for p in SAMPLES])
    broken = next(r for r in records if r["file"].endswith("broken.png"))
    assert broken["error"] and broken["probabilities"] is None and broken["in_distribution"] is None
    uniform = next(r for r in records if r["file"].endswith("uniform.png"))
    assert uniform["in_distribution"] is False and uniform["label"] in uniform["class_names"]
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    direct = pyfunc.predict(pd.DataFrame({"image": pd.Series([read_rgb(r["file"]) for r in records if not r["error"]],
                                                             dtype=object)}))
    good = [r for r in records if not r["error"]]
    np.testing.assert_allclose([r["probabilities"] for r in good], np.array(direct["probabilities"].tolist()),
                               atol=1e-6)
    assert [r["in_distribution"] for r in good] == list(direct["in_distribution"])
    assert [r["prediction_set"] for r in good] == [list(s) for s in direct["prediction_set"]]

    table = runner.invoke(app, ["predict", str(folder / "uniform.png"), str(SAMPLES[0]), "--tracking-uri", store.uri])
    assert table.exit_code == 0, table.output
    row = next(line for line in table.stdout.splitlines() if "uniform.png" in line)
    assert f"{uniform['label']} [flagged]" in row and " NO " in row  # its class is never shown without the flag
    assert "1 of 2 image(s) flagged as unlike the model's training images" in table.stderr
    csv = runner.invoke(app, ["predict", str(SAMPLES[0]), "--format", "csv", "--tracking-uri", store.uri, "-q"])
    assert csv.exit_code == 0 and csv.stdout.splitlines()[0].startswith(
        "file,label,in_distribution,ood_score,prediction_set,p_")
    only_bad = runner.invoke(app, ["predict", str(folder / "broken.png"), "--tracking-uri", store.uri, "-q"])
    assert only_bad.exit_code == 2
    missing = runner.invoke(app, ["predict", str(SAMPLES[0]), "--model", "models:/nope@champion",
                                  "--tracking-uri", store.uri, "-q"])
    assert missing.exit_code == 2 and "cannot load model models:/nope@champion" in missing.output


def _experiment_id(store) -> str:
    return mlflow.MlflowClient(tracking_uri=store.uri).get_experiment_by_name(store.experiment).experiment_id


# --- mtl-suite ensemble -------------------------------------------------------------------------------------------

ENSEMBLES = "ensembles"  # not the members' experiment, where the tests above rank the runs


def ensemble(store, *args: str):
    return CliRunner().invoke(app, ["ensemble", *args, "--tracking-uri", store.uri, "--experiment", ENSEMBLES, "-q"])


@pytest.fixture(scope="module")
def ensemble_run(store, client):
    result = ensemble(store, *store.runs)
    assert result.exit_code == 0, result.output
    return client.get_run(result.stdout.strip().splitlines()[-1])


def logged_csv(run_id: str, path: str) -> pd.DataFrame:
    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def probabilities(frame: pd.DataFrame) -> np.ndarray:
    return frame.set_index("sha256").sort_index().filter(like="p_").to_numpy()


def test_the_ensemble_scores_the_members_probabilities_averaged(store, ensemble_run):
    tags, metrics = ensemble_run.data.tags, ensemble_run.data.metrics
    assert (tags["run_kind"], tags["stage"], tags["ensemble_members"]) == ("stage", "stage3", ",".join(store.runs))
    for path in ("test/predictions.csv", "cv/oof_predictions.csv"):
        members = np.mean([probabilities(logged_csv(run_id, path)) for run_id in store.runs], axis=0)
        np.testing.assert_allclose(probabilities(logged_csv(ensemble_run.info.run_id, path)), members, atol=1e-6)
    test = logged_csv(ensemble_run.info.run_id, "test/predictions.csv")
    assert metrics["test/accuracy"] == pytest.approx((test["label"] == test["predicted"]).mean())
    oof = logged_csv(ensemble_run.info.run_id, "cv/oof_predictions.csv")
    per_fold = oof.assign(hit=oof["label"] == oof["predicted"]).groupby("fold")["hit"].mean()
    assert metrics["cv/accuracy_mean"] == pytest.approx(per_fold.mean())
    assert "shortcut/best/cv_accuracy" in metrics and "robustness/stain_shift_accuracy" in metrics


def test_the_promoted_ensemble_serves_the_members_average(store, client, ensemble_run):
    name = "mtl-ensemble"
    result = CliRunner().invoke(app, ["promote", ensemble_run.info.run_id, "--name", name,
                                      "--tracking-uri", store.uri, "--experiment", ENSEMBLES, "-q"])
    assert result.exit_code == 0, result.output
    batch = np.stack([read_resized(p, IMAGE_SIZE) for p in SAMPLES]).astype("float32")
    members = [mlflow.keras.load_model(f"runs:/{run_id}/model") for run_id in store.runs]
    expected = np.mean([as_class_probabilities(m.predict(batch, verbose=0)) for m in members], axis=0)
    served = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(
        pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in SAMPLES]}))
    np.testing.assert_allclose(np.array(served["probabilities"].tolist()), expected, atol=1e-5)


def stage2_run(client, store) -> str:
    experiment = client.get_experiment_by_name(store.experiment).experiment_id
    return client.search_runs([experiment], "tags.stage = 'stage2' AND tags.run_kind = 'stage'")[0].info.run_id


@pytest.mark.parametrize("members, message", [
    (lambda store, client: [store.runs[0]], "an ensemble needs at least 2 different runs"),
    (lambda store, client: [store.runs[0], store.runs[0]], "an ensemble needs at least 2 different runs"),
    (lambda store, client: [store.runs[0], "0" * 32], f"member run {'0' * 32}: no such run"),
    (lambda store, client: [stage2_run(client, store), store.runs[0]], "is a stage2 run: only the final stage's"),
], ids=["one", "twice", "unknown", "stage2"])
def test_bad_members_get_one_line_and_no_run(store, client, members, message):
    result = CliRunner().invoke(app, ["ensemble", *members(store, client), "--tracking-uri", store.uri,
                                      "--experiment", "ensembles-bad-input"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert client.get_experiment_by_name("ensembles-bad-input") is None  # nothing made, not even the experiment
