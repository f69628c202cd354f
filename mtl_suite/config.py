"""Frozen configuration dataclasses, loaded from YAML.

Precedence: dataclass defaults < experiment YAML file < command-line options. Unknown keys and wrong types are
user errors that name the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtl_suite.errors import UserError

DEFAULT_EXPERIMENT = "mtl-suite"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are split."""

    path: str | None = None  # None: the bundled sample
    layout: str = "auto"
    masks: str | None = None  # "segmented on black" folder or binary masks, same relative names as the images
    image_size: int = 128
    duplicates: str = "drop"  # drop: keep one copy of identical files; group: keep all, in one group
    on_bad_image: str = "fail"
    test_fraction: float = 0.2
    folds: int = 10
    seed: int = 42
    class_map: dict[str, str] | None = None  # e.g. {Benign: normal, Early: leukemia, ...}


@dataclass(frozen=True)
class TrainConfig:
    """Model and optimisation. Paper Table I: Adam, lr 1e-3 with exponential decay, batch 48, 160 epochs;
    the epoch defaults here are low so a 2-core CPU finishes in minutes (use --epochs 160 for the paper's)."""

    backbone: str = "mobilenet_025"
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    warmup_epochs: int = 3  # head only, backbone frozen
    finetune_epochs: int = 2  # top layers unfrozen
    unfreeze_layers: int = 20
    batch_size: int = 48
    learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    decay_rate: float = 0.9  # exponential decay per epoch
    dense_units: tuple[int, ...] = (128,)
    dropout: float = 0.3
    early_stopping_patience: int = 5
    class_weights: bool = True
    augment: str = "none"
    seed: int = 42


@dataclass(frozen=True)
class TrackingConfig:
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = DEFAULT_EXPERIMENT


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """Defaults, then the YAML file, then dotted overrides such as {"train.warmup_epochs": 5}."""
    config = ExperimentConfig()
    if path is not None:
        config = from_mapping(ExperimentConfig, _read_yaml(Path(path)), source=str(path))
    return apply_overrides(config, overrides or {})


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level. Received: {type(data).__name__}")
    return data


def from_mapping(cls: type, data: Mapping[str, Any], source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type against the field annotations."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping. Received: {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(
            f"{source}: unknown key '{prefix}{unknown[0]}'. Expected one of: {', '.join(sorted(names))}"
        )
    values = {}
    for key, value in data.items():
        key_path = f"{prefix}{key}"
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = from_mapping(tp, value or {}, source, f"{key_path}.")
        else:
            values[key] = coerce(value, tp, key_path, source)
    return cls(**values)


def coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against annotation `tp`, converting only where it is lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key, source)
    if origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        return (coerce(value, args[0], key, source),)  # a scalar where a list is allowed: a 1-tuple
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, source, "a mapping", value)
        return {coerce(k, args[0], key, source): coerce(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, source, "true or false", value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, source, "an integer", value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, source, "a number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, source, "a string", value)
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug in this module, not user input


def _type_error(key: str, source: str, expected: str, value: Any) -> UserError:
    return UserError(f"{source}: '{key}' must be {expected}. Received: {value!r}")


def apply_overrides(config: Any, overrides: Mapping[str, Any], source: str = "command line") -> Any:
    """Return a copy of `config` with dotted keys replaced, type-checked like file values."""
    for dotted, value in overrides.items():
        section_name, _, name = dotted.rpartition(".")
        section = getattr(config, section_name) if section_name else config
        hints = typing.get_type_hints(type(section))
        if name not in hints:
            raise UserError(f"{source}: unknown setting '{dotted}'")
        new_section = dataclasses.replace(section, **{name: coerce(value, hints[name], dotted, source)})
        config = dataclasses.replace(config, **{section_name: new_section}) if section_name else new_section
    validate(config)
    return config


def validate(config: Any) -> None:
    """Range checks that types alone cannot express."""
    if not isinstance(config, ExperimentConfig):
        return
    d, t = config.data, config.train
    checks = [
        (d.image_size >= 32, "data.image_size", "at least 32", d.image_size),
        (0.0 <= d.test_fraction < 1.0, "data.test_fraction", "in [0, 1)", d.test_fraction),
        (d.folds >= 1, "data.folds", "at least 1", d.folds),
        (d.duplicates in ("drop", "group"), "data.duplicates", "'drop' or 'group'", d.duplicates),
        (d.on_bad_image in ("skip", "fail"), "data.on_bad_image", "'skip' or 'fail'", d.on_bad_image),
        (t.warmup_epochs >= 0, "train.warmup_epochs", "0 or more", t.warmup_epochs),
        (t.finetune_epochs >= 0, "train.finetune_epochs", "0 or more", t.finetune_epochs),
        (t.warmup_epochs + t.finetune_epochs >= 1, "train epochs", "at least 1 in total", t.warmup_epochs),
        (t.batch_size >= 1, "train.batch_size", "at least 1", t.batch_size),
        (t.learning_rate > 0, "train.learning_rate", "positive", t.learning_rate),
        (t.finetune_learning_rate > 0, "train.finetune_learning_rate", "positive", t.finetune_learning_rate),
        (0 < t.decay_rate <= 1, "train.decay_rate", "in (0, 1]", t.decay_rate),
        (0 <= t.dropout < 1, "train.dropout", "in [0, 1)", t.dropout),
        (t.unfreeze_layers >= 0, "train.unfreeze_layers", "0 or more", t.unfreeze_layers),
        (all(u >= 1 for u in t.dense_units), "train.dense_units", "positive integers", t.dense_units),
    ]
    for ok, key, expected, value in checks:
        if not ok:
            raise UserError(f"'{key}' must be {expected}. Received: {value!r}")


def to_flat_dict(config: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten for logging as MLflow params: {"train.batch_size": 48, ...}."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(to_flat_dict(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out
