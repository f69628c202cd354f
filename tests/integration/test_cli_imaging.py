"""The imaging commands end to end on the bundled sample, with a tmp MLflow store; asserts what landed."""

import csv
import json
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.paths import SAMPLE_IMAGES

runner = CliRunner()
SHARED_BCCD = Path(__file__).resolve().parents[3] / "shared" / "data" / "bccd"
TINY = ["--image-size", "32", "--depth", "2", "--width", "4", "--epochs", "2", "--batch-size", "16", "--quiet"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture(scope="module")
def trained(store):
    result = invoke("segment", "train", *TINY, "--tracking-uri", store, "--experiment", "imaging-test")
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(experiment_names=["imaging-test"], filter_string="tags.task = 'train'",
                              output_format="list")
    assert len(runs) == 1
    return runs[0]


def test_preprocess_writes_masks_masked_images_and_a_contact_sheet(tmp_path):
    result = invoke("preprocess", SAMPLE_IMAGES / "Benign", "--out", tmp_path, "--sheet-rows", "3", "--quiet")
    assert result.exit_code == 0, result.output
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 24 and len(list((tmp_path / "masked").glob("*.png"))) == 24
    assert sum(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE).max() == 255 for m in masks) >= 20  # cells found
    sheet = cv2.imread(str(tmp_path / "contact_sheet.png"))
    assert sheet.shape[0] > sheet.shape[1] / 3 * 2  # 3 rows of 3 tiles


def test_preprocess_reports_fields_without_cells_and_bad_paths(tmp_path):
    blank = tmp_path / "in" / "blank.png"
    blank.parent.mkdir()
    cv2.imwrite(str(blank), np.full((20, 30, 3), 255, np.uint8))
    result = invoke("preprocess", blank.parent, "--out", tmp_path / "out")
    assert result.exit_code == 0
    assert "1 of 1 images with no ROI pixel (no cell found): blank.png" in result.output
    missing = invoke("preprocess", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert missing.exit_code == 2 and "path not found" in missing.output


@pytest.mark.slow
def test_train_logs_tags_curves_overlays_and_a_model(trained, store):
    tags, params = trained.data.tags, trained.data.params
    assert tags["stage"] == "segmentation" and tags["task"] == "train" and tags["seed"] == "42"
    assert tags["run_kind"] == "segmentation" and trained.info.run_name.startswith("segment-train-segmented-")
    assert len(tags["split_digest"]) == 64 and len(tags["dataset_digest"]) == 64 and tags["git_commit"]
    assert params["depth"] == "2" and params["mask_kind_resolved"] == "segmented"
    client = mlflow.MlflowClient(store)
    for key in ("train/loss", "val/dice_coef", "val/iou_coef"):
        assert [m.step for m in client.get_metric_history(trained.info.run_id, key)] == [0, 1]
    assert 0 <= trained.data.metrics["val/dice_mean"] <= 1
    artifacts = {a.path for a in client.list_artifacts(trained.info.run_id)}
    assert {"overlays", "data"} <= artifacts
    assert len(client.list_artifacts(trained.info.run_id, "overlays")) == 6
    model = mlflow.keras.load_model(f"runs:/{trained.info.run_id}/model")
    assert model.output_shape[-1] == 1
    info = mlflow.models.get_model_info(f"runs:/{trained.info.run_id}/model")
    assert info.signature is not None
    requirements = Path(mlflow.artifacts.download_artifacts(f"runs:/{trained.info.run_id}/model/requirements.txt"))
    assert {line.split("==")[0] for line in requirements.read_text().split()} >= {"tensorflow", "keras"}  # loadable


@pytest.mark.slow
def test_evaluate_logs_held_out_dice_in_a_linked_run(trained, store):
    result = invoke("segment", "evaluate", trained.info.run_id, "--tracking-uri", store,
                    "--experiment", "imaging-test", "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{"):])
    run = mlflow.get_run(figures["run_id"])
    assert run.data.tags["source_run_id"] == trained.info.run_id and run.data.tags["task"] == "evaluate"
    assert run.data.tags["run_kind"] == "segmentation"
    assert run.info.run_name == f"segment-evaluate-{trained.info.run_id[:8]}"
    assert 0 <= run.data.metrics["test/dice_mean"] <= 1 and run.data.metrics["test/images"] >= 10
    per_image = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/test_per_image.csv").splitlines()
    assert per_image[0] == "image,dice,iou" and len(per_image) == run.data.metrics["test/images"] + 1


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_BCCD.is_dir(), reason="../shared/data/bccd not present")
def test_evaluate_box_recall_on_voc_smears(trained, store, tmp_path):
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for xml in sorted((SHARED_BCCD / "Annotations").glob("*.xml"))[:3]:
        (voc / "Annotations" / xml.name).write_bytes(xml.read_bytes())
        jpg = SHARED_BCCD / "JPEGImages" / (xml.stem + ".jpg")
        (voc / "JPEGImages" / jpg.name).write_bytes(jpg.read_bytes())
    result = invoke("segment", "evaluate", trained.info.run_id, "--voc", voc, "--tracking-uri", store,
                    "--experiment", "imaging-test", "--format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{"):])
    for method in ("unet", "roi"):
        assert 0 <= figures[f"voc/{method}/wbc_recall"] <= 1
        assert figures[f"voc/{method}/images"] == 3


@pytest.mark.slow
def test_predict_writes_a_mask_per_image_at_its_own_size(trained, store, tmp_path):
    result = invoke("segment", "predict", trained.info.run_id, SAMPLE_IMAGES / "Pre", "--out", tmp_path,
                    "--isolate", "--tracking-uri", store, "--experiment", "imaging-test", "--quiet")
    assert result.exit_code == 0, result.output
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert len(masks) == 24 and len(list((tmp_path / "isolated").glob("*.png"))) == 24
    assert cv2.imread(str(masks[0])).shape[:2] == (224, 224)


@pytest.mark.slow
def test_crops_carry_parent_groups_and_test_only_splits(tmp_path):
    split = tmp_path / "split.json"
    assert invoke("data", "split", "--out", split, "--folds", "3").exit_code == 0
    result = invoke("segment", "crops", "--out", tmp_path / "cells", "--split", split, "--label-policy", "aria",
                    "--cell-size", "48", "--quiet")
    assert result.exit_code == 0, result.output
    roles = {r["path"]: r["role"] for r in json.loads(split.read_text())["rows"]}
    rows = list(csv.DictReader((tmp_path / "cells" / "cells.csv").open()))
    assert rows and {r["label"] for r in rows} == {"normal", "blast"}
    for row in rows:
        assert row["split"] == roles[row["parent"]]
        assert row["group"] == f"parent:{Path(row['parent']).name}"
        assert (row["label"] == "normal") == (row["parent_label"] == "Benign")
        assert (tmp_path / "cells" / row["path"]).is_file()
    assert any(r["split"] == "test" for r in rows)
    assert "images where no cell was found" in result.output  # the sample's nearly empty Pro masks


def test_augment_preview_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    result = invoke("augment", "preview", "--out", out, "--count", "2", "--copies", "3", "--image-size", "40")
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out)).shape == (2 * 44 + 4, 4 * 44 + 4, 3)


@pytest.mark.parametrize("args,message", [
    (["augment", "preview", "--policy", "wild"], "unknown augmentation policy 'wild'"),
    (["segment", "train", "--augment", "wild"], "unknown augmentation policy 'wild'"),
    (["segment", "crops", "--method", "magic"], "'magic' is not one of 'segmented', 'roi', 'unet'"),
    (["segment", "crops", "--method", "unet"], "--method unet needs --run-id"),
    (["preprocess", "--offset-mode", "multiply"], "'multiply' is not one of 'subtract', 'add'"),
])
def test_user_errors_are_one_line_and_exit_2(args, message, tmp_path, store):
    result = invoke(*args, "--tracking-uri", store) if args[1] == "train" else invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_train_stops_clearly_when_no_mask_is_usable(tmp_path, store):
    empty = tmp_path / "masks"
    (empty / "Benign").mkdir(parents=True)
    cv2.imwrite(str(empty / "Benign" / "unrelated.png"), np.full((8, 8), 255, np.uint8))
    result = invoke("segment", "train", *TINY, "--masks", empty, "--tracking-uri", store)
    assert result.exit_code == 2, result.output
    assert "no usable (image, mask) pair" in result.output and "images without a mask" in result.output
