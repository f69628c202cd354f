"""Search spaces: the shipped studies/*.yaml load for every backbone; bad files fail with file, key and reason;
sampling honours conditions; only mtl_suite/tuning imports optuna / keras_tuner and calls trial.suggest_*."""

import re
from pathlib import Path

import pytest
import yaml

from mtl_suite.config import TrainConfig
from mtl_suite.errors import UserError
from mtl_suite.tuning.space import PARAMS, STUDIES_DIR, load_space, space_file, to_overrides

PACKAGE = Path(__file__).resolve().parents[2] / "mtl_suite"


class FirstChoice:
    """A deterministic suggester: the lower bound, or the first choice unless told otherwise."""

    def __init__(self, **forced):
        self.forced = forced
        self.asked = []

    def float(self, name, low, high, log, step):
        self.asked.append(name)
        return self.forced.get(name, low)

    def int(self, name, low, high, log, step):
        self.asked.append(name)
        return self.forced.get(name, low)

    def categorical(self, name, choices):
        self.asked.append(name)
        return self.forced.get(name, choices[0])


def write(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("stage", ["stage2", "stage3", "classical"])
@pytest.mark.parametrize("backbone", ["tiny", "mobilenet_025", "inception_v3", "xception", "inception_resnet_v2"])
def test_shipped_spaces_load_for_every_backbone(stage, backbone):
    space = load_space(space_file(stage), stage, backbone)
    assert set(space.params) <= set(PARAMS)
    assert list(space.params) == [p for p in PARAMS if p in space.params]  # sampling order = registry order
    assert space.max_epochs(TrainConfig()) >= 1


def test_backbone_section_replaces_stage_wide_specs():
    tiny = load_space(STUDIES_DIR / "stage3.yaml", "stage3", "tiny")
    base = load_space(STUDIES_DIR / "stage3.yaml", "stage3", "mobilenet_025")
    assert tiny.params["warmup_epochs"].type == "fixed" and tiny.params["warmup_epochs"].value == 1
    assert base.params["warmup_epochs"].type == "int" and base.params["warmup_epochs"].high == 4
    assert tiny.params["learning_rate"] == base.params["learning_rate"]  # not overridden: the stage-wide spec
    assert tiny.max_epochs(TrainConfig()) == 1 and base.max_epochs(TrainConfig()) == 6
    assert tiny.max_warmup_epochs(TrainConfig()) == 1 and base.max_warmup_epochs(TrainConfig()) == 4


def test_sampling_skips_inactive_parameters():
    space = load_space(STUDIES_DIR / "stage3.yaml", "stage3", "mobilenet_025")
    suggest = FirstChoice(finetune_epochs=0, augment="none")
    params = space.sample(suggest, TrainConfig())
    assert "unfreeze_layers" not in params and "finetune_learning_rate" not in params
    assert "augment_strength" not in params and "unfreeze_layers" not in suggest.asked
    active = space.sample(FirstChoice(finetune_epochs=2, augment="paper"), TrainConfig())
    assert active["unfreeze_layers"] == 6 and active["augment_strength"] == 0.5
    # a fixed-dimensional engine draws everything, but still only reports what is active
    every = FirstChoice(finetune_epochs=0, augment="none")
    assert space.sample(every, TrainConfig(), everything=True) == params
    assert "unfreeze_layers" in every.asked


def test_strength_is_drawn_only_for_online_augmentation(tmp_path):
    """Offline copies are made at the policy's own strength: a strength drawn for them would be a dead dimension."""
    space = load_space(write(tmp_path, {"params": {
        "augment": {"type": "categorical", "choices": ["none", "paper"]},
        "augment_mode": {"type": "categorical", "choices": ["online", "offline"]},
        "augment_strength": {"type": "float", "low": 0.5, "high": 1.5}}}), "stage3", "xception")
    offline = FirstChoice(augment="paper", augment_mode="offline")
    assert space.sample(offline, TrainConfig()) == {"augment": "paper", "augment_mode": "offline"}
    assert "augment_strength" not in offline.asked
    assert space.sample(FirstChoice(augment="paper"), TrainConfig())["augment_strength"] == 0.5
    assert space.sample(FirstChoice(), TrainConfig()) == {"augment": "none"}  # no mode without augmentation


def test_stain_tta_and_patience_set_their_config_keys(tmp_path):
    space = load_space(write(tmp_path, {"params": {
        "early_stopping_patience": {"type": "int", "low": 2, "high": 4},
        "stain": {"type": "categorical", "choices": ["gray", "none"]},
        "tta": {"type": "categorical", "choices": ["flips", "none"]}}}), "stage3", "xception")
    params = space.sample(FirstChoice(), TrainConfig())
    overrides, _ = to_overrides(params, TrainConfig())
    assert overrides == {"train.early_stopping_patience": 2, "train.stain": "gray", "train.tta": "flips"}


@pytest.mark.parametrize("name, value, reason", [("stain", "macenko", "one of none, gray, reinhard"),
                                                 ("tta", "rotations", "one of none, flips"),
                                                 ("augment_mode", "sometimes", "one of online, offline"),
                                                 ("early_stopping_patience", -1, "0 \\(never stop early\\) or more")])
def test_bad_choices_of_the_new_parameters_are_refused(tmp_path, name, value, reason):
    path = write(tmp_path, {"params": {name: {"type": "categorical", "choices": [value]}}})
    with pytest.raises(UserError, match=reason):
        load_space(path, "stage3", "xception")


def test_overrides_build_the_head_and_keep_strength_apart():
    overrides, strength = to_overrides({"learning_rate": 0.01, "dense_units": 256, "dense_layers": 3,
                                        "augment": "paper", "augment_strength": 1.3}, TrainConfig())
    assert overrides == {"train.learning_rate": 0.01, "train.dense_units": [256, 128, 64], "train.augment": "paper"}
    assert strength == 1.3


BASE = {"params": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}


@pytest.mark.parametrize("params, key, reason", [
    ({"learning_rate": {"type": "floaty", "low": 1, "high": 2}}, "params.learning_rate.type", "unknown type 'floaty'"),
    ({"dropout": {"type": "float", "low": 0.4, "high": 0.1}}, "params.dropout", "low (0.4) is greater than high (0.1)"),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.2}}, "params.lr", "unknown parameter"),
    ({"dropout": {"type": "float", "low": 0.0, "high": 1.5}}, "params.dropout", "value 1.5 is not allowed"),
    ({"learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "params.learning_rate.low",
     "log-scaled range needs low > 0"),
    ({"batch_size": {"type": "categorical", "choices": []}}, "params.batch_size.choices", "non-empty list"),
    ({"batch_size": {"type": "int", "lo": 8, "high": 64}}, "params.batch_size.lo", "unknown key"),
    ({"batch_size": {"type": "int", "low": 8.5, "high": 64}}, "params.batch_size.low", "must be an integer"),
    ({"augment": {"type": "categorical", "choices": ["paper", "sparkles"]}}, "params.augment",
     "unknown augmentation policy 'sparkles'"),
    ({"warmup_epochs": -1}, "params.warmup_epochs", "value -1 is not allowed"),
    ({"dense_layers": {"type": "int", "low": 1, "high": 9}}, "params.dense_layers", "must be in [1, 4]"),
    ({"learning_rate": {"type": "float", "high": 0.1}}, "params.learning_rate.low", "missing"),
])
def test_bad_space_files_name_file_key_and_reason(tmp_path, params, key, reason):
    path = write(tmp_path, {"params": params})
    with pytest.raises(UserError) as error:
        load_space(path, "stage3", "tiny")
    message = str(error.value)
    assert message.startswith(f"{path}: '{key}'"), message
    assert reason in message, message


def test_bad_backbone_sections_and_top_level(tmp_path):
    cases = [
        ({**BASE, "backbones": {"resnet9000": {"dropout": 0.1}}}, "'backbones.resnet9000'", "unknown backbone"),
        ({**BASE, "backbones": {"tiny": {"dropout": {"type": "float", "low": 0.5, "high": 0.2}}}},
         "'backbones.tiny.dropout'", "greater than high"),
        ({**BASE, "searchspace": {}}, "'searchspace'", "unknown key"),
        ({**BASE, "stage": "stage2"}, "'stage'", "this file is for 'stage2'"),
    ]
    for data, key, reason in cases:
        path = write(tmp_path, data)
        with pytest.raises(UserError) as error:
            load_space(path, "stage3", "mobilenet_025")
        assert f"{path}: {key}" in str(error.value) and reason in str(error.value).lower(), str(error.value)
    # a backbone section is checked even when another backbone is tuned
    with pytest.raises(UserError, match="backbones.tiny.dropout"):
        load_space(write(tmp_path, cases[1][0]), "stage3", "mobilenet_025")


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="search space file not found"):
        load_space(tmp_path / "missing.yaml", "stage3", "tiny")
    with pytest.raises(UserError, match=r"not valid YAML \(line"):
        load_space(write(tmp_path, "params: [unclosed\n"), "stage3", "tiny")
    with pytest.raises(UserError, match="expected a mapping"):
        load_space(write(tmp_path, "- a\n- b\n"), "stage3", "tiny")


def test_yaml_1_1_exponent_text_is_read_as_a_number(tmp_path):
    path = write(tmp_path, "params:\n  learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n")
    spec = load_space(path, "stage3", "tiny").params["learning_rate"]
    assert (spec.low, spec.high, spec.log) == (1e-4, 1e-2, True)


def test_only_tuning_imports_optuna_and_keras_tuner_or_calls_suggest():
    offenders = []
    pattern = re.compile(r"^\s*(import|from)\s+(optuna|keras_tuner)\b|\.suggest_(float|int|categorical)\(", re.M)
    for path in PACKAGE.rglob("*.py"):
        if "tuning" in path.relative_to(PACKAGE).parts:
            continue
        if pattern.search(path.read_text(encoding="utf-8")):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


@pytest.mark.parametrize("path", sorted(STUDIES_DIR.glob("*.yaml")), ids=lambda path: path.name)
def test_every_committed_study_file_loads_for_its_stage(path):
    stage = yaml.safe_load(path.read_text())["stage"]
    for backbone in ("mobilenet_025", "xception"):
        assert load_space(path, stage, backbone).params
