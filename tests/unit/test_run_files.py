"""ModelInfo (run_files.py): the model_info.json of old and new runs reads the same and writes back unchanged, and a
file without usable class names or image size is a one-line error naming where it came from."""

import json

import pytest

from mtl_suite.errors import UserError
from mtl_suite.run_files import ModelInfo

# as workflows/stage.py wrote it before ModelInfo existed (a stage-3 run started from stage 2)
STAGE_RUN = {"class_names": ["ALL", "normal"], "image_size": 224, "backbone": "xception", "input_masking": False,
             "weights": "imagenet", "weights_source": "run s2 (stage2)", "weights_sha256": "ab" * 32,
             "stage1_run": "s1", "stage2_run": "s2", "stage": "stage3", "run_id": "r3"}
# as workflows/ensemble.py wrote it
ENSEMBLE_RUN = {"class_names": ["ALL", "normal"], "image_size": 224, "input_masking": False,
                "backbone": "xception+mobilenet_025", "ensemble_members": ["r3", "r4"]}


@pytest.mark.parametrize("written", [STAGE_RUN, ENSEMBLE_RUN], ids=["stage", "ensemble"])
def test_a_written_file_reads_and_writes_back_unchanged(written):
    info = ModelInfo.from_dict(json.loads(json.dumps(written)), "test")
    assert info.to_dict() == written
    assert ModelInfo.from_dict(info.to_dict(), "again") == info


def test_the_fields_are_typed_and_the_rest_is_lineage():
    stage = ModelInfo.from_dict(STAGE_RUN, "test")
    assert (stage.class_names, stage.image_size, stage.backbone, stage.input_masking, stage.ensemble_members) == (
        ("ALL", "normal"), 224, "xception", False, ())
    assert stage.lineage == {k: STAGE_RUN[k] for k in ("weights", "weights_source", "weights_sha256", "stage1_run",
                                                       "stage2_run", "stage", "run_id")}
    assert ModelInfo.from_dict(ENSEMBLE_RUN, "test").ensemble_members == ("r3", "r4")


def test_a_stage_file_keeps_its_key_order():
    assert list(ModelInfo.from_dict(STAGE_RUN, "test").to_dict()) == list(STAGE_RUN)


def test_older_and_hand_made_files_read():
    """Runs logged before input_masking was recorded saw whole images; hand-made files (tests) may name no
    backbone."""
    info = ModelInfo.from_dict({"class_names": ["a", "b"], "image_size": 64}, "test")
    assert (info.backbone, info.input_masking, info.ensemble_members, info.lineage) == ("", False, (), {})
    # a model registered from such a file said so in its MLmodel metadata
    assert ModelInfo.from_dict({"class_names": ["a"], "image_size": 64, "backbone": None}, "test").backbone == ""


def test_metadata_is_what_a_registered_model_said_and_reads_back():
    info = ModelInfo.from_dict(STAGE_RUN, "test")
    assert info.to_metadata() == {"class_names": ["ALL", "normal"], "image_size": 224, "backbone": "xception"}
    assert ModelInfo.from_dict(info.to_metadata(), "metadata").image_size == 224


@pytest.mark.parametrize("change, message", [
    ({"class_names": None}, "class_names None is not a list of class names"),
    ({"class_names": []}, "class_names [] is not a list of class names"),
    ({"class_names": "ALL,normal"}, "is not a list of class names"),
    ({"class_names": ["ALL", 3]}, "is not a list of class names"),
    ({"image_size": "224"}, "image_size '224' is not a size in pixels"),
    ({"image_size": 0}, "image_size 0 is not a size in pixels"),
    ({"image_size": 224.0}, "is not a size in pixels"),
    ({"image_size": True}, "is not a size in pixels"),
    ({"input_masking": "no"}, "input_masking 'no' is not true or false"),
    ({"backbone": 3}, "backbone 3 is not a name"),
    ({"ensemble_members": "r3,r4"}, "ensemble_members 'r3,r4' is not a list of names"),
])
def test_a_malformed_field_is_refused_naming_the_source(change, message):
    with pytest.raises(UserError, match="^run r3's model_info.json: ") as caught:
        ModelInfo.from_dict({**STAGE_RUN, **change}, "run r3's model_info.json")
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("key", ["class_names", "image_size"])
def test_a_missing_class_list_or_size_is_refused_not_guessed(key):
    data = {k: v for k, v in STAGE_RUN.items() if k != key}
    with pytest.raises(UserError, match=f"^run r3's model_info.json names no {key} "):
        ModelInfo.from_dict(data, "run r3's model_info.json")


def test_not_an_object_is_refused():
    with pytest.raises(UserError, match="^somewhere: expected a JSON object, got list$"):
        ModelInfo.from_dict(["ALL"], "somewhere")


def test_read_names_the_file_it_cannot_parse(tmp_path):
    (tmp_path / "model_info.json").write_text(json.dumps(STAGE_RUN))
    assert ModelInfo.read(tmp_path / "model_info.json", "x").image_size == 224
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="^the model's file: cannot read it as JSON"):
        ModelInfo.read(tmp_path / "broken.json", "the model's file")


def test_lineage_cannot_hold_a_field():
    with pytest.raises(ValueError, match="backbone"):
        ModelInfo(("a",), 8, "tiny", False, lineage={"backbone": "tiny"})


def test_a_run_without_model_info_is_described_by_its_tags_never_by_a_guess():
    """Stage 1 on ImageNet weights alone logs no model; its tags say its classes (none) and size."""
    from types import SimpleNamespace

    from mtl_suite.tracking.report_queries import _described_by_tags

    def run(tags):
        return SimpleNamespace(info=SimpleNamespace(run_id="r1"), data=SimpleNamespace(tags=tags))

    assert _described_by_tags(run({"image_size": "224", "classes": "ALL,normal"})) == (["ALL", "normal"], 224)
    assert _described_by_tags(run({"image_size": "96"})) == ([], 96)
    for tags in ({}, {"image_size": "auto"}):
        with pytest.raises(UserError, match="^run r1 has no model_info.json and its image_size tag is"):
            _described_by_tags(run(tags))


def test_promote_refuses_a_model_that_expects_masked_images():
    from mtl_suite.workflows.promote import check_servable

    check_servable("r3", ModelInfo.from_dict(STAGE_RUN, "test"))
    with pytest.raises(UserError, match="^run r3 was trained on masked"):
        check_servable("r3", ModelInfo.from_dict({**STAGE_RUN, "input_masking": True}, "test"))
