"""Which finished runs a resumed `mtl-suite assess` reuses on a split (workflows/assess.py:_reusable): a stage only
when it stands on the reused run of the stage before it, an ensemble only when it holds exactly the reused members;
everything after a stage that is run again is run again too."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mtl_suite.catalog import Stage, Task
from mtl_suite.config import ExperimentConfig
from mtl_suite.recipes import Recipe
from mtl_suite.workflows.assess import ENSEMBLE_ROLE, _reusable


class Client:
    def __init__(self, tags: dict[str, dict[str, str]]):
        self.tags = tags

    def get_run(self, run_id):
        return SimpleNamespace(data=SimpleNamespace(tags=self.tags.get(run_id, {})))


def recipe(members: int) -> Recipe:
    return Recipe(Path("r.yaml"), "0" * 12, Stage.STAGE3, Task.MULTICLASS, (ExperimentConfig(),) * members)


def test_a_chain_is_reused_up_to_the_first_stage_that_stands_on_another_run():
    found = {("member-1", "stage1"): "s1", ("member-1", "stage2"): "s2", ("member-1", "stage3"): "s3"}
    whole = Client({"s2": {"parent_stage_run": "s1"}, "s3": {"parent_stage_run": "s2"}})
    assert _reusable(whole, found, recipe(1)) == found
    broken = Client({"s2": {"parent_stage_run": "elsewhere"}, "s3": {"parent_stage_run": "s2"}})
    assert _reusable(broken, found, recipe(1)) == {("member-1", "stage1"): "s1"}  # stage 2 and 3 run again


def test_an_ensemble_is_reused_only_with_the_reused_members():
    """Member 2 trains only its stage 3, from member 1's stage 2 (catalog.member_stages, as `train` does)."""
    found = {("member-1", "stage1"): "a1", ("member-1", "stage2"): "a2", ("member-1", "stage3"): "a3",
             ("member-2", "stage3"): "b3", (ENSEMBLE_ROLE, "stage3"): "e"}
    tags = {"a2": {"parent_stage_run": "a1"}, "a3": {"parent_stage_run": "a2"}, "b3": {"parent_stage_run": "a2"},
            "e": {"ensemble_members": "a3,b3"}}
    assert _reusable(Client(tags), found, recipe(2)) == found
    tags["e"] = {"ensemble_members": "a3,old"}
    assert (ENSEMBLE_ROLE, "stage3") not in _reusable(Client(tags), found, recipe(2))


def test_a_later_member_is_run_again_when_it_stands_on_another_stage_2_than_the_reused_one():
    found = {("member-1", "stage1"): "a1", ("member-1", "stage2"): "a2", ("member-1", "stage3"): "a3",
             ("member-2", "stage3"): "b3", (ENSEMBLE_ROLE, "stage3"): "e"}
    tags = {"a2": {"parent_stage_run": "a1"}, "a3": {"parent_stage_run": "a2"}, "b3": {"parent_stage_run": "old"},
            "e": {"ensemble_members": "a3,b3"}}
    kept = _reusable(Client(tags), found, recipe(2))
    assert ("member-2", "stage3") not in kept and (ENSEMBLE_ROLE, "stage3") not in kept
    tags["a2"] = {"parent_stage_run": "elsewhere"}  # member 1's stage 2 runs again: so does member 2's stage 3
    assert set(_reusable(Client(tags), found, recipe(2))) == {("member-1", "stage1")}
