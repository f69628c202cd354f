"""Recipes (mtl_suite/recipes.py): the shipped ones state the whole model, members and the command line layer over
the file in order, and a mistake in a recipe ends as one line naming the file and the key, before any run exists."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from mtl_suite.catalog import Stage, Task
from mtl_suite.cli import app
from mtl_suite.errors import UserError
from mtl_suite.recipes import load_recipe, parse_settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = {"accurate", "stain-robust", "fast-cpu"}


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_recipes_state_the_whole_model():
    found = {path.stem: load_recipe(path) for path in (REPO / "experiments").glob("*.yaml")
             if "recipe:" in path.read_text(encoding="utf-8")}
    assert SHIPPED <= set(found)
    for name, recipe in found.items():
        text = recipe.path.read_text(encoding="utf-8")
        for key in ("backbone:", "weights:", "image_size:", "stage:"):
            assert key in text, f"{name}: a recipe states {key} itself rather than leaving it to a default"
        assert "mtl-suite train experiments/" in text, f"{name}: its comment shows the command that runs it"
    accurate = found["accurate"]
    assert accurate.is_ensemble and accurate.stage is Stage.STAGE3
    assert [(m.train.seed, m.train.colour_fusion, m.train.stain) for m in accurate.members] == [
        (42, "average", "none"), (1, "average", "none"), (42, "none", "gray")]
    assert {m.data.image_size for m in accurate.members} == {299}
    assert found["stain-robust"].stage is Stage.CLASSICAL and found["stain-robust"].config.train.augment == "zoom+hed"
    assert found["fast-cpu"].config.train.backbone == "mobilenet_025"


def test_member_settings_then_the_command_line_override_the_file(tmp_path):
    path = _recipe(tmp_path, "recipe:\n  stage: classical\n  task: binary\n  members:\n    - {}\n"
                             "    - {train.seed: 7, data.image_size: 96}\n"
                             "train:\n  backbone: tiny\n  seed: 3\ndata:\n  image_size: 64\n")
    recipe = load_recipe(path, {"data.image_size": 80, "train.dropout": 0.1})
    assert (recipe.stage, recipe.task, recipe.name) == (Stage.CLASSICAL, Task.BINARY, "recipe")
    assert [(m.train.seed, m.data.image_size, m.train.dropout) for m in recipe.members] == [(3, 80, 0.1),
                                                                                            (7, 80, 0.1)]
    assert recipe.tags() == {"recipe": "recipe", "recipe_digest": recipe.digest} and len(recipe.digest) == 12


def test_a_file_without_a_recipe_section_is_one_stage3_model(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, "train:\n  backbone: tiny\n"))
    assert (recipe.stage, recipe.task, recipe.is_ensemble) == (Stage.STAGE3, Task.MULTICLASS, False)


@pytest.mark.parametrize("text, fragment", [
    ("recipe:\n  stage: stage2\n", "'recipe.stage' must be the final stage, one of stage3, classical. Received: "
                                   "'stage2'"),
    ("recipe:\n  task: ternary\n", "'recipe.task' must be one of binary, multiclass"),
    ("recipe:\n  member: []\n", "unknown key 'recipe.member'. Expected one of: stage, task, members"),
    ("recipe:\n  members: []\n", "'recipe.members' must be a list of mappings"),
    ("recipe:\n  members: [{}, 3]\n", "'recipe.members[1]' must be a mapping of settings"),
    ("recipe:\n  members: [{}, {train.sede: 1}]\n", "recipe.members[1]: unknown setting 'train.sede'"),
    ("recipe:\n  members: [{train.dropout: 2}]\n", "recipe.members[0]: 'train.dropout' must be in [0, 1)"),
    ("recipe: [stage3]\n", "'recipe' must be a mapping"),
    ("train:\n  epochz: 3\n", "unknown key 'train.epochz'"),
])
def test_a_bad_recipe_is_one_line_naming_the_file_and_key(tmp_path, text, fragment):
    path = _recipe(tmp_path, text)
    with pytest.raises(UserError) as caught:
        load_recipe(path)
    assert fragment in str(caught.value) and str(path) in str(caught.value)


def test_set_reads_values_as_yaml_and_refuses_a_missing_equals():
    assert parse_settings(["train.seed=1", "train.dense_units=[256, 64]", "train.learning_rate=1e-3",
                           "data.path=/x=y"]) == {"train.seed": 1, "train.dense_units": [256, 64],
                                                   "train.learning_rate": "1e-3", "data.path": "/x=y"}
    with pytest.raises(UserError, match="--set: expected key=value"):
        parse_settings(["train.seed"])


@pytest.mark.parametrize("args, fragment", [
    (["train", "experiments/accurate.yaml", "--set", "train.seed=x"], "command line: 'train.seed' must be an "
                                                                      "integer. Received: 'x'"),
    (["train", "experiments/fast-cpu.yaml", "--data", "/no/such/folder"], "--data (data.path): no such file"),
    (["train", "no-such-recipe.yaml"], "config file not found: no-such-recipe.yaml"),
    (["train", "experiments/fast-cpu.yaml", "--fresh", "--storage", "units.log"], "--fresh trains every member "
                                                                                 "again, while --storage shares"),
    (["train", "experiments/fast-cpu.yaml", "--storage", "README.md/units.log"], "cannot create README.md/units.log"),
    (["train", "experiments/fast-cpu.yaml", "--storage", "units.log", "--heartbeat-interval", "0"],
     "--grace-period (None) must be longer than --heartbeat-interval (0, at least 1)"),
    (["stage3", "--config", "experiments/accurate.yaml"], "experiments/accurate.yaml is an ensemble recipe: run it "
                                                          "with `mtl-suite train experiments/accurate.yaml`"),
    (["stage3", "--config", "experiments/stain-robust.yaml"], "is a recipe for classical, not stage3"),
    (["classical", "--set", "train.dropout=2"], "command line: 'train.dropout' must be in [0, 1). Received: 2"),
    (["stage2", "--set", "train.sede=1"], "command line: unknown setting 'train.sede'"),
])
def test_the_cli_refuses_before_any_run(runner, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(REPO)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, [*args, "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("error: ") and fragment in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "mlflow.db").exists() or mlflow.MlflowClient(uri).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(uri).search_experiments()]) == []


def test_every_worker_of_one_train_command_finds_the_same_units_and_another_command_other_ones(monkeypatch):
    """train --storage names its study after training_key: the same recipe, settings, data, model name and external
    check give the same key whatever tracking URI a worker reaches the store by; anything that changes the models
    gives another key, so a worker of another command never claims these units."""
    from mtl_suite.workflows.recipe import TrainRequest, training_key
    from mtl_suite.workflows.reliability import ExternalCheck

    monkeypatch.chdir(REPO)

    def key(overrides=None, **request) -> str:
        return training_key(TrainRequest(load_recipe("experiments/accurate.yaml", overrides or {}), **request))

    same = key()
    assert key({"tracking.tracking_uri": "http://mlflow-host:5000"}) == same
    assert key({"tracking.experiment": "elsewhere"}) == same
    others = [key({"train.seed": 7}), key({"data.seed": 43}), key({"data.path": "mtl_suite/assets/sample/original"}),
              key(model_name="other-model"), key(normal_class="Benign"),
              key(external=ExternalCheck("mtl_suite/assets/sample/original", "Benign"))]
    assert same not in others and len(set(others)) == len(others)
