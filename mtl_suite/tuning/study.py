"""A tuning study's request and outcome, and its MLflow parent run: what both engines (Optuna, keras-tuner) share.
What `mtl-suite tune` does end to end is workflows/tune.py."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
from mlflow.entities import RunStatus

from mtl_suite.catalog import RunKind, Task, get_stage
from mtl_suite.config import ExperimentConfig
from mtl_suite.errors import UserError
from mtl_suite.tracking.runs import config_params, git_commit
from mtl_suite.tuning.objective import TuningContext, trial_config
from mtl_suite.tuning.tracker import StudyTracker, mask_password


@dataclass(frozen=True)
class TuneRequest:
    stage: str
    config: ExperimentConfig
    task: Task | str = Task.MULTICLASS
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
    task_part = get_stage(stage).task_for(task)
    suffix = "" if engine == "optuna" else f"-{engine}"
    return f"{stage}-{backbone}-{task_part}{suffix}"


class StudyRuns:
    """Opens the study's MLflow parent run (new, resumed, or the one `mlflow run` launched) and keeps it active
    while trials run; an interrupt ends it KILLED, an error FAILED."""

    def __init__(self, uri: str, experiment_id: str, launcher_run: str | None, parent_id: str | None,
                 initial_weights: Callable[[Path], Path]):
        self.uri, self.experiment_id, self.launcher_run = uri, experiment_id, launcher_run
        self.parent_id = parent_id
        self.initial_weights = initial_weights  # work folder -> the stage's W_{k-1}, tagged on the active run

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
            mlflow.set_tag("mlflow.runName", study_run_name(name))
        else:
            mlflow.start_run(run_name=study_run_name(name), experiment_id=self.experiment_id)
        mlflow.set_tags({**tags, "git_commit": git_commit(), "parent_stage_run": self.parent_id or ""})
        ctx.initial_weights = self.initial_weights(workdir)
        run_id = mlflow.active_run().info.run_id
        trial_tags = {k: tags[k] for k in ("study", "stage", "backbone", "task", "engine")}
        return StudyTracker(run_id, trial_tags, lambda params: trial_run_params(ctx, params))

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


def study_run_name(study: str) -> str:
    """`tune-<study>`: with the default study name, tune-<stage>-<backbone>-<task>, told apart from stage runs."""
    return f"tune-{study}"


def trial_run_params(ctx: TuningContext, params: dict[str, Any]) -> dict[str, str]:
    """A trial run's params: its resolved config under the keys stage runs use (`train.learning_rate`, ...), so
    the MLflow UI's compare view lines trials and stage runs up; the drawn values as the search space names them
    under `search.<name>` (augment_strength and dense_layers have no config key of their own)."""
    drawn = {f"search.{k}": str(v)[:500] for k, v in params.items()}
    try:
        config, _, _ = trial_config(ctx, dict(params))
    except (UserError, KeyError, TypeError, ValueError):  # a trial that failed while drawing: only what it drew
        return drawn
    return {**config_params(config), **drawn}


def study_tags(request: TuneRequest, ctx: TuningContext, storage: str, sampler: str, pruner: str) -> dict[str, str]:
    config = ctx.base
    return {
        "run_kind": RunKind.STUDY, "study": request.name, "storage": mask_password(storage), "engine": request.engine,
        "sampler": sampler, "pruner": pruner, "stage": request.stage, "backbone": config.train.backbone,
        "task": ctx.task, "metric": ctx.metric, "direction": ctx.direction, "weights": config.train.weights,
        "folds": str(request.folds), "seed": str(request.seed), "image_size": str(config.data.image_size),
        "data": ctx.task_data.description[:250], "space": ctx.space.path, "space_digest": ctx.space.digest,
    }


def work_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="mtl-tune-")
