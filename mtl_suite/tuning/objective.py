"""The tuning objective, engine-agnostic: cross-validate one drawn configuration on the stage's task data (loaded
once per process and reused by every trial) and return the mean CV metric.

Progress reaches the engine through a `Reporter`: the validation metric after every epoch of the first fold
(steps 0 .. max_epochs-1), then the running mean over folds after each fold (steps max_epochs + k). Steps are
fixed by the space's epoch budget, so every trial reports the same step for the same point in training and a
median or Hyperband pruner compares like with like. A reporter may raise to stop the trial (Optuna's pruning)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import keras
import numpy as np

from mtl_suite.catalog import StagePlan, Task
from mtl_suite.config import ExperimentConfig, apply_overrides
from mtl_suite.errors import UserError
from mtl_suite.tasks import TaskData
from mtl_suite.training.cv import FoldResult, cross_validate
from mtl_suite.training.features import FeatureStore
from mtl_suite.training.activations import ActivationCache
from mtl_suite.training.fit import activation_cache_for, feature_store_for, predict_proba
from mtl_suite.training.metrics import POSITIVE_CLASS_SCORES, SCORES, classification_metrics
from mtl_suite.training.progress import FoldProgress
from mtl_suite.training.session import free_models
from mtl_suite.training.stages import model_factory
from mtl_suite.tuning.space import SearchSpace, to_overrides
from mtl_suite.tuning.tracker import StudyTracker

METRICS = {**SCORES, **POSITIVE_CLASS_SCORES}  # metric -> direction


def normalise_metric(name: str, task: str) -> tuple[str, str]:
    """'f1_macro', 'cv/f1_macro_mean' or 'val/f1_macro' -> ('f1_macro', 'maximize')."""
    key = name.removeprefix("cv/").removeprefix("val/").removesuffix("_mean")
    if key not in METRICS:
        raise UserError(f"--metric {name!r}: not a CV metric. Expected one of: {', '.join(METRICS)}")
    if key in POSITIVE_CLASS_SCORES and task != Task.BINARY:
        raise UserError(f"--metric {name!r} is the positive class's score of a binary task; this task is {task}. "
                        "Use a macro or weighted average instead")
    return key, METRICS[key]


class Reporter(Protocol):
    def report(self, step: int, value: float) -> None: ...


class NoPruning:
    def report(self, step: int, value: float) -> None:
        pass


@dataclass
class TuningContext:
    plan: StagePlan
    base: ExperimentConfig
    task_data: TaskData
    initial_weights: Path
    space: SearchSpace
    metric: str
    direction: str
    say: Callable[[str], None]
    quiet: bool = False
    task: str = Task.MULTICLASS

    @property
    def epoch_steps(self) -> int:
        return self.space.max_epochs(self.base.train)

    @property
    def warmup_steps(self) -> int:
        return self.space.max_warmup_epochs(self.base.train)

    @property
    def max_steps(self) -> int:
        return self.epoch_steps + self.task_data.split.folds


def trial_config(ctx: TuningContext, params: dict[str, Any]) -> tuple[ExperimentConfig, float, dict[str, Any]]:
    overrides, strength = to_overrides(params, ctx.base.train)
    config = apply_overrides(ctx.base, overrides, source="trial parameters")
    return config, strength, overrides


def evaluate(ctx: TuningContext, params: dict[str, Any], reporter: Reporter, tracker: StudyTracker,
             run_id: str, label: str) -> float:
    """Mean CV `ctx.metric` of the configuration; fold metrics and first-fold epochs go to the trial run."""
    config, strength, _ = trial_config(ctx, params)
    data = ctx.task_data
    # the task's own input size: stage 2 trains on cell crops at data.cell_size
    factory = model_factory(config.train.backbone, data.image_size, ctx.initial_weights, ctx.plan.head,
                            len(data.class_names), config.train)
    augment = None
    if config.train.augment != "none" and config.train.augment_mode == "online":
        from mtl_suite.imaging.augment import get_batch_augment

        augment = get_batch_augment(config.train.augment, strength)
    observer = FoldProgress(TrialObserver(ctx, reporter, tracker, run_id, config.train.batch_size),
                            f"{label.rstrip(':')} folds", data.split.folds,
                            config.train.warmup_epochs + config.train.finetune_epochs,
                            last=f"fold-{data.split.folds - 1}")  # the command's progress display
    progress = None if ctx.quiet else (lambda message: ctx.say(f"{label} {message}"))
    try:
        result = cross_validate(data.data, data.split, data.class_names, factory, config.train, observer, augment,
                                verbose=0, progress=progress)
    except BaseException:
        # a finished fold frees its models itself (cross_validate); a pruned or failed one leaves them behind.
        # Only then: each clear_session walks the whole heap (gc.collect, ~0.7 s here)
        free_models()
        raise
    summary = {f"cv/{k}": v for k, v in result.summary.items()}
    tracker.log_metrics(run_id, summary)
    return float(result.summary[f"{ctx.metric}_mean"])


class TrialObserver:
    """cross_validate's hook: per-epoch validation metric in the first fold, fold metrics and the running mean
    after each fold, each reported to the engine and logged to the trial run."""

    def __init__(self, ctx: TuningContext, reporter: Reporter, tracker: StudyTracker, run_id: str, batch_size: int):
        self.ctx, self.reporter, self.tracker, self.run_id = ctx, reporter, tracker, run_id
        self.batch_size = batch_size
        self.values: list[float] = []
        self.first_fold: str | None = None

    def fold_started(self, fold: str, n_train: int, n_val: int, resumed_history=None):
        if self.first_fold is not None:
            return None
        self.first_fold = fold
        _, _, val_idx = next(iter(self.ctx.task_data.split.fold_indices()))
        data = self.ctx.task_data.data
        images, labels = data.images[val_idx], data.labels[val_idx]

        store = feature_store_for(self.ctx.base.train)
        activations = activation_cache_for(self.ctx.base.train)

        def factory(phase: str, first_epoch: int) -> list[keras.callbacks.Callback]:
            return [EpochMetric(images, labels, self.ctx.task_data.class_names, self.ctx.metric, first_epoch,
                                self.batch_size, self._epoch_done, store, activations)]

        return factory

    def _epoch_done(self, epoch: int, value: float) -> None:
        self.tracker.log_metrics(self.run_id, {f"fold0/val/{self.ctx.metric}": value}, step=epoch)
        self.reporter.report(min(epoch, self.ctx.epoch_steps - 1), value)

    def fold_finished(self, result: FoldResult) -> None:
        metrics = result.metrics
        k = len(self.values)
        self.values.append(metrics.get(self.ctx.metric, float("nan")))
        self.tracker.log_metrics(self.run_id, {f"fold/{name}": v for name, v in metrics.items()}, step=k)
        running = float(np.mean(self.values))
        self.tracker.log_metrics(self.run_id, {f"running/{self.ctx.metric}": running}, step=k)
        self.reporter.report(self.ctx.epoch_steps + k, running)

    def fold_failed(self, fold: str, error: BaseException) -> None:
        pass  # the trial's outcome (pruned, failed, interrupted) is recorded by the engine


class EpochMetric(keras.callbacks.Callback):
    """The objective's metric on the first fold's validation images after every epoch (Keras itself only knows
    accuracy), so per-epoch pruning judges what the study optimises."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: list[str], metric: str,
                 first_epoch: int, batch_size: int, done: Callable[[int, float], None],
                 feature_store: FeatureStore | None = None, activation_cache: ActivationCache | None = None):
        super().__init__()
        self.images, self.labels, self.class_names = images, labels, class_names
        self.metric, self.first_epoch, self.batch_size, self.done = metric, first_epoch, batch_size, done
        self.feature_store = feature_store  # while the backbone is frozen: only the head runs (predict_proba)
        self.activation_cache = activation_cache  # while fine-tuning: only the layers above the cut run

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        proba = predict_proba(self.model, self.images, self.batch_size, self.feature_store, self.activation_cache)
        value = classification_metrics(self.labels, proba, self.class_names).get(self.metric)
        if value is not None:
            self.done(self.first_epoch + epoch, float(value))


def base_for_tuning(config: ExperimentConfig, folds: int) -> ExperimentConfig:
    return replace(config, data=replace(config.data, folds=folds))
