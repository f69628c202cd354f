"""Stage lineage cannot leak: a stage starts only from weights that have seen none of the images it holds out.

On the bundled sample with the tiny backbone: a stage-2 run trained on crops of split seed 1's development smears
has seen smears that split seed 2 holds out for its test, so a stage-3 run on split seed 2 must not start from it,
whether found automatically (a matching stage 2 is run first) or named with --parent-run (refused, exit 2)."""

from __future__ import annotations

import os

import mlflow
import pytest
from typer.testing import CliRunner

from mtl_suite.cli import app
from mtl_suite.data.lineage import short_digest
from mtl_suite.tracking.stage_log import read_exposure

FAST = ["--backbone", "tiny", "--weights", "none", "--image-size", "48", "--cell-size", "32", "--folds", "1",
        "--epochs", "1", "--finetune-epochs", "0", "--batch-size", "64", "--quiet"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("lineage")
    os.environ["MTL_SUITE_CACHE"] = str(root / "cache")
    uri = f"sqlite:///{root}/mlflow.db"
    common = [*FAST, "--tracking-uri", uri, "--experiment", "lineage"]
    outputs = {}
    for name, args in (("stage2-seed1", ["stage2", "--data-seed", "1"]),
                       ("stage3-seed2", ["stage3", "--data-seed", "2"]),
                       ("stage3-seed1", ["stage3", "--data-seed", "1"])):
        result = invoke(*args, *[a for a in common if a != "--quiet"])
        assert result.exit_code == 0, result.output
        outputs[name] = result.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["lineage"], filter_string="tags.run_kind = 'stage'",
                              order_by=["attributes.start_time ASC"], output_format="list")
    return {"uri": uri, "common": common, "runs": runs, "outputs": outputs}


def of_stage(store, stage):
    return [r for r in store["runs"] if r.data.tags["stage"] == stage]


def split_test_digests(run) -> set[str]:
    split = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data/split.json")
    return {short_digest(row["sha256"]) for row in split["rows"] if row["role"] == "test"}


def test_auto_lineage_skips_a_parent_trained_on_another_split(store):
    first_stage2, second_stage2 = of_stage(store, "stage2")
    seed2_stage3, seed1_stage3 = of_stage(store, "stage3")
    assert seed2_stage3.data.tags["parent_stage_run"] == second_stage2.info.run_id
    assert f"not starting from stage2 run {first_stage2.info.run_id}" in store["outputs"]["stage3-seed2"]
    # the seed-1 stage 3 finds the seed-1 stage 2 behind the newer, incompatible seed-2 one
    assert seed1_stage3.data.tags["parent_stage_run"] == first_stage2.info.run_id


def test_explicit_parent_that_saw_the_test_part_is_refused(store):
    first_stage2 = of_stage(store, "stage2")[0]
    before = len(mlflow.search_runs(experiment_names=["lineage"], output_format="list"))
    result = invoke("stage3", "--data-seed", "2", "--parent-run", first_stage2.info.run_id, *store["common"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot be this stage3 run's parent" in lines[0] and "split seed 1" in lines[0]
    assert "Traceback" not in result.output
    assert len(mlflow.search_runs(experiment_names=["lineage"], output_format="list")) == before  # nothing opened


def test_no_stage_run_has_seen_its_own_held_out_images(store):
    """The property the lineage check exists for, over every stage run the commands above made: what a run's
    weights have seen (its ancestors' training images and its own development part) never meets its test part."""
    for run in store["runs"]:
        exposure = read_exposure(run.info.run_id)
        assert exposure is not None, run.info.run_name
        if run.data.tags["stage"] == "stage1":
            assert not exposure.digests  # ImageNet weights: nothing of ours
            continue
        assert not exposure.digests & split_test_digests(run), run.info.run_name
        parent = run.data.tags["parent_stage_run"]
        assert read_exposure(parent).digests <= exposure.digests  # the record accumulates along the chain
