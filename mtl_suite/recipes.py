"""A recipe: one YAML file that states everything a served model needs (backbone, weights, image size, stain,
training values, the final stage, and for an ensemble its members), run end to end by `mtl-suite train RECIPE`.

A recipe is an experiment file (config.py: `data:`, `train:`, `tracking:`) with a `recipe:` section:

    recipe:
      stage: stage3            # the final stage: stage3 (stages 1 and 2 run first when missing) or classical
      task: multiclass         # or binary
      members:                 # optional: an ensemble of runs of this file, each with these settings changed
        - {}
        - {train.seed: 1}
        - {train.stain: gray}

Precedence for each member: dataclass defaults < the file < the member's settings < the command line.
Kept free of heavy imports: the CLI reads recipes before anything trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtl_suite.catalog import ARM_STAGES, Stage, Task
from mtl_suite.config import RECIPE_SECTION, ExperimentConfig, apply_overrides, load_config, read_yaml
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_text

RECIPE_KEYS = ("stage", "task", "members")


@dataclass(frozen=True)
class Recipe:
    path: Path
    digest: str  # of the file's text: which recipe, exactly, a run was made from
    stage: Stage
    task: Task
    members: tuple[ExperimentConfig, ...]  # one config per model to train; more than one: an ensemble of them

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def config(self) -> ExperimentConfig:
        """The first member's settings: where the recipe's runs are tracked, on which data."""
        return self.members[0]

    def tags(self) -> dict[str, str]:
        """Tags of every run the recipe makes, so the UI and a reader find which recipe made a run."""
        return {"recipe": self.name, "recipe_digest": self.digest}


def load_recipe(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Read and check a recipe; `overrides` (dotted keys, from the command line) apply to every member."""
    path = Path(path)
    section = read_yaml(path).get(RECIPE_SECTION) or {}
    if not isinstance(section, Mapping):
        raise UserError(f"{path}: '{RECIPE_SECTION}' must be a mapping with keys {', '.join(RECIPE_KEYS)}. "
                        f"Received: {section!r}")
    unknown = sorted(str(k) for k in set(section) - set(RECIPE_KEYS))
    if unknown:
        raise UserError(f"{path}: unknown key '{RECIPE_SECTION}.{unknown[0]}'. Expected one of: "
                        f"{', '.join(RECIPE_KEYS)}")
    stage = _final_stage(path, section.get("stage", Stage.STAGE3))
    task = _task(path, section.get("task", Task.MULTICLASS))
    base = load_config(path)
    members = tuple(_member_config(path, base, index, settings, overrides or {})
                    for index, settings in enumerate(_member_settings(path, section.get("members"))))
    return Recipe(path, sha256_text(path.read_text(encoding="utf-8"))[:12], stage, task, members)


def check_single_model_file(path: str | Path, stage: str) -> None:
    """A stage command given a recipe file (`--config`): fine for a one-model recipe of that stage, refused for an
    ensemble or another stage, which only `mtl-suite train` runs as written."""
    section = read_yaml(Path(path)).get(RECIPE_SECTION)
    if not isinstance(section, Mapping):
        return
    if len(section.get("members") or ()) > 1:
        raise UserError(f"{path} is an ensemble recipe: run it with `mtl-suite train {path}`")
    final = str(section.get("stage", Stage.STAGE3))
    if final != stage and stage in map(str, ARM_STAGES):
        raise UserError(f"{path} is a recipe for {final}, not {stage}: run it with `mtl-suite train {path}` or "
                        f"`mtl-suite {final} --config {path}`")


def parse_settings(items: list[str]) -> dict[str, Any]:
    """--set key=value (repeatable) -> {"train.seed": 1}; values read as YAML, so numbers and lists keep their type
    (the config checks each against its field)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: expected key=value, e.g. train.seed=1 or data.image_size=299. Received: {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def _final_stage(path: Path, value: Any) -> Stage:
    if str(value) not in map(str, ARM_STAGES):
        raise UserError(f"{path}: '{RECIPE_SECTION}.stage' must be the final stage, one of "
                        f"{', '.join(ARM_STAGES)}. Received: {value!r}")
    return Stage(str(value))


def _task(path: Path, value: Any) -> Task:
    if str(value) not in map(str, Task):
        raise UserError(f"{path}: '{RECIPE_SECTION}.task' must be one of {', '.join(Task)}. Received: {value!r}")
    return Task(str(value))


def _member_settings(path: Path, members: Any) -> list[Mapping[str, Any]]:
    if members is None:
        return [{}]
    if not isinstance(members, list) or not members:
        raise UserError(f"{path}: '{RECIPE_SECTION}.members' must be a list of mappings of settings, e.g. "
                        f"[{{}}, {{train.seed: 1}}]. Received: {members!r}")
    for index, settings in enumerate(members):
        if settings is not None and not isinstance(settings, Mapping):
            raise UserError(f"{path}: '{RECIPE_SECTION}.members[{index}]' must be a mapping of settings such as "
                            f"{{train.seed: 1}}. Received: {settings!r}")
    return [settings or {} for settings in members]


def _member_config(path: Path, base: ExperimentConfig, index: int, settings: Mapping[str, Any],
                   overrides: Mapping[str, Any]) -> ExperimentConfig:
    member = apply_overrides(base, {str(k): v for k, v in settings.items()},
                             source=f"{path}: {RECIPE_SECTION}.members[{index}]")
    return apply_overrides(member, overrides, source="command line")
