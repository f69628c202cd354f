"""Frozen configuration dataclasses, loaded from YAML.

Precedence: dataclass defaults < experiment YAML file < command-line options. Unknown keys and wrong types are
user errors that name the key and the file, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtl_suite.errors import UserError

DEFAULT_EXPERIMENT = "mtl-suite"
PRECISIONS = ("float32", "mixed", "mixed_float16", "mixed_bfloat16")  # train.precision; see models/precision.py
EXECUTIONS = ("auto", "graph", "eager")  # train.execution; see training/fit.py:runs_eagerly
ACTIVATION_DTYPES = ("float32", "float16")  # train.activation_dtype; see training/activations.py
AUGMENT_MODES = ("online", "offline")  # train.augment_mode; see training/cv.py
STAINS = ("none", "gray", "reinhard")  # train.stain; see models/stain.py (a layer of the model graph)
ENSEMBLES = ("none", "folds")  # train.ensemble; see models/ensemble.py
TTAS = ("none", "flips")  # train.tta; see models/ensemble.py
COLOUR_FUSIONS = ("none", "average")  # train.colour_fusion; see models/colour.py
NO_GROUPING = "none"  # data.group_by's default: only byte-identical files grouped; see data/grouping.py
# Metadata of fields added after comparisons and interrupted runs were first keyed on the settings: such a field
# enters those keys only when set (keyed_settings), so work begun before it existed still resumes.
KEYED_WHEN_SET = {"keyed_when_set": True}
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RECIPE_SECTION = "recipe"  # an experiment file's section that makes it a recipe (recipes.py)
DEFAULT_MODEL_NAME = "mtl-all-classifier"  # the registered model `promote` writes and `predict`/`serve` read
CHAMPION_ALIAS, PREVIOUS_ALIAS = "champion", "previous"  # registry aliases: the served version, the one before it
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are split."""

    path: str | None = None  # None: the bundled sample
    layout: str = "auto"
    masks: str | None = None  # "segmented on black" folder or binary masks, same relative names as the images
    image_size: int | None = None  # None: the backbone's own size (models/backbones.py:with_backbone_sizes)
    cell_size: int | None = None  # single-cell crops (stage 2); None: 64 px, or the backbone's minimum if larger
    duplicates: str = "drop"  # drop: keep one copy of identical files; group: keep all, in one group
    on_bad_image: str = "fail"
    test_fraction: float = 0.2
    folds: int = 10
    seed: int = 42
    class_map: dict[str, str] | None = None  # e.g. {Benign: normal, Early: leukemia, ...}
    allow_outside_root: bool = False  # a CSV manifest may list files outside its folder (--allow-outside-root)
    # groups from file names for data without patient ids (data/grouping.py): none | blocks:N | regex:PATTERN.
    # Added after runs were keyed on these settings, so it enters their keys only when set.
    group_by: str = field(default=NO_GROUPING, metadata=KEYED_WHEN_SET)


@dataclass(frozen=True)
class TrainConfig:
    """Model and optimisation. Paper Table I: Adam, lr 1e-3 with exponential decay, batch 48, 160 epochs;
    the epoch defaults here let a 2-core CPU finish in minutes (use --epochs 160 for the paper's)."""

    backbone: str = "mobilenet_025"
    weights: str = "imagenet"  # imagenet | none | path to a weights file
    # head only, backbone frozen. Without augmentation the head trains on cached backbone features (well under 0.1 s
    # an epoch on the bundled sample) and early stopping ends it; 3 epochs left the sample's model no better than the
    # majority class (benchmarks/RESULTS.md, "The quick start's model against the majority class")
    warmup_epochs: int = 60
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
    # online: every training batch is augmented afresh; offline (the paper's way): each training fold gets a fixed,
    # class-balanced augmented copy, made once, so the cached paths (features, activations) still apply
    augment_mode: str = "online"
    offline_per_class: int = 0  # offline: images per class after balancing; 0: as many as the largest class has
    # stain control inside the model (models/stain.py), so training, evaluation, predict and serving apply it alike:
    # none | gray (luminance only) | reinhard (per-image L*a*b* mean/std matched to fixed reference statistics)
    stain: str = "none"
    seed: int = 42
    # Speed; none of these changes the results beyond float rounding.
    feature_cache: bool = True  # warm-up without augmentation: backbone features once, then the head alone
    precision: str = "float32"  # float32 | mixed (float16 on GPU, bfloat16 elsewhere) | mixed_float16 | mixed_bfloat16
    jit_compile: bool = False  # XLA; off by default: on 2 CPU cores compiling costs more than it gains
    execution: str = "auto"  # auto (short phases eager, long ones traced) | graph | eager
    # fine-tuning without online augmentation: cache the activations entering the trainable top and train the top
    # alone (training/activations.py); auto: the highest single-tensor cut below the lowest trainable layer
    activation_cut: str = "auto"  # auto | none | a layer name of the base network
    activation_dtype: str = "float32"  # storage of cached activations: float32 | float16 (half the memory and disk)
    # The final stage's model (models/ensemble.py; earlier stages always refit, their weights start the next stage).
    # ensemble none: one model refit on all development images; folds: the k fold models, probabilities averaged.
    ensemble: str = field(default="none", metadata=KEYED_WHEN_SET)
    # tta none | flips: the final model averages its predictions of the image and its three flips
    tta: str = field(default="none", metadata=KEYED_WHEN_SET)
    # colour_fusion none | average: the final model averages its probabilities with a colour-only classifier's
    # (histograms and statistics, logistic regression) fit on the same training images; it reads stain, not cells
    colour_fusion: str = field(default="none", metadata=KEYED_WHEN_SET)


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
    file_data: dict[str, Any] = {}
    if path is not None:
        file_data = {k: v for k, v in read_yaml(Path(path)).items() if k != RECIPE_SECTION}  # recipes.py reads it
        config = from_mapping(ExperimentConfig, file_data, source=str(path))
    overrides = dict(overrides or {})
    config = _replace_dotted(config, overrides, "command line")
    try:
        validate(config)
    except UserError as exc:
        # Name where the offending value was set: the command line wins over the file, the file over defaults.
        keys = getattr(exc, "key", "").split(" + ")  # a combined check names several keys
        if any(k in overrides for k in keys):
            where = "command line"
        elif path is not None and any(_has_dotted(file_data, k) for k in keys):
            where = str(path)
        else:
            where = str(path) if path is not None else "command line"
        raise UserError(f"{where}: {exc}") from None
    return config


def _has_dotted(data: Mapping[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (expected a YAML config)") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML{yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level. Received: {type(data).__name__}")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """' (line N: what the parser expected)' for a parse error; tags such as !!python/object are refused by
    safe_load as a constructor error, which says so."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or "").split())
    if mark is None and not problem:
        return ""
    where = f"line {mark.line + 1}" if mark is not None else ""
    return f" ({where}{': ' if where and problem else ''}{problem})"


def from_mapping(cls: type, data: Mapping[str, Any], source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking every key and type against the field annotations."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping. Received: {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - names)
    if unknown:
        raise UserError(
            f"{source}: unknown key '{prefix}{unknown[0]}'. Expected one of: {', '.join(sorted(names))}"
        )
    values = {}
    for key, value in data.items():
        key_path = f"{prefix}{key}"
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = from_mapping(tp, {} if value is None else value, source, f"{key_path}.")
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
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string; it is what the user meant
        raise _type_error(key, source, "a number", value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, source, "a string", value)
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")  # a bug in this module, not user input


_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _type_error(key: str, source: str, expected: str, value: Any) -> UserError:
    return UserError(f"{source}: '{key}' must be {expected}. Received: {value!r}")


def apply_overrides(config: Any, overrides: Mapping[str, Any], source: str = "command line") -> Any:
    """Return a copy of `config` with dotted keys replaced, type-checked like file values."""
    config = _replace_dotted(config, overrides, source)
    try:
        validate(config)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return config


def _replace_dotted(config: Any, overrides: Mapping[str, Any], source: str) -> Any:
    for dotted, value in overrides.items():
        config = _replace_one(config, dotted.split("."), "", value, dotted, source)
    return config


def _replace_one(node: Any, parts: list[str], prefix: str, value: Any, dotted: str, source: str) -> Any:
    """Replace the field at `parts` below dataclass `node` (whose own dotted path is `prefix`)."""
    hints = typing.get_type_hints(type(node))
    name, key = parts[0], f"{prefix}{parts[0]}"
    if name not in hints:
        raise UserError(f"{source}: unknown setting '{dotted}'. Expected one of: "
                        + ", ".join(f"{prefix}{f.name}" for f in dataclasses.fields(node)))
    current = getattr(node, name)
    if dataclasses.is_dataclass(current):
        if len(parts) == 1:
            first = dataclasses.fields(current)[0].name
            raise UserError(f"{source}: '{dotted}' is a section, not a setting; set one of its keys, "
                            f"e.g. '{key}.{first}'")
        return dataclasses.replace(node, **{name: _replace_one(current, parts[1:], f"{key}.", value, dotted, source)})
    if len(parts) > 1:
        raise UserError(f"{source}: unknown setting '{dotted}' ('{key}' is a value, not a section)")
    return dataclasses.replace(node, **{name: coerce(value, hints[name], dotted, source)})


def validate(config: Any) -> None:
    """Range checks that types alone cannot express."""
    if not isinstance(config, ExperimentConfig):
        return
    d, t = config.data, config.train
    checks = [
        (d.image_size is None or d.image_size >= 32, "data.image_size", "at least 32", d.image_size),
        (d.cell_size is None or d.cell_size >= 32, "data.cell_size", "at least 32", d.cell_size),
        (0.0 <= d.test_fraction < 1.0, "data.test_fraction", "in [0, 1)", d.test_fraction),
        (d.folds >= 1, "data.folds", "at least 1", d.folds),
        (d.duplicates in ("drop", "group"), "data.duplicates", "'drop' or 'group'", d.duplicates),
        (d.on_bad_image in ("skip", "fail"), "data.on_bad_image", "'skip' or 'fail'", d.on_bad_image),
        (t.warmup_epochs >= 0, "train.warmup_epochs", "0 or more", t.warmup_epochs),
        (t.finetune_epochs >= 0, "train.finetune_epochs", "0 or more", t.finetune_epochs),
        (t.warmup_epochs + t.finetune_epochs >= 1, "train.warmup_epochs + train.finetune_epochs", "at least 1",
         f"{t.warmup_epochs} + {t.finetune_epochs}"),
        (t.batch_size >= 1, "train.batch_size", "at least 1", t.batch_size),
        (t.learning_rate > 0, "train.learning_rate", "positive", t.learning_rate),
        (t.finetune_learning_rate > 0, "train.finetune_learning_rate", "positive", t.finetune_learning_rate),
        (0 < t.decay_rate <= 1, "train.decay_rate", "in (0, 1]", t.decay_rate),
        (0 <= t.dropout < 1, "train.dropout", "in [0, 1)", t.dropout),
        (t.unfreeze_layers >= 0, "train.unfreeze_layers", "0 or more", t.unfreeze_layers),
        (t.early_stopping_patience >= 0, "train.early_stopping_patience", "0 (never stop early) or more",
         t.early_stopping_patience),
        (all(u >= 1 for u in t.dense_units), "train.dense_units", "positive integers", t.dense_units),
        (t.precision in PRECISIONS, "train.precision", f"one of {', '.join(PRECISIONS)}", t.precision),
        (t.execution in EXECUTIONS, "train.execution", f"one of {', '.join(EXECUTIONS)}", t.execution),
        (t.activation_dtype in ACTIVATION_DTYPES, "train.activation_dtype", f"one of {', '.join(ACTIVATION_DTYPES)}",
         t.activation_dtype),
        (t.augment_mode in AUGMENT_MODES, "train.augment_mode", f"one of {', '.join(AUGMENT_MODES)}", t.augment_mode),
        (t.offline_per_class >= 0, "train.offline_per_class", "0 or more", t.offline_per_class),
        (t.stain in STAINS, "train.stain", f"one of {', '.join(STAINS)}", t.stain),
        (t.ensemble in ENSEMBLES, "train.ensemble", f"one of {', '.join(ENSEMBLES)}", t.ensemble),
        (t.tta in TTAS, "train.tta", f"one of {', '.join(TTAS)}", t.tta),
        (t.colour_fusion in COLOUR_FUSIONS, "train.colour_fusion", f"one of {', '.join(COLOUR_FUSIONS)}",
         t.colour_fusion),
        (t.ensemble == "none" or d.folds >= 2, "train.ensemble + data.folds", "at least 2 folds for a fold "
         "ensemble", f"{t.ensemble} + {d.folds}"),
        (not (t.execution == "eager" and t.jit_compile), "train.execution + train.jit_compile",
         "compatible: eager steps are never XLA-compiled (use auto or graph)", f"{t.execution} + {t.jit_compile}"),
    ]
    for ok, key, expected, value in checks:
        if not ok:
            error = UserError(f"'{key}' must be {expected}. Received: {value!r}")
            error.key = key  # type: ignore[attr-defined]
            raise error


def keyed_settings(config: Any) -> dict[str, Any]:
    """to_flat_dict without the KEYED_WHEN_SET fields that hold their defaults: what resume and comparison keys
    hash."""
    return {key: value for key, value in to_flat_dict(config).items() if key not in _later_defaults(config)}


def _later_defaults(config: Any, prefix: str = "") -> set[str]:
    out = set()
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out |= _later_defaults(value, f"{prefix}{f.name}.")
        elif f.metadata.get("keyed_when_set") and value == f.default:
            out.add(f"{prefix}{f.name}")
    return out


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
