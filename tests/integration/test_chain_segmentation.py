"""Stage 2 on smears without masks cuts its cells with the suite's own segmentation: the U-Net of the experiment's
newest finished `segment train` run, else the paper's ROI method; the run's `cell_source` tag says which.

The bundled sample's fields are copied without their `segmented/` sibling, so no masks are found; tiny backbone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace

import mlflow
import pytest
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.paths import SAMPLE_IMAGES, SAMPLE_SEGMENTED

pytestmark = pytest.mark.slow  # three stage-2 runs, a two-pair comparison and two U-Nets: about two minutes
FAST = ["--backbone", "tiny", "--weights", "none", "--image-size", "48", "--cell-size", "32", "--folds", "1",
        "--epochs", "1", "--finetune-epochs", "0", "--batch-size", "64"]
TINY_UNET = ["--image-size", "32", "--depth", "2", "--width", "4", "--epochs", "1", "--batch-size", "16", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain-segmentation")
    smears = root / "smears"
    shutil.copytree(SAMPLE_IMAGES, smears)  # the fields only: no masks beside them
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    return {"uri": uri, "smears": smears,
            "common": [*FAST, "--data", str(smears), "--tracking-uri", uri, "--experiment", "chain"]}


def newest_stage2(store):
    mlflow.set_tracking_uri(store["uri"])
    runs = mlflow.search_runs(experiment_names=["chain"], filter_string="tags.stage = 'stage2' AND tags.run_kind = 'stage'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    assert runs and runs[0].info.status == "FINISHED"
    return runs[0]


def trained_cells(run) -> int:
    split = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data/split.json")
    return sum(row["role"] != "test" for row in split["rows"])


def test_stage2_without_masks_cuts_cells_with_roi_then_with_the_experiments_unet(store):
    result = invoke("stage2", *store["common"])
    assert result.exit_code == 0, result.output
    assert "stage2: no masks for the smears; cutting cells with the ROI method" in result.output
    roi_run = newest_stage2(store)
    assert roi_run.data.tags["cell_source"] == "roi"
    assert trained_cells(roi_run) > 0

    # a `segment train` run in the same experiment (on the bundled sample and its masks): its U-Net cuts the cells
    segment = invoke("segment", "train", *TINY_UNET, "--tracking-uri", store["uri"], "--experiment", "chain")
    assert segment.exit_code == 0, segment.output
    unet_run = mlflow.search_runs(experiment_names=["chain"], filter_string="tags.task = 'train' AND "
                                  "tags.stage = 'segmentation'", output_format="list")[0].info.run_id
    result = invoke("stage2", *store["common"])
    assert result.exit_code == 0, result.output
    assert f"stage2: no masks for the smears; cutting cells with the U-Net of run {unet_run}" in result.output
    run = newest_stage2(store)
    assert run.info.run_id != roi_run.info.run_id
    assert run.data.tags["cell_source"] == f"unet:{unet_run}"
    assert trained_cells(run) > 0  # a 1-epoch U-Net still marks something; find_cells keeps its components


def test_masks_take_precedence_and_are_tagged(store):
    """--masks (here the bundled sample's own segmentations) wins over the experiment's U-Net."""
    result = invoke("stage2", *store["common"], "--masks", SAMPLE_SEGMENTED)
    assert result.exit_code == 0, result.output
    assert "no masks for the smears" not in result.output
    assert newest_stage2(store).data.tags["cell_source"] == f"masks:{SAMPLE_SEGMENTED}"


def test_a_comparison_fixes_the_segmentation_of_all_its_pairs(store):
    """compare chooses stage 2's segmentation once (the experiment's newest U-Net, here the first test's), keys the
    comparison on it, and every stage 2 it runs uses the chosen one even when another would be picked by then:
    shown with ROI fixed while the experiment holds a U-Net."""
    from mtl_suite.config import load_config
    from mtl_suite.tracking import stage_log
    from mtl_suite.catalog import CompareRequest
    from mtl_suite.workflows.compare import comparison_key
    from mtl_suite.workflows.stage import ROI_SEGMENTATION, StageRequest, pinned_segmentation, run_stage

    config = load_config(overrides={  # FAST's settings
        "train.backbone": "tiny", "train.weights": "none", "data.image_size": 48, "data.cell_size": 32,
        "data.folds": 1, "train.warmup_epochs": 1, "train.finetune_epochs": 0, "train.batch_size": 64,
        "data.path": str(store["smears"]), "tracking.tracking_uri": store["uri"], "tracking.experiment": "chain"})
    experiment_id = mlflow.get_experiment_by_name("chain").experiment_id
    unet_run = stage_log.newest_segmentation_run(experiment_id)
    assert unet_run, "the first test of this file trains the experiment's U-Net"

    request = StageRequest(stage="stage2", config=config)
    assert pinned_segmentation(config.data, None, experiment_id) == unet_run
    assert pinned_segmentation(load_config().data, None, experiment_id) is None  # the bundled sample has masks
    assert pinned_segmentation(config.data, str(store["smears"]), experiment_id) is None  # --cells
    keys = {comparison_key(CompareRequest(config, "multiclass", 2, segmentation=chosen))
            for chosen in (unet_run, ROI_SEGMENTATION)}
    assert len(keys) == 2

    said = []
    outcome = run_stage(replace(request, segmentation=ROI_SEGMENTATION, quiet=True), say=said.append)
    assert any("cutting cells with the ROI method (as fixed for this comparison)" in line for line in said), said
    assert mlflow.get_run(outcome.run_id).data.tags["cell_source"] == "roi"


def test_a_unet_trained_during_a_comparison_does_not_reach_its_later_pairs(store, tmp_path):
    """A real two-pair comparison in an experiment without a U-Net (so ROI is fixed at the start); as pair 1
    begins, a U-Net is trained in that experiment by another process. Pair 1's stage 2 must still cut with ROI:
    its runs are told the fixed segmentation, not left to pick the newest U-Net."""
    from mtl_suite.config import load_config
    from mtl_suite.catalog import CompareRequest
    from mtl_suite.workflows.compare import run_comparison

    config = load_config(overrides={
        "train.backbone": "tiny", "train.weights": "none", "data.image_size": 48, "data.cell_size": 32,
        "data.folds": 1, "train.warmup_epochs": 1, "train.finetune_epochs": 0, "train.batch_size": 64,
        "data.path": str(store["smears"]), "tracking.tracking_uri": store["uri"], "tracking.experiment": "pinning"})
    unet_trained = []

    def train_unet_when_pair_1_starts(message: str) -> None:
        if message.startswith("pair 1 (") and not unet_trained:
            unet_trained.append(message)
            subprocess.run([sys.executable, "-m", "mtl_suite", "segment", "train", *TINY_UNET,
                            "--tracking-uri", store["uri"], "--experiment", "pinning"], check=True)

    outcome = run_comparison(CompareRequest(config, "multiclass", 2, report_dir=tmp_path, quiet=True),
                             say=train_unet_when_pair_1_starts)

    mlflow.set_tracking_uri(store["uri"])
    unets = mlflow.search_runs(experiment_names=["pinning"], filter_string="tags.stage = 'segmentation'",
                               output_format="list")
    assert len(unets) == 1 and unets[0].info.status == "FINISHED"  # an unpinned stage 2 would now pick it
    sources = {pair.index: mlflow.get_run(pair.runs["stage2"]).data.tags["cell_source"] for pair in outcome.pairs}
    assert sources == {0: "roi", 1: "roi"}
