"""`tune()`: the shared part of both engines (search space, task data loaded once, the stage's starting weights,
the study's MLflow parent run), then the engine; and `study_choice()`, which turns a finished study's best trial
into config overrides for `mtl-suite stage3 --params-from-study`."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import mlflow
from mlflow.entities import RunStatus

from mtl_suite.config import ExperimentConfig
from mtl_suite.errors import UserError
from mtl_suite.io_utils import atomic_path
from mtl_suite.tracking.runs import git_commit
from mtl_suite.tracking.setup import use_tracking
from mtl_suite.tracking.stage_runs import (
    StageRequest, initial_backbone_weights, load_task_data, resolve_parent_run,
)
from mtl_suite.training.stages import get_stage
from mtl_suite.tuning.objective import TuningContext, base_for_tuning, normalise_metric
from mtl_suite.tuning.space import load_space, space_file
from mtl_suite.tuning.tracker import StudyTracker, mask_password

TUNABLE_STAGES = ("stage2", "stage3", "classical")
ENGINES = ("optuna", "keras-tuner")


@dataclass(frozen=True)
class TuneRequest:
    stage: str
    config: ExperimentConfig
    task: str = "multiclass"
    normal_class: str | None = None
    cells: str | None = None
    parent_run: str | None = None
    trials: int = 20
    timeout: float | None = None
    study_name: str | None = None
    storage: str | None = None
    engine: str = "optuna"
    sampler: str = "tpe"
    pruner: str | Any = "median"  # a name, or an optuna pruner object (tests, notebooks)
    metric: str = "f1_macro"
    folds: int = 3
    seed: int = 42
    space: str | None = None  # a search space file; default studies/<stage>.yaml
    heartbeat_interval: int = 10
    grace_period: int | None = None
    max_retry: int = 3
    quiet: bool = False

    @property
    def name(self) -> str:
        return self.study_name or default_study_name(self.stage, self.config.train.backbone, self.task, self.engine)


@dataclass
class TuneOutcome:
    study_name: str
    storage: str
    study_run_id: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    counts: dict[str, int]
    tracking_uri: str


def default_study_name(stage: str, backbone: str, task: str, engine: str = "optuna") -> str:
    task_part = "binary" if stage == "stage2" else task
    suffix = "" if engine == "optuna" else f"-{engine}"
    return f"{stage}-{backbone}-{task_part}{suffix}"


def tune(request: TuneRequest, say: Callable[[str], None] = print) -> TuneOutcome:
    if request.stage not in TUNABLE_STAGES:
        raise UserError(f"--stage {request.stage!r} cannot be tuned. Expected one of: {', '.join(TUNABLE_STAGES)}")
    if request.engine not in ENGINES:
        raise UserError(f"--engine {request.engine!r}: expected one of: {', '.join(ENGINES)}")
    if request.trials < 1:
        raise UserError(f"--trials must be at least 1. Received: {request.trials}")
    if request.folds < 1:
        raise UserError(f"--folds must be at least 1. Received: {request.folds}")
    task = "binary" if request.stage == "stage2" else request.task
    metric, direction = normalise_metric(request.metric, task)
    backbone = request.config.train.backbone
    space = load_space(request.space or space_file(request.stage), request.stage, backbone)
    base = base_for_tuning(request.config, request.folds)
    base = replace(base, train=replace(base.train, seed=request.seed))

    launcher_run = os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run . -e tune`
    uri, experiment_id = use_tracking(base.tracking.tracking_uri, base.tracking.experiment)
    plan = get_stage(request.stage)
    stage_request = StageRequest(stage=request.stage, config=base, task=task, normal_class=request.normal_class,
                                 cells=request.cells, parent_run=request.parent_run, quiet=request.quiet)
    parent_id = resolve_parent_run(plan, stage_request, uri, experiment_id, say)
    task_data = load_task_data(plan, stage_request, say)
    ctx = TuningContext(plan, base, task_data, Path(), space, metric, direction, say, request.quiet, task)

    if request.engine == "optuna":
        from mtl_suite.tuning.optuna_engine import run_optuna as engine
    else:
        from mtl_suite.tuning.keras_tuner_engine import run_keras_tuner as engine
    return engine(request, ctx, StudyRuns(uri, experiment_id, launcher_run, stage_request, parent_id), say)


class StudyRuns:
    """Opens the study's MLflow parent run (new, resumed, or the one `mlflow run` launched) and keeps it active
    while trials run; an interrupt ends it KILLED, an error FAILED."""

    def __init__(self, uri: str, experiment_id: str, launcher_run: str | None, stage_request: StageRequest,
                 parent_id: str | None):
        self.uri, self.experiment_id, self.launcher_run = uri, experiment_id, launcher_run
        self.stage_request, self.parent_id = stage_request, parent_id

    def open(self, existing_run: str | None, name: str, tags: dict[str, str], ctx: TuningContext,
             workdir: Path) -> StudyTracker:
        if existing_run:
            if self.launcher_run and self.launcher_run != existing_run:
                client = mlflow.MlflowClient()
                client.set_tag(self.launcher_run, "study_run", existing_run)
                client.set_terminated(self.launcher_run, "FINISHED")
            mlflow.start_run(run_id=existing_run)
        elif self.launcher_run:
            mlflow.start_run(run_id=self.launcher_run)
            mlflow.set_tag("mlflow.runName", name)
        else:
            mlflow.start_run(run_name=name, experiment_id=self.experiment_id)
        mlflow.set_tags({**tags, "git_commit": git_commit(), "parent_stage_run": self.parent_id or ""})
        ctx.initial_weights = initial_backbone_weights(ctx.plan, self.stage_request, self.parent_id, workdir)
        run_id = mlflow.active_run().info.run_id
        trial_tags = {k: tags[k] for k in ("study", "stage", "backbone", "task", "engine")}
        return StudyTracker(run_id, trial_tags)

    @staticmethod
    def close(error: BaseException | None) -> None:
        if mlflow.active_run() is None:
            return
        if error is None:
            mlflow.end_run()
        elif isinstance(error, KeyboardInterrupt):
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        else:
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


def study_tags(request: TuneRequest, ctx: TuningContext, storage: str, sampler: str, pruner: str) -> dict[str, str]:
    config = ctx.base
    return {
        "run_kind": "study", "study": request.name, "storage": mask_password(storage), "engine": request.engine,
        "sampler": sampler, "pruner": pruner, "stage": request.stage, "backbone": config.train.backbone,
        "task": ctx.task, "metric": ctx.metric, "direction": ctx.direction, "weights": config.train.weights,
        "folds": str(request.folds), "seed": str(request.seed), "image_size": str(config.data.image_size),
        "data": ctx.task_data.description[:250], "space": ctx.space.path, "space_digest": ctx.space.digest,
    }


def work_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="mtl-tune-")


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
