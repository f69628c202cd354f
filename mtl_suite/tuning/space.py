"""Search spaces from `studies/<stage>.yaml`, engine-agnostic: the same space drives Optuna and keras-tuner.

A file has `params:` (name -> spec) and optional `backbones: {<backbone>: {name: spec}}` whose entries replace the
stage-wide spec for that backbone. A spec is a mapping with `type: float | int | categorical`, or a plain value
(fixed, not searched):

    learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    batch_size: {type: categorical, choices: [16, 32, 48]}
    warmup_epochs: 1

Every bound and choice is checked up front against the training config's own validation, so a bad file fails
before the first trial, naming the file, the key and the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import yaml

from mtl_suite.config import ExperimentConfig, TrainConfig, apply_overrides, coerce, yaml_problem
from mtl_suite.errors import UserError

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"
TYPES = ("float", "int", "categorical")
SPEC_KEYS = {"type", "low", "high", "log", "step", "choices"}
TOP_KEYS = {"description", "stage", "params", "backbones"}


class Suggester(Protocol):
    """What an engine offers: Optuna's trial.suggest_* or keras-tuner's hp.* behind one interface."""

    def float(self, name: str, low: float, high: float, log: bool, step: float | None) -> float: ...

    def int(self, name: str, low: int, high: int, log: bool, step: int) -> int: ...

    def categorical(self, name: str, choices: tuple) -> Any: ...


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str  # float | int | categorical | fixed
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()
    value: Any = None

    def candidates(self) -> list:
        """The values that bound the spec: enough to check it against the config's validation."""
        if self.type == "fixed":
            return [self.value]
        if self.type == "categorical":
            return list(self.choices)
        return [self.low, self.high]

    def upper(self) -> Any:
        return max(self.candidates())

    def sample(self, suggest: Suggester) -> Any:
        if self.type == "fixed":
            return self.value
        if self.type == "float":
            return suggest.float(self.name, self.low, self.high, self.log, self.step)
        if self.type == "int":
            return suggest.int(self.name, self.low, self.high, self.log, self.step or 1)
        return suggest.categorical(self.name, self.choices)

    def as_dict(self) -> dict:
        if self.type == "fixed":
            return {"value": self.value}
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def _check_config(key: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        apply_overrides(ExperimentConfig(), {key: value}, source="value")

    return check


def _check_range(low: float, high: float, kind: type) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        coerce(value, kind, "value", "value")
        if not low <= value <= high:
            raise UserError(f"must be in [{low}, {high}]. Received: {value!r}")

    return check


def _check_augment(value: Any) -> None:
    from mtl_suite.imaging.augment import build_transform

    if not isinstance(value, str):
        raise UserError(f"must be a policy name. Received: {value!r}")
    build_transform(value)


@dataclass(frozen=True)
class ParamInfo:
    """A tunable parameter: how it maps onto the training config and when it matters."""

    name: str
    help: str
    key: str | None  # config key it sets directly; None: combined with others in `to_overrides`
    check: Callable[[Any], None]
    active: Callable[[Mapping[str, Any]], bool] = lambda params: True


def _finetuning(params: Mapping[str, Any]) -> bool:
    return params["finetune_epochs"] > 0


def _augmenting(params: Mapping[str, Any]) -> bool:
    return params["augment"] != "none"


def _augmenting_online(params: Mapping[str, Any]) -> bool:
    """Offline copies are drawn at the policy's own strength (imaging/augment.py balance_classes)."""
    return _augmenting(params) and params["augment_mode"] == "online"


# Sampling order matters: a parameter's `active` condition only reads parameters listed before it.
PARAMS: dict[str, ParamInfo] = {
    info.name: info
    for info in [
        ParamInfo("learning_rate", "Adam learning rate of the head warm-up", "train.learning_rate",
                  _check_config("train.learning_rate")),
        ParamInfo("batch_size", "batch size", "train.batch_size", _check_config("train.batch_size")),
        ParamInfo("dropout", "dropout before each head dense layer", "train.dropout", _check_config("train.dropout")),
        ParamInfo("dense_units", "width of the first head dense layer (each further one halves it)", None,
                  _check_config("train.dense_units")),
        ParamInfo("dense_layers", "number of head dense layers", None, _check_range(1, 4, int)),
        ParamInfo("decay_rate", "exponential learning-rate decay per epoch", "train.decay_rate",
                  _check_config("train.decay_rate")),
        ParamInfo("warmup_epochs", "head warm-up epochs (backbone frozen)", "train.warmup_epochs",
                  _check_config("train.warmup_epochs")),
        ParamInfo("finetune_epochs", "fine-tuning epochs (top backbone layers unfrozen)", "train.finetune_epochs",
                  _check_config("train.finetune_epochs")),
        ParamInfo("unfreeze_layers", "top backbone layers unfrozen for fine-tuning", "train.unfreeze_layers",
                  _check_config("train.unfreeze_layers"), _finetuning),
        ParamInfo("finetune_learning_rate", "learning rate of the fine-tuning phase", "train.finetune_learning_rate",
                  _check_config("train.finetune_learning_rate"), _finetuning),
        ParamInfo("early_stopping_patience", "epochs without a lower validation loss before a phase stops (its best "
                  "weights restored); 0: never stop early", "train.early_stopping_patience",
                  _check_config("train.early_stopping_patience")),
        ParamInfo("augment", "augmentation policy of the training batches", "train.augment", _check_augment),
        ParamInfo("augment_mode", "online: each batch augmented afresh (through the whole network); offline: a fixed, "
                  "class-balanced augmented copy of each training fold (the paper's; the caches still apply)",
                  "train.augment_mode", _check_config("train.augment_mode"), _augmenting),
        ParamInfo("augment_strength", "online augmentation strength (scales shift, scale and colour ranges)", None,
                  _check_range(0.0, 3.0, float), _augmenting_online),
        ParamInfo("stain", "stain control inside the model graph: none, gray, reinhard", "train.stain",
                  _check_config("train.stain")),
        ParamInfo("tta", "test-time augmentation of every prediction, fold validation included: none or flips",
                  "train.tta", _check_config("train.tta")),
    ]
}


@dataclass(frozen=True)
class SearchSpace:
    path: str
    stage: str
    backbone: str
    params: dict[str, ParamSpec] = field(default_factory=dict)  # in PARAMS order

    def sample(self, suggest: Suggester, base: TrainConfig, everything: bool = False) -> dict[str, Any]:
        """Draw one configuration. Inactive parameters (fine-tuning settings when there is no fine-tuning,
        strength without augmentation) are not drawn, unless `everything` (a fixed-dimensional engine)."""
        drawn: dict[str, Any] = {}
        view = _defaults(base)
        for name, spec in self.params.items():
            if not PARAMS[name].active(view) and not everything:
                continue
            value = spec.sample(suggest)
            view[name] = value
            if PARAMS[name].active(view):
                drawn[name] = value
        return {name: value for name, value in drawn.items() if PARAMS[name].active(view)}

    def max_epochs(self, base: TrainConfig) -> int:
        """The most epochs a trial can train (per-epoch pruning reports use steps below this)."""
        return self._most("warmup_epochs", base) + self._most("finetune_epochs", base)

    def max_warmup_epochs(self, base: TrainConfig) -> int:
        """The most warm-up epochs a trial can draw: from this step on, every trial is fine-tuning."""
        return self._most("warmup_epochs", base)

    def _most(self, name: str, base: TrainConfig) -> int:
        return int(self.params[name].upper() if name in self.params else _defaults(base)[name])

    def as_dict(self) -> dict:
        return {"stage": self.stage, "backbone": self.backbone,
                "params": {name: spec.as_dict() for name, spec in self.params.items()}}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _defaults(base: TrainConfig) -> dict[str, Any]:
    return {"learning_rate": base.learning_rate, "batch_size": base.batch_size, "dropout": base.dropout,
            "dense_units": base.dense_units[0] if base.dense_units else 128,
            "dense_layers": len(base.dense_units), "decay_rate": base.decay_rate,
            "warmup_epochs": base.warmup_epochs, "finetune_epochs": base.finetune_epochs,
            "unfreeze_layers": base.unfreeze_layers, "finetune_learning_rate": base.finetune_learning_rate,
            "early_stopping_patience": base.early_stopping_patience, "augment": base.augment,
            "augment_mode": base.augment_mode, "augment_strength": 1.0, "stain": base.stain, "tta": base.tta}


def to_overrides(params: Mapping[str, Any], base: TrainConfig) -> tuple[dict[str, Any], float]:
    """Config overrides (dotted keys) and the augmentation strength for a drawn configuration."""
    overrides = {PARAMS[name].key: value for name, value in params.items() if PARAMS[name].key}
    if "dense_units" in params or "dense_layers" in params:
        view = {**_defaults(base), **params}
        overrides["train.dense_units"] = [max(8, int(view["dense_units"]) // 2 ** i)
                                          for i in range(int(view["dense_layers"]))]
    return overrides, float(params.get("augment_strength", 1.0))


def space_file(stage: str) -> Path:
    return STUDIES_DIR / f"{stage}.yaml"


def load_space(path: str | Path, stage: str, backbone: str) -> SearchSpace:
    """The space of `stage` for `backbone`: the file's params with that backbone's entries replacing them. Every
    backbone's section is checked, not only the one used, so a typo surfaces on the first run."""
    from mtl_suite.models.backbones import get_backbone_spec

    path = Path(path)
    source = str(path)
    data = _read(path)
    unknown = sorted(str(k) for k in set(data) - TOP_KEYS)
    if unknown:
        raise UserError(f"{source}: '{unknown[0]}': unknown key. Expected one of: {', '.join(sorted(TOP_KEYS))}")
    if "stage" in data and data["stage"] != stage:
        raise UserError(f"{source}: 'stage': this file is for {data['stage']!r}, not {stage!r}")
    params = _parse_params(data.get("params"), source, "params")
    overrides: dict[str, dict[str, ParamSpec]] = {}
    backbones = data.get("backbones") or {}
    if not isinstance(backbones, Mapping):
        raise UserError(f"{source}: 'backbones': must be a mapping of backbone name to parameters. "
                        f"Received: {backbones!r}")
    for name, section in backbones.items():
        try:
            get_backbone_spec(str(name))
        except UserError as exc:
            raise UserError(f"{source}: 'backbones.{name}': {exc}") from None
        overrides[str(name)] = _parse_params(section, source, f"backbones.{name}")
    merged = {**params, **overrides.get(backbone, {})}
    ordered = {name: merged[name] for name in PARAMS if name in merged}
    if not ordered:
        raise UserError(f"{source}: 'params': no parameters to tune for backbone {backbone}")
    return SearchSpace(source, stage, backbone, ordered)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"search space file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (expected a YAML search space)") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML{yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with 'params:' at the top level. Received: {type(data).__name__}")
    return data


def _parse_params(section: Any, source: str, prefix: str) -> dict[str, ParamSpec]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise UserError(f"{source}: '{prefix}': must be a mapping of parameter name to spec. Received: {section!r}")
    out = {}
    for name, raw in section.items():
        key = f"{prefix}.{name}"
        if name not in PARAMS:
            raise UserError(f"{source}: '{key}': unknown parameter. Expected one of: {', '.join(PARAMS)}")
        spec = _parse_spec(str(name), raw, source, key)
        for value in spec.candidates():
            try:
                PARAMS[name].check(value)
            except UserError as exc:
                reason = str(exc).removeprefix("value: ")
                raise UserError(f"{source}: '{key}': value {value!r} is not allowed: {reason}") from None
        out[str(name)] = spec
    return out


def _parse_spec(name: str, raw: Any, source: str, key: str) -> ParamSpec:
    if not isinstance(raw, Mapping):
        if isinstance(raw, (list, tuple)) or raw is None:
            raise UserError(f"{source}: '{key}': expected a value or a mapping with 'type'. Received: {raw!r}")
        return ParamSpec(name, "fixed", value=raw)
    unknown = sorted(str(k) for k in set(raw) - SPEC_KEYS)
    if unknown:
        raise UserError(f"{source}: '{key}.{unknown[0]}': unknown key. Expected one of: {', '.join(sorted(SPEC_KEYS))}")
    kind = raw.get("type")
    if kind not in TYPES:
        raise UserError(f"{source}: '{key}.type': unknown type {kind!r}. Expected one of: {', '.join(TYPES)}")
    if kind == "categorical":
        return _categorical(name, raw, source, key)
    number = float if kind == "float" else int
    for required in ("low", "high"):
        if required not in raw:
            raise UserError(f"{source}: '{key}.{required}': missing (a {kind} parameter needs low and high)")
    extra = sorted(set(raw) & {"choices"})
    if extra:
        raise UserError(f"{source}: '{key}.choices': only categorical parameters have choices")
    low = coerce(raw["low"], number, f"{key}.low", source)
    high = coerce(raw["high"], number, f"{key}.high", source)
    log = coerce(raw.get("log", False), bool, f"{key}.log", source)
    step = coerce(raw["step"], number, f"{key}.step", source) if raw.get("step") is not None else None
    if low > high:
        raise UserError(f"{source}: '{key}': low ({low}) is greater than high ({high})")
    if log and low <= 0:
        raise UserError(f"{source}: '{key}.low': a log-scaled range needs low > 0. Received: {low}")
    if step is not None and step <= 0:
        raise UserError(f"{source}: '{key}.step': must be positive. Received: {step}")
    if step is not None and log and (kind == "float" or step != 1):
        raise UserError(f"{source}: '{key}': a log-scaled range cannot have a step")
    return ParamSpec(name, kind, low=low, high=high, log=log, step=step)


def _categorical(name: str, raw: Mapping, source: str, key: str) -> ParamSpec:
    extra = sorted(set(raw) & {"low", "high", "log", "step"})
    if extra:
        raise UserError(f"{source}: '{key}.{extra[0]}': a categorical parameter has only 'choices'")
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        raise UserError(f"{source}: '{key}.choices': must be a non-empty list. Received: {choices!r}")
    for value in choices:
        if not isinstance(value, (str, int, float, bool)):
            raise UserError(f"{source}: '{key}.choices': choices must be numbers or strings. Received: {value!r}")
    if len(set(map(repr, choices))) != len(choices):
        raise UserError(f"{source}: '{key}.choices': duplicate choices in {choices!r}")
    return ParamSpec(name, "categorical", choices=tuple(choices))
