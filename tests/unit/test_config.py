"""Config: defaults < experiment YAML < command line; every mistake names the key and where it came from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mtl_suite.config import RECIPE_SECTION, ExperimentConfig, apply_overrides, load_config, to_flat_dict
from mtl_suite.errors import UserError


def write_yaml(tmp_path, text: str, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_a_file():
    config = load_config()
    assert config == ExperimentConfig()
    assert config.train.batch_size == 48  # paper Table I
    assert config.data.folds == 10


def test_yaml_overrides_defaults_and_keeps_the_rest(tmp_path):
    path = write_yaml(tmp_path, "train:\n  batch_size: 16\n  dense_units: [64, 32]\ndata:\n  folds: 5\n")
    config = load_config(path)
    assert config.train.batch_size == 16
    assert config.train.dense_units == (64, 32)  # list -> tuple
    assert config.data.folds == 5
    assert config.train.learning_rate == ExperimentConfig().train.learning_rate  # untouched default


def test_command_line_wins_over_file(tmp_path):
    path = write_yaml(tmp_path, "train:\n  warmup_epochs: 7\n  batch_size: 16\n")
    config = load_config(path, {"train.warmup_epochs": 2})
    assert config.train.warmup_epochs == 2
    assert config.train.batch_size == 16  # from the file, not overridden


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_config().train.batch_size = 1  # type: ignore[misc]


def test_yaml_exponent_floats_are_numbers(tmp_path):
    # PyYAML reads 1e-3 as a string (YAML 1.1); it is obviously the paper's learning rate.
    config = load_config(write_yaml(tmp_path, "train:\n  learning_rate: 1e-3\n  dropout: 0\n"))
    assert config.train.learning_rate == pytest.approx(0.001)
    assert config.train.dropout == 0.0 and isinstance(config.train.dropout, float)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write_yaml(tmp_path, "train:\n  batch_sise: 16\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "train.batch_sise" in message and "batch_size" in message


def test_unknown_section_names_key_and_file(tmp_path):
    path = write_yaml(tmp_path, "trian:\n  batch_size: 16\n")
    with pytest.raises(UserError, match="unknown key 'trian'") as info:
        load_config(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ("train:\n  batch_size: '48'\n", "train.batch_size", "an integer"),
        ("train:\n  batch_size: 4.5\n", "train.batch_size", "an integer"),
        ("train:\n  learning_rate: fast\n", "train.learning_rate", "a number"),
        ("train:\n  class_weights: 1\n", "train.class_weights", "true or false"),
        ("data:\n  layout: 3\n", "data.layout", "a string"),
        ("data:\n  class_map: [a, b]\n", "data.class_map", "a mapping"),
        ("train:\n  dense_units: [64, x]\n", "train.dense_units[1]", "an integer"),
        ("train: 5\n", "train", "a mapping"),
        ("train: []\n", "train", "a mapping"),
    ],
)
def test_wrong_type_names_key_file_and_value(tmp_path, text, key, expected):
    path = write_yaml(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and expected in message and "Received" in message


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write_yaml(tmp_path, "train:\n  batch_size: 16\n  dropout: [0.1\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "not valid YAML" in str(info.value) and "line" in str(info.value)


def test_binary_file_is_a_user_error(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(UserError, match="UTF-8"):
        load_config(path)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(UserError, match="mapping"):
        load_config(write_yaml(tmp_path, "- a\n- b\n"))


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write_yaml(tmp_path, "")) == ExperimentConfig()


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_negative_epochs_in_file_names_file(tmp_path):
    path = write_yaml(tmp_path, "train:\n  warmup_epochs: -1\n")
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "'train.warmup_epochs'" in message and "Received: -1" in message


def test_negative_epochs_on_command_line_names_command_line(tmp_path):
    path = write_yaml(tmp_path, "train:\n  warmup_epochs: 4\n")
    with pytest.raises(UserError) as info:
        load_config(path, {"train.finetune_epochs": -2})
    assert str(info.value).startswith("command line:") and "Received: -2" in str(info.value)


def test_command_line_can_repair_a_bad_file_value(tmp_path):
    path = write_yaml(tmp_path, "train:\n  warmup_epochs: -1\n")
    assert load_config(path, {"train.warmup_epochs": 1}).train.warmup_epochs == 1


def test_zero_epochs_in_total_is_an_error():
    with pytest.raises(UserError, match="at least 1"):
        load_config(None, {"train.warmup_epochs": 0, "train.finetune_epochs": 0})


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("train.nope", 1, "unknown setting 'train.nope'"),
        ("nope.batch_size", 1, "unknown setting 'nope.batch_size'"),
        ("train", 1, "is a section"),
        ("train.batch_size.x", 1, "is a value, not a section"),
        ("train.batch_size", "many", "must be an integer"),
        ("data.duplicates", "keep", "'drop' or 'group'"),
        ("train.precision", "half", "'train.precision' must be one of float32, mixed, mixed_float16"),
        ("train.feature_cache", "yes", "'train.feature_cache' must be true or false"),
        ("train.jit_compile", 1, "'train.jit_compile' must be true or false"),
        ("train.execution", "lazy", "'train.execution' must be one of auto, graph, eager. Received: 'lazy'"),
    ],
)
def test_bad_overrides_are_user_errors(key, value, words):
    with pytest.raises(UserError, match=words):
        apply_overrides(ExperimentConfig(), {key: value})


def test_speed_settings_default_to_the_cpu_choices_and_are_read_from_yaml(tmp_path):
    defaults = ExperimentConfig().train
    assert (defaults.feature_cache, defaults.precision, defaults.jit_compile, defaults.execution) == (
        True, "float32", False, "auto")
    path = write_yaml(tmp_path, "train:\n  feature_cache: false\n  precision: mixed\n  jit_compile: true\n"
                                "  execution: graph\n")
    train = load_config(path).train
    assert (train.feature_cache, train.precision, train.jit_compile, train.execution) == (False, "mixed", True, "graph")
    bad = write_yaml(tmp_path, "train:\n  precision: fp8\n", "bad.yaml")
    with pytest.raises(UserError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: 'train.precision' must be one of") and "'fp8'" in str(info.value)


def test_flat_dict_for_mlflow_params():
    flat = to_flat_dict(load_config(None, {"train.batch_size": 8}))
    assert flat["train.batch_size"] == 8
    assert flat["data.folds"] == 10
    assert "tracking.experiment" in flat



EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))


def _same(got, written) -> bool:
    if isinstance(got, float):  # YAML 1.1 reads 1.24e-3 as text; the config reads it as the number
        return got == pytest.approx(float(written))
    return (list(got) if isinstance(got, tuple) else got) == written


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda path: path.name)
def test_every_shipped_experiment_file_loads_and_sets_what_it_says(path):
    """A shipped experiment file is valid, and each key it writes reaches the config (none silently ignored); its
    recipe section, where it has one, is recipes.py's (tests/unit/test_recipes.py)."""
    config = load_config(path)
    for section, values in yaml.safe_load(path.read_text()).items():
        if section == RECIPE_SECTION:
            continue
        for key, written in values.items():
            assert _same(getattr(getattr(config, section), key), written), f"{section}.{key}"
