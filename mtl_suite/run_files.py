"""The files a stage run logs, by name, and `ModelInfo`: what its `model_info.json` says of the Keras model beside it.

Every module that reads or writes these names takes them from here, so a writer and its readers cannot drift apart.
The reliability folder's name is `training/reliability.py:ARTIFACT`, beside the code that writes its files.

model_info.json is read by promote, evaluate, report and ensemble, and is packed into every registered model, whose
pyfunc reads it when it loads (serving/pyfunc.py); its JSON stays exactly as it was, so runs logged and models
registered before this module read the same as new ones."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtl_suite.errors import UserError

MODEL_INFO = "model_info.json"  # beside the Keras model: class names, input size, what the weights came from
KERAS_MODEL = "model"  # the classifier, raw pixels in, probabilities out (MLflow's keras flavour)
BACKBONE_DIR = "backbone"
BACKBONE_ARCHIVE = f"{BACKBONE_DIR}/backbone.npz"  # the weights the next stage starts from (models/transfer.py)
EXPOSURE = "lineage/exposure.json"  # what the run's weights have seen (data/lineage.py)
CONFIG = "config.yaml"  # the settings the run resolved (config.py)
TEST_PREDICTIONS = "test/predictions.csv"  # per image of the outer test part: path, sha256, label, p_<class>, predicted
# the same for colour alone (the shortcut check's best variant, refit on the development part); runs made before it
# was logged have none
COLOUR_TEST_PREDICTIONS = "shortcut/test_predictions.csv"


@dataclass(frozen=True)
class ModelInfo:
    """What serving and evaluation need to feed a logged model (its classes in output order, its input size), what
    it is (backbone; for an ensemble its member runs) and, as `lineage`, what a stage run's weights came from
    (weights, their sha256, the stage-1 and stage-2 runs, the run itself)."""

    class_names: tuple[str, ...]
    image_size: int
    backbone: str  # "" when the file names none (hand-made ones, as tests make)
    # True would mean the model expects segmented (masked) fields, which serving cannot make: promote refuses it
    input_masking: bool
    ensemble_members: tuple[str, ...] = ()
    lineage: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        clash = sorted(set(self.lineage) & _FIELDS)
        if clash:  # to_dict would write one key twice: the caller's mistake, not the user's
            raise ValueError(f"lineage keys {clash} are ModelInfo fields; pass them as fields")

    def to_dict(self) -> dict[str, Any]:
        """The JSON as the suite has always written it: stage runs never wrote `ensemble_members`."""
        members = {"ensemble_members": list(self.ensemble_members)} if self.ensemble_members else {}
        return {"class_names": list(self.class_names), "image_size": self.image_size, "backbone": self.backbone,
                "input_masking": self.input_masking, **members, **self.lineage}

    def to_metadata(self) -> dict[str, Any]:
        """What a registered model's MLmodel metadata says of it (`mtl_suite`): read back with from_dict."""
        return {"class_names": list(self.class_names), "image_size": self.image_size, "backbone": self.backbone}

    @classmethod
    def from_dict(cls, data: Any, source: str) -> ModelInfo:
        """`source` names where `data` came from (e.g. "run abc's model_info.json") in the one-line UserError for a
        file without usable class names or image size: nothing is guessed, a wrong size would misread every image."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object, got {type(data).__name__}")
        # absent from files logged before the suite recorded it: those models saw whole images (stage.py)
        masking = data.get("input_masking", False)
        if not isinstance(masking, bool):
            raise UserError(f"{source}: input_masking {masking!r} is not true or false")
        return cls(class_names=_class_names(data, source), image_size=_image_size(data, source),
                   backbone=_text(data, "backbone", source), input_masking=masking,
                   ensemble_members=tuple(_texts(data, "ensemble_members", source)),
                   lineage={k: v for k, v in data.items() if k not in _FIELDS})

    @classmethod
    def read(cls, path: Path, source: str) -> ModelInfo:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{source}: cannot read it as JSON ({exc})") from None
        return cls.from_dict(data, source)


_FIELDS = {"class_names", "image_size", "backbone", "input_masking", "ensemble_members"}


def _class_names(data: dict, source: str) -> tuple[str, ...]:
    if "class_names" not in data:
        raise UserError(f"{source} names no class_names (the model's classes, in output order)")
    names = data["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise UserError(f"{source}: class_names {names!r} is not a list of class names")
    return tuple(names)


def _image_size(data: dict, source: str) -> int:
    if "image_size" not in data:
        raise UserError(f"{source} names no image_size (the model's input size in pixels)")
    size = data["image_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:  # bool: json's true is an int to Python
        raise UserError(f"{source}: image_size {size!r} is not a size in pixels")
    return size


def _text(data: dict, key: str, source: str) -> str:
    # null: the MLmodel metadata of a model registered before ModelInfo, from a file that named no backbone
    value = data.get(key)
    value = "" if value is None else value
    if not isinstance(value, str):
        raise UserError(f"{source}: {key} {value!r} is not a name")
    return value


def _texts(data: dict, key: str, source: str) -> list[str]:
    values = data.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UserError(f"{source}: {key} {values!r} is not a list of names")
    return values
