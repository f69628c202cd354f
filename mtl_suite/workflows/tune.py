"""`mtl-suite tune` end to end: validate, find the stage's starting weights and task data (once per process, shared
by every trial), open the study's MLflow parent run and hand over to the engine; and `study_choice()`, which turns
a finished study's best trial into config overrides for `mtl-suite stage3 --params-from-study`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from mtl_suite.catalog import TUNABLE_STAGES, get_stage
from mtl_suite.errors import UserError
from mtl_suite.io_utils import atomic_path
from mtl_suite.models.backbones import with_backbone_sizes
from mtl_suite.tracking.setup import take_launcher_run, use_tracking
from mtl_suite.tuning.objective import TuningContext, base_for_tuning, normalise_metric
from mtl_suite.tuning.space import load_space, space_file
from mtl_suite.tuning.study import StudyRuns, TuneOutcome, TuneRequest
from mtl_suite.tuning.tracker import mask_password
from mtl_suite.workflows.stage import StageRequest, prepare_initial_weights, resolve_parent_run, stage_task_data

Engine = Callable[[TuneRequest, TuningContext, StudyRuns, Callable[[str], None]], TuneOutcome]


def _optuna() -> Engine:
    from mtl_suite.tuning.optuna_engine import run_optuna

    return run_optuna


def _keras_tuner() -> Engine:
    from mtl_suite.tuning.keras_tuner_engine import run_keras_tuner

    return run_keras_tuner


def _optuna_checks(request: TuneRequest) -> None:
    from mtl_suite.tuning.optuna_engine import check_request

    check_request(request)


# engine name -> the checks of its own options (storage, sampler, pruner), run before any work
ENGINE_CHECKS: dict[str, Callable[[TuneRequest], None]] = {"optuna": _optuna_checks}

# engine name -> loader (each engine imports its library only when chosen)
ENGINES: dict[str, Callable[[], Engine]] = {"optuna": _optuna, "keras-tuner": _keras_tuner}


def tune(request: TuneRequest, say: Callable[[str], None] = print) -> TuneOutcome:
    if request.stage not in TUNABLE_STAGES:
        raise UserError(f"--stage {request.stage!r} cannot be tuned. Expected one of: {', '.join(TUNABLE_STAGES)}")
    if request.engine not in ENGINES:
        raise UserError(f"--engine {request.engine!r}: expected one of: {', '.join(ENGINES)}")
    plan = get_stage(request.stage)
    if request.trials < 1:
        raise UserError(f"--trials must be at least 1. Received: {request.trials}")
    if request.folds < 1:
        raise UserError(f"--folds must be at least 1. Received: {request.folds}")
    task = plan.task_for(request.task)
    metric, direction = normalise_metric(request.metric, task)
    backbone = request.config.train.backbone
    space = load_space(request.space or space_file(request.stage), request.stage, backbone)
    base = base_for_tuning(with_backbone_sizes(request.config), request.folds)
    base = replace(base, train=replace(base.train, seed=request.seed))
    ENGINE_CHECKS.get(request.engine, lambda r: None)(request)  # sampler, pruner, storage: before any run exists

    uri, experiment_id = use_tracking(base.tracking.tracking_uri, base.tracking.experiment)
    launcher_run = take_launcher_run(experiment_id)  # `mlflow run . -e tune`: the study's run
    stage_request = StageRequest(stage=request.stage, config=base, task=task, normal_class=request.normal_class,
                                 cells=request.cells, parent_run=request.parent_run, quiet=request.quiet)
    parent_id = resolve_parent_run(plan, stage_request, uri, experiment_id, say)
    task_data = stage_task_data(plan, stage_request, say)
    ctx = TuningContext(plan, base, task_data, Path(), space, metric, direction, say, request.quiet, task)
    with tempfile.TemporaryDirectory(prefix="mtl-tune-weights-") as weights_dir:
        # before the study's run opens: weights that do not fit the backbone leave no FAILED run
        initial, initial_tags = prepare_initial_weights(plan, stage_request, parent_id, Path(weights_dir))
        runs = StudyRuns(uri, experiment_id, launcher_run, parent_id,
                         lambda workdir: _tag_active_run(initial, initial_tags))
        return ENGINES[request.engine]()(request, ctx, runs, say)


def _tag_active_run(initial: Path, tags: dict[str, str]) -> Path:
    """The study run (open by now) records where the weights came from; the trials start from `initial`."""
    import mlflow

    mlflow.set_tags(tags)
    return initial


# --- using a study's result -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyChoice:
    overrides: dict[str, Any]
    task: str
    stage: str
    tags: tuple[tuple[str, str], ...]


def study_choice(name: str, storage: str | None, stage: str) -> StudyChoice:
    """The best finished trial of an Optuna study as config overrides: its tuned parameters plus the backbone,
    image size and weights it was tuned with (explicit command-line options still win over these)."""
    from mtl_suite.tuning.optuna_engine import best_trial_of

    trial, attrs, storage_url = best_trial_of(name, storage)
    if attrs.get("stage") != stage:
        raise UserError(f"--params-from-study {name}: the study tuned {attrs.get('stage')}, not {stage}; "
                        f"use `mtl-suite {attrs.get('stage')} --params-from-study {name}` or a {stage} study")
    overrides = dict(trial.user_attrs.get("config_overrides") or {})
    strength = float(trial.user_attrs.get("augment_strength", 1.0))
    if strength != 1.0 and overrides.get("train.augment", "none") != "none":
        overrides["train.augment"] = str(materialise_policy(overrides["train.augment"], strength))
    overrides.update({"train.backbone": attrs["backbone"], "data.image_size": int(attrs["image_size"]),
                      "train.weights": attrs.get("weights", "imagenet")})
    tags = (("study", name), ("trial", str(trial.number)), ("study_storage", mask_password(storage_url)),
            ("study_value", f"{trial.value:.6g}"), ("study_metric", str(attrs.get("metric"))))
    return StudyChoice(overrides, attrs.get("task", "multiclass"), attrs["stage"], tags)


def materialise_policy(policy: str, strength: float) -> Path:
    """A policy at a strength other than 1 as an albumentations YAML file (which `train.augment` accepts), cached
    by name and strength so a run can be repeated."""
    import albumentations as A

    from mtl_suite.imaging.augment import build_transform
    from mtl_suite.cache import default_cache_root

    path = default_cache_root() / "policies" / f"{policy.replace('+', '_')}-{strength:.4f}.yaml"
    if not path.is_file():
        with atomic_path(path) as tmp:  # two trials (or workers) may write it at once: each renames a whole file
            A.save(build_transform(policy, strength), str(tmp), data_format="yaml")
    return path
