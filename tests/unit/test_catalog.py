"""The catalog is the one source of truth for stages and tasks: its links and derived lists must hold together."""

import json

import pytest
import yaml

from mtl_suite.catalog import (
    ARM_STAGES, STAGES, TUNABLE_STAGES, Arm, Stage, StageData, Task, arm_stage, chain, get_stage,
)
from mtl_suite.errors import UserError


def test_every_previous_stage_is_in_the_catalog_and_chains_end_at_a_stage_without_one():
    for plan in STAGES.values():
        links = chain(plan.stage)
        assert links[-1] is plan and links[0].previous is None
        assert all(later.previous == earlier.stage for earlier, later in zip(links, links[1:]))


def test_the_mtl_chain_is_stage1_stage2_stage3_and_the_arms_are_classical_and_stage3():
    assert [p.stage for p in chain(Stage.STAGE3)] == ["stage1", "stage2", "stage3"]
    assert arm_stage(Arm.CTL).stage == "classical" and arm_stage(Arm.MTL).stage == "stage3"
    assert set(ARM_STAGES) == {"classical", "stage3"}
    assert set(TUNABLE_STAGES) == {"stage2", "stage3", "classical"}


def test_stage2_trains_the_binary_task_whatever_is_asked_and_stage1_is_tagged_by_its_source():
    assert STAGES[Stage.STAGE2].task_for("multiclass") is Task.BINARY
    assert STAGES[Stage.STAGE3].task_for("multiclass") is Task.MULTICLASS
    assert STAGES[Stage.STAGE1].run_task("multiclass") == "imagenet"
    assert STAGES[Stage.STAGE1].run_task("multiclass", has_source=True) == "source"
    assert STAGES[Stage.STAGE2].data is StageData.CELLS


def test_an_unknown_stage_is_a_user_error_listing_the_stages():
    with pytest.raises(UserError, match="stage1, stage2, stage3, classical"):
        get_stage("stage4")


def test_members_are_written_as_plain_strings_in_yaml_and_json():
    record = {"stage": Stage.STAGE3, "task": Task.BINARY}
    assert yaml.safe_load(yaml.safe_dump(record)) == {"stage": "stage3", "task": "binary"}
    assert json.loads(json.dumps(record)) == {"stage": "stage3", "task": "binary"}
    assert f"{Stage.CLASSICAL}-x" == "classical-x"
