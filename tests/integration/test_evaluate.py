"""`mtl-suite evaluate MODEL DATA` end to end on a registered tiny-backbone model (registry_store.py's stage-3 run):
the evaluation run's metrics equal those computed here, independently, from the pyfunc's own predictions; it is
linked to the model (tags, logged-model metrics, inputs); bad input ends as one line, exit 2, and leaves no run."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.data.images import is_image_file, read_rgb
from mtl_suite.errors import UserError
from mtl_suite.paths import SAMPLE_IMAGES
from mtl_suite.workflows.evaluate import label_map
from registry_store import promoted_store

pytestmark = pytest.mark.slow
NAME = "evaluate-tests"
EXPERIMENT = "evaluate-tests"
URI = f"models:/{NAME}@champion"
SUMMARY = re.compile(r"^evaluate: accuracy (\d\.\d{3}) \((\d+)/(\d+); 95% CI (\d\.\d\d)-(\d\.\d\d); majority class "
                     r"(\d\.\d\d)\), macro-F1 (\d\.\d\d); (\d+\.\d)% flagged as unlike the training images[^;]*; "
                     r"run ([0-9a-f]{32}) in (\S+)$")
EXPECTED = re.compile(r"^evaluate \((\d+) images, all Benign\): (\d+\.\d)% called Benign, (\d+\.\d)% flagged as unlike "
                      r"the training images, (\d+\.\d)% called otherwise without a flag; run ([0-9a-f]{32}) in \S+$")


@pytest.fixture(scope="module")
def store():
    return promoted_store(NAME)


def evaluate(store, *args: str):
    return CliRunner().invoke(app, ["evaluate", *args, "--tracking-uri", store.uri, "--experiment", EXPERIMENT,
                                    "-q"])


def evaluation_runs(store) -> list:
    client = mlflow.MlflowClient(tracking_uri=store.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id], run_view_type=3)


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_evaluation_run_holds_the_metrics_of_the_models_own_predictions(store, tmp_path):
    output = tmp_path / "out" / "metrics.json"
    result = evaluate(store, URI, str(SAMPLE_IMAGES), "--out", str(output))
    assert result.exit_code == 0, result.output
    found = SUMMARY.match(result.stdout.strip().splitlines()[-1])
    assert found, result.stdout
    run_id = found.group(9)
    assert found.group(10) == store.uri

    # Independently: the registered pyfunc on the sample's images, scored with sklearn.
    mlflow.set_tracking_uri(store.uri)
    client = mlflow.MlflowClient(tracking_uri=store.uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    pyfunc = mlflow.pyfunc.load_model(URI)
    files, seen = [], set()
    for path in sorted(p for p in SAMPLE_IMAGES.rglob("*") if is_image_file(p)):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest not in seen:  # byte-identical copies count once (the manifest keeps the first by path)
            seen.add(digest)
            files.append(path)
    frame = pyfunc.predict(pd.DataFrame({"image": pd.Series([read_rgb(p) for p in files], dtype=object)}))
    assert frame["error"].isna().all()
    classes = [str(c) for c in frame["class_names"][0]]
    proba = np.array(frame["probabilities"].tolist())
    y_true = np.array([classes.index(p.parent.name) for p in files])
    y_pred = proba.argmax(axis=1)
    n, correct = len(files), int((y_true == y_pred).sum())
    low, high = wilson(correct, n)
    expected = {
        "eval/accuracy": correct / n, "eval/n": n,
        "eval/f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
        "eval/precision_weighted": skm.precision_score(y_true, y_pred, average="weighted", zero_division=0),
        "eval/recall_macro": skm.recall_score(y_true, y_pred, average="macro", zero_division=0),
        "eval/auc_macro": skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro"),
        "eval/accuracy_ci_low": low, "eval/accuracy_ci_high": high,
        "eval/majority_class_accuracy": np.bincount(y_true).max() / n,
    }
    flagged = ~np.array(frame["in_distribution"].tolist(), dtype=bool)
    expected["eval/reliability/flagged_share"] = flagged.mean()
    expected["eval/reliability/sets/coverage"] = np.mean([classes[t] in s for t, s in
                                                          zip(y_true, frame["prediction_set"])])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == f"evaluate-{NAME}"
    for key, value in expected.items():
        assert run.data.metrics[key] == pytest.approx(value, abs=1e-6), key
    assert float(found.group(8)) == pytest.approx(100 * flagged.mean(), abs=0.05)
    assert (int(found.group(2)), int(found.group(3))) == (correct, n)

    # Linked to the model: tags, the logged model as an input, the metrics on the logged model's page.
    tags = run.data.tags
    assert tags["run_kind"] == "evaluation" and tags["evaluated_model_uri"] == URI
    model_id = pyfunc.metadata.model_id  # the logged model promote registered (models:/m-...)
    assert model_id and version.source == f"models:/{model_id}"
    assert tags["evaluated_run_id"] == version.run_id and tags["evaluated_model_id"] == model_id
    assert (tags["evaluated_model_name"], tags["evaluated_model_version"]) == (NAME, str(version.version))
    assert tags["data"] == str(SAMPLE_IMAGES.resolve()) and len(tags["dataset_digest"]) == 64
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]
    contexts = [{t.key: t.value for t in d.tags}.get("mlflow.data.context") for d in run.inputs.dataset_inputs]
    assert contexts == ["evaluation"]
    on_model = {m.key: m.value for m in mlflow.get_logged_model(model_id).metrics if m.run_id == run_id}
    assert on_model["eval/accuracy"] == pytest.approx(correct / n)

    # The files a stage run keeps for its test part, and the --out JSON.
    artifacts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/predictions.csv", "eval/confusion_matrix.csv", "eval/roc.png",
            "eval/classification_report.txt"} <= artifacts
    matrix = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="eval/confusion_matrix.csv",
                                                             dst_path=str(tmp_path)), index_col=0)
    np.testing.assert_array_equal(matrix.to_numpy(), skm.confusion_matrix(y_true, y_pred, labels=range(len(classes))))
    written = json.loads(output.read_text())
    assert written["run_id"] == run_id and written["n"] == n
    assert written["metrics"]["accuracy"] == pytest.approx(correct / n)
    assert set(written["per_class"]) == set(classes)


def test_expect_scores_images_of_one_class_with_the_detectors_flags(store, tmp_path):
    """A folder of one known class from elsewhere: images nothing like a smear (uniform fields, noise) are flagged
    by the real trained model, its calls are kept, and every share is the one the per-image rows give."""
    from conftest import noise_rgb, solid_rgb, write_image

    folder = tmp_path / "elsewhere" / "JPEGImages"
    for k, level in enumerate((90, 160, 230)):
        write_image(folder / f"uniform-{k}.png", solid_rgb((level, level, level), (320, 240)))
    for seed in (1, 2, 3):
        write_image(folder / "noise" / f"noise-{seed}.png", noise_rgb((320, 240), seed))
    n = 6
    result = evaluate(store, URI, str(folder), "--expect", "Benign")
    assert result.exit_code == 0, result.output
    found = EXPECTED.match(result.stdout.strip().splitlines()[-1])
    assert found, result.stdout
    assert int(found.group(1)) == n and found.group(3) == "100.0" and found.group(4) == "0.0"
    run = mlflow.MlflowClient(tracking_uri=store.uri).get_run(found.group(5))
    assert run.data.tags["expected_class"] == "Benign" and run.data.tags["data_layout"] == "one-class"
    rows = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="eval/predictions.csv",
                                                           dst_path=str(tmp_path / "rows")))
    assert len(rows) == n and not rows["in_distribution"].any()
    metrics = run.data.metrics
    assert metrics["eval/reliability/flagged_share"] == 1.0
    assert metrics["eval/reliability/confident_wrong_share"] == 0.0  # a wrong call here always carries the flag
    assert metrics["eval/reliability/called_expected_share"] == pytest.approx(np.mean(rows["predicted"] == "Benign"))
    assert metrics["eval/accuracy"] == pytest.approx(metrics["eval/reliability/called_expected_share"])


def _one_line_refusal(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("case", ["unknown label", "missing folder", "unknown model", "unlabelled images"])
def test_bad_input_is_one_line_and_leaves_no_run(store, tmp_path, case):
    before = {r.info.run_id for r in evaluation_runs(store)}
    data, model = tmp_path / "data", URI
    if case == "unknown label":
        for label, source_class in (("Benign", "Benign"), ("Blobs", "Pro")):
            (data / label).mkdir(parents=True)
            for source in sorted((SAMPLE_IMAGES / source_class).iterdir())[:2]:
                shutil.copy(source, data / label / source.name)
    elif case == "unknown model":
        shutil.copytree(SAMPLE_IMAGES, data)
        model = f"models:/{NAME}/99"
    elif case == "unlabelled images":
        data.mkdir()
        for source in sorted((SAMPLE_IMAGES / "Benign").iterdir())[:2]:
            shutil.copy(source, data / source.name)
    line = _one_line_refusal(evaluate(store, model, str(data)))
    expected = {"unknown label": "data label 'Blobs' not among the classes of model "
                                 f"{URI} (Benign, Early, Pre, Pro)",
                "missing folder": "DATA: no such file or folder",
                "unknown model": f"models:/{NAME}/99 not found",
                "unlabelled images": "no images found in a known layout"}[case]
    assert expected in line, line
    assert {r.info.run_id for r in evaluation_runs(store)} == before  # no run, FAILED or otherwise


def test_labels_map_onto_a_binary_model_with_normal_class():
    binary = ["normal", "leukemia"]
    assert label_map(["Benign", "Early", "Pro"], binary, "Benign", "m") == {
        "Benign": "normal", "Early": "leukemia", "Pro": "leukemia"}
    assert label_map(["ALL"], binary, "hem", "m") == {"ALL": "leukemia"}  # one class is enough to score
    assert label_map(["leukemia", "normal"], binary, None, "m") == {"leukemia": "leukemia", "normal": "normal"}
    with pytest.raises(UserError, match="pass --normal-class NAME"):
        label_map(["Benign", "Early"], binary, None, "m")
    with pytest.raises(UserError, match="--normal-class 'Healthy' is not a class of the data"):
        label_map(["Benign", "Early"], binary, "Healthy", "m")
    with pytest.raises(UserError, match="model m has classes Benign, Early, Pre, Pro"):
        label_map(["Benign", "Early"], ["Benign", "Early", "Pre", "Pro"], "Benign", "m")


def test_a_stage_runs_keras_model_scores_as_its_registered_pyfunc(store):
    """runs:/<stage run>/model (plain Keras, no class names of its own) is read through the same raw-image path."""
    version = mlflow.MlflowClient(tracking_uri=store.uri).get_model_version_by_alias(NAME, "champion")
    scores = {}
    for uri in (URI, f"runs:/{version.run_id}/model"):
        result = evaluate(store, uri)
        assert result.exit_code == 0, result.output
        last = result.stdout.strip().splitlines()[-1]
        run = mlflow.MlflowClient(tracking_uri=store.uri).get_run(SUMMARY.match(last).group(9))
        assert run.data.tags["evaluated_run_id"] == version.run_id
        scores[run.data.tags["evaluated_model_kind"]] = {k: v for k, v in run.data.metrics.items()}
    assert set(scores) == {"raw-image-pyfunc", "keras"}
    assert scores["keras"] == pytest.approx(scores["raw-image-pyfunc"], abs=1e-6)


def test_a_sealed_set_is_scored_once_and_a_second_model_only_with_again(store, tmp_path):
    """The sealed set (`data seal`) is found by its contents in a copy elsewhere; its first model scores it, that
    model again is no new configuration (however it is named), the other model is refused (one line, exit 2, no
    run) until --again, and every evaluation says and records its look. Images of their own, so the other tests'
    evaluations of the sample touch no seal."""
    from conftest import build_tree

    sealed = build_tree(tmp_path / "final", {"Benign": 2, "Pro": 2}, suffix=".png", size=(96, 72), seed=500)
    assert CliRunner().invoke(app, ["data", "seal", str(sealed), "--name", "final-test", "--tracking-uri",
                                    store.uri]).exit_code == 0
    copy = shutil.copytree(sealed, tmp_path / "copied" / "elsewhere")
    first, second = (f"runs:/{run_id}/model" for run_id in store.runs)
    experiment = "evaluate-sealed-tests"

    def look(model: str, data, *more: str):
        result = CliRunner().invoke(app, ["evaluate", model, str(data), "--tracking-uri", store.uri, "--experiment",
                                          experiment, "-q", *more])
        return result, result.stdout.strip().splitlines()

    result, lines = look(first, copy)
    assert result.exit_code == 0, result.output
    assert lines[0] == ("evaluate: these images had been scored by no earlier configuration; sealed set "
                        "'final-test': scored by 1 configuration in 1 look, this one included")
    result, lines = look(first, sealed)  # the same model: recorded, not a new configuration
    assert result.exit_code == 0, result.output
    assert lines[0].endswith("scored by 1 configuration in 2 looks, this one included")

    client = mlflow.MlflowClient(tracking_uri=store.uri)
    runs_before = len(client.search_runs([client.get_experiment_by_name(experiment).experiment_id]))
    line = _one_line_refusal(look(second, copy)[0])
    assert line.startswith("error: DATA holds 4 of the 4 images of sealed set 'final-test', already scored by 1 "
                           f"configuration (first {first}, run "), line
    assert line.endswith(f"scoring it with {second} would be another look: pass --again to make it, recorded as one")
    assert len(client.search_runs([client.get_experiment_by_name(experiment).experiment_id])) == runs_before

    result, lines = look(second, copy, "--again")
    assert result.exit_code == 0, result.output
    assert lines[0] == ("evaluate: these images had been scored by 1 earlier configuration; sealed set 'final-test': "
                        "scored by 2 configurations in 3 looks, this one included (a further configuration: --again)")
    tags = client.get_run(SUMMARY.match(lines[-1]).group(9)).data.tags
    assert (tags["sealed_set"], tags["sealed_set_configurations"]) == ("final-test", "2")
    assert (tags["test_part_model"], tags["test_part_earlier_configurations"]) == (f"run:{store.runs[1]}", "1")
