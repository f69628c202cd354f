"""A transfer stage as MLflow runs: one run per stage (tags, params, split, aggregates, artifacts, model), one nested
run per CV fold and one for the final refit. The training itself is plain Keras (training/); this module only
wires it to MLflow."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.entities import RunStatus
from mlflow.models import infer_signature

from mtl_suite.cache import default_cache_root
from mtl_suite.config import ExperimentConfig, to_flat_dict
from mtl_suite.data.splits import save_split
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_text
from mtl_suite.tracking import resume
from mtl_suite.tracking.callbacks import MlflowEpochLogger, metric_key
from mtl_suite.tracking.runs import git_commit, log_split
from mtl_suite.tracking.setup import use_tracking
from mtl_suite.training import metrics as m
from mtl_suite.training import plots
from mtl_suite.training.cv import CVResult, FoldResult, TestResult, cross_validate, refit_and_test
from mtl_suite.training.stages import (
    STAGES, StagePlan, TaskData, cell_task, get_stage, imagenet_backbone_file, model_factory,
    smear_task,
)

BACKBONE_ARTIFACT = "backbone/backbone.npz"


@dataclass(frozen=True)
class StageRequest:
    stage: str
    config: ExperimentConfig
    task: str = "multiclass"
    normal_class: str | None = None
    cells: str | None = None  # stage 2: a single-cell dataset instead of crops of the smears
    source: str | None = None  # stage 1: optional source dataset to fine-tune on
    parent_run: str | None = None
    quiet: bool = False
    extra_tags: tuple[tuple[str, str], ...] = ()
    resume: str = "auto"  # auto: adopt an interrupted run with the same settings; never; or a run id


@dataclass(frozen=True)
class StageOutcome:
    run_id: str
    stage: str
    metrics: dict[str, float]
    tracking_uri: str
    experiment_id: str


def run_stage(request: StageRequest, say: Callable[[str], None] = print) -> StageOutcome:
    """Run one stage (running missing earlier stages first) and return where its results went."""
    launcher_run = os.environ.pop("MLFLOW_RUN_ID", None)  # set by `mlflow run`: becomes this stage's run
    tracking = request.config.tracking
    uri, experiment_id = use_tracking(tracking.tracking_uri, tracking.experiment)
    if launcher_run:
        experiment_id = mlflow.get_run(launcher_run).info.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
    return _run(request, uri, experiment_id, launcher_run, say)


def _run(request: StageRequest, uri: str, experiment_id: str, run_id: str | None,
         say: Callable[[str], None]) -> StageOutcome:
    plan = get_stage(request.stage)
    backbone = request.config.train.backbone
    parent_id = resolve_parent_run(plan, request, uri, experiment_id, say)
    with tempfile.TemporaryDirectory(prefix=f"mtl-{plan.name}-") as tmp:
        workdir = Path(tmp)
        task_data = load_task_data(plan, request, say)
        key = _resume_key(plan, request, parent_id, task_data)
        interrupted = resume.find_interrupted_run(experiment_id, key, request.resume)
        with mlflow.start_run(run_id=run_id, run_name=_run_name(plan, request), experiment_id=experiment_id) as run:
            say(f"{plan.name} ({plan.description}), backbone {backbone}: MLflow run {run.info.run_id} in {uri}")
            try:
                # Tagged before adopting: if this attempt dies too, the next one finds it (and what it adopted).
                origin = resume.origin_of(interrupted) if interrupted else run.info.run_id
                mlflow.set_tags({resume.RESUME_KEY: key, resume.ORIGIN: origin, **resume.owner_tags()})
                adopted = resume.adopt(interrupted, run.info.run_id, say) if interrupted else {}
                checkpoints = resume.checkpoint_folder(origin)
                _log_setup(plan, request, task_data, parent_id, workdir)
                initial = initial_backbone_weights(plan, request, parent_id, workdir)
                metrics = _train_and_log(plan, request, task_data, initial, workdir, say,
                                         Resumption(adopted, checkpoints))
            except KeyboardInterrupt:
                mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))  # the context manager would say FAILED
                raise
            outcome = StageOutcome(run.info.run_id, plan.name, metrics, uri, experiment_id)
        shutil.rmtree(checkpoints, ignore_errors=True)  # every fold is in the tracking store now
    say(f"{plan.name} finished: run {outcome.run_id} ({_summary(metrics)}); "
        f"view with: mlflow ui --backend-store-uri {uri}")
    return outcome


# --- lineage ----------------------------------------------------------------------------------------------------

def resolve_parent_run(plan: StagePlan, request: StageRequest, uri: str, experiment_id: str,
                       say: Callable[[str], None]) -> str | None:
    """The run whose backbone this stage starts from: the explicit one (checked), else the newest finished run of
    the previous stage with the same backbone, else a new run of the previous stage made now."""
    if plan.previous is None:
        return None
    backbone = request.config.train.backbone
    if request.parent_run:
        return _check_parent(request.parent_run, plan.previous, backbone)
    found = find_latest_run(experiment_id, plan.previous, backbone)
    if found:
        say(f"{plan.name}: starting from {plan.previous} run {found}")
        return found
    say(f"{plan.name}: no finished {plan.previous} run for backbone {backbone} in this experiment; "
        f"running {plan.previous} first")
    earlier = replace(request, stage=plan.previous, parent_run=None, resume="auto",
                      task="binary" if plan.previous == "stage2" else request.task)
    return _run(earlier, uri, experiment_id, None, say).run_id


def find_latest_run(experiment_id: str, stage: str, backbone: str) -> str | None:
    """The newest finished stage run of this backbone that a user launched: the runs that `compare` makes are left
    out (they belong to their comparison, and it may have trained them on other data)."""
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=f"tags.stage = '{stage}' AND tags.backbone = '{backbone}' AND attributes.status = 'FINISHED' "
                      f"AND tags.run_kind = 'stage'",
        order_by=["attributes.start_time DESC"], max_results=200, output_format="list",
    )
    # MLflow's filter language has no "tag is absent", so the comparison runs are dropped here.
    own = [run for run in runs if "comparison_run" not in run.data.tags]
    return own[0].info.run_id if own else None


def _check_parent(run_id: str, stage: str, backbone: str) -> str:
    try:
        run = mlflow.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"--parent-run {run_id}: no such run in the tracking store") from None
    tags = run.data.tags
    if tags.get("stage") != stage:
        raise UserError(f"--parent-run {run_id} is a {tags.get('stage', 'non-stage')} run; expected a {stage} run")
    if tags.get("backbone") != backbone:
        raise UserError(f"--parent-run {run_id} used backbone {tags.get('backbone')!r}; this run uses "
                        f"{backbone!r}. Received: --backbone {backbone}")
    if run.info.status != RunStatus.to_string(RunStatus.FINISHED):
        raise UserError(f"--parent-run {run_id} did not finish (status {run.info.status}); pick a finished run")
    return run_id


# --- data and weights -------------------------------------------------------------------------------------------

def load_task_data(plan: StagePlan, request: StageRequest, say: Callable[[str], None]) -> TaskData | None:
    """Images, labels and split of the stage's task (None for stage 1 without a source dataset)."""
    data_cfg = request.config.data
    if plan.data == "smears":
        task_data = smear_task(data_cfg, request.task, request.normal_class)
    elif plan.data == "cells":
        task_data = cell_task(data_cfg, request.cells, request.normal_class, default_cache_root())
    elif request.source:  # stage 1 fine-tuned on a source dataset, one train/validation split
        source_cfg = replace(data_cfg, path=request.source, folds=1, test_fraction=0.0, masks=None)
        task_data = smear_task(source_cfg, "multiclass", None)
    else:
        return None
    say(f"{plan.name}: {len(task_data.split.entries)} images ({task_data.description}), classes "
        f"{', '.join(task_data.class_names)}; {len(task_data.split.test_indices)} held out for the final test, "
        f"{task_data.split.folds} fold(s) over the rest")
    return task_data


def initial_backbone_weights(plan: StagePlan, request: StageRequest, parent_id: str | None, workdir: Path) -> Path:
    """W_{k-1} as a local archive: the parent run's backbone, or ImageNet (or file/none) weights for stage 1 and
    the classical baseline. Records the weights' provenance as tags of the active run."""
    train, size = request.config.train, request.config.data.image_size
    if parent_id is None:
        path, provenance = imagenet_backbone_file(train.backbone, size, train.weights, workdir / "initial.npz",
                                                  {"stage": "imagenet"}, seed=train.seed)
        mlflow.set_tags({k: v for k, v in provenance.items()})
        return path
    local = Path(mlflow.artifacts.download_artifacts(run_id=parent_id, artifact_path=BACKBONE_ARTIFACT,
                                                     dst_path=str(workdir / "parent")))
    from mtl_suite.models.transfer import read_backbone_metadata

    meta = read_backbone_metadata(local)
    if meta.get("backbone") != train.backbone:
        raise UserError(f"parent run {parent_id} holds a {meta.get('backbone')} backbone, not {train.backbone}")
    mlflow.set_tags({"weights": meta.get("weights", ""), "weights_sha256": meta.get("weights_sha256", ""),
                     "weights_source": f"run {parent_id} ({meta.get('stage')})"})
    for key in ("stage1_run", "stage2_run"):
        if meta.get(key):
            mlflow.set_tag(key, meta[key])
    return local


# --- the tracked run --------------------------------------------------------------------------------------------

def _task_name(plan: StagePlan, request: StageRequest) -> str:
    if plan.data == "cells":
        return "binary"
    if plan.data == "source":
        return "source" if request.source else "imagenet"
    return request.task


def _run_name(plan: StagePlan, request: StageRequest) -> str:
    return f"{plan.name}-{request.config.train.backbone}-{_task_name(plan, request)}"


def _log_setup(plan: StagePlan, request: StageRequest, task_data: TaskData | None, parent_id: str | None,
               workdir: Path) -> None:
    config = request.config
    mlflow.set_tags({
        "run_kind": "stage", "stage": plan.name, "backbone": config.train.backbone,
        "task": _task_name(plan, request),
        "seed": str(config.train.seed), "git_commit": git_commit(), "parent_stage_run": parent_id or "",
        "image_size": str(task_data.image_size if task_data else config.data.image_size),
        **dict(request.extra_tags),
    })
    params = {k: (",".join(map(str, v)) if isinstance(v, tuple) else v) for k, v in to_flat_dict(config).items()}
    mlflow.log_params({k: str(v)[:500] for k, v in params.items() if k != "tracking.tracking_uri"})
    mlflow.log_text(yaml.safe_dump(_yaml_ready(dataclasses.asdict(config)), sort_keys=False), "config.yaml")
    if task_data is None:
        return
    split_path, digest = save_split(task_data.split, workdir / "split.json")
    log_split(split_path, digest, task_data.split.to_json())
    mlflow.set_tags({"data": task_data.description[:250], "classes": ",".join(task_data.class_names)})
    if task_data.manifest.dropped_duplicates:
        mlflow.log_text("\n".join(task_data.manifest.dropped_duplicates) + "\n", "data/dropped_duplicates.txt")
    if task_data.manifest.skipped:
        mlflow.log_text("".join(f"{p}\t{r}\n" for p, r in task_data.manifest.skipped), "data/skipped_images.tsv")


@dataclass(frozen=True)
class Resumption:
    """What an interrupted attempt left: finished folds (from the tracking store) and epoch checkpoints."""

    folds: dict[str, FoldResult]
    checkpoints: Path


def _resume_key(plan: StagePlan, request: StageRequest, parent_id: str | None, task_data: TaskData | None) -> str:
    """Everything that decides this run's results: only a run with the same key may be resumed."""
    settings = {k: v for k, v in to_flat_dict(request.config).items() if not k.startswith("tracking.")}
    return resume.resume_key({
        "stage": plan.name, "task": _task_name(plan, request), "normal_class": request.normal_class,
        "cells": request.cells, "source": request.source, "parent": parent_id, "settings": settings,
        "split": sha256_text(json.dumps(task_data.split.to_json(), sort_keys=True)) if task_data else None,
        "tags": sorted(request.extra_tags)})


def _train_and_log(plan: StagePlan, request: StageRequest, task_data: TaskData | None, initial: Path,
                   workdir: Path, say: Callable[[str], None], resumption: Resumption) -> dict[str, float]:
    config = request.config
    lineage = _lineage(plan, initial)
    if task_data is None:  # stage 1 without a source dataset: W1 is the ImageNet backbone itself
        from mtl_suite.models.transfer import rewrite_metadata

        rewrite_metadata(initial, workdir / "backbone.npz", lineage)
        mlflow.log_artifact(str(workdir / "backbone.npz"), artifact_path="backbone")
        return {}
    factory = model_factory(config.train.backbone, task_data.image_size, initial, plan.head,
                            len(task_data.class_names), config.train)
    augment = _augment(config.train.augment)
    observer = MlflowFoldObserver(mlflow.active_run().info.run_id, plan.name, config.train.backbone,
                                  quiet=request.quiet)
    verbose = 0 if request.quiet else 2
    metrics: dict[str, float] = {}
    if task_data.split.folds >= 1 and len(task_data.split.development_indices):
        cv = cross_validate(task_data.data, task_data.split, task_data.class_names, factory, config.train,
                            observer, augment, verbose, progress=None if request.quiet else say,
                            completed=resumption.folds, checkpoints=resumption.checkpoints)
        metrics.update(_log_cv(cv, task_data, workdir))
    final = refit_and_test(task_data.data, task_data.split, task_data.class_names, factory, config.train,
                           observer, augment, verbose, checkpoints=resumption.checkpoints)
    metrics.update(_log_test(final, task_data, workdir))
    _log_backbone_and_model(final, task_data, config, workdir, lineage)
    return metrics


def _augment(policy: str):
    if policy == "none":
        return None
    from mtl_suite.imaging.augment import get_batch_augment

    return get_batch_augment(policy)


def _lineage(plan: StagePlan, initial: Path) -> dict:
    from mtl_suite.models.transfer import read_backbone_metadata

    meta = read_backbone_metadata(initial)
    run_id = mlflow.active_run().info.run_id
    lineage = {k: meta[k] for k in ("weights", "weights_source", "weights_sha256", "stage1_run", "stage2_run")
               if k in meta}
    if plan.name in ("stage1", "stage2"):
        lineage[f"{plan.name}_run"] = run_id
    return {**lineage, "stage": plan.name, "backbone": meta.get("backbone"), "run_id": run_id}


def _log_cv(cv: CVResult, task_data: TaskData, workdir: Path) -> dict[str, float]:
    names = task_data.class_names
    cv_metrics = {f"cv/{k}": v for k, v in cv.summary.items()}
    mlflow.log_metrics(cv_metrics)
    y_true = task_data.data.labels[cv.oof_index]
    folder = workdir / "cv"
    folder.mkdir()
    pd.DataFrame(cv.fold_metrics, index=[f"fold-{i}" for i in range(len(cv.fold_metrics))]).to_csv(
        folder / "fold_metrics.csv")
    _predictions_frame(task_data, cv.oof_index, cv.oof_proba, fold=cv.oof_fold).to_csv(
        folder / "oof_predictions.csv", index=False)
    pooled = m.classification_metrics(y_true, cv.oof_proba, names)
    _figures(y_true, cv.oof_proba, names, pooled, folder, "cross-validation (out-of-fold)")
    plots.curves_png(cv.histories, folder / "curves.png", "training and validation per epoch (mean, range over folds)")
    (folder / "classification_report.txt").write_text(m.classification_report(y_true, cv.oof_proba, names))
    mlflow.log_artifacts(str(folder), artifact_path="cv")
    return cv_metrics


def _log_test(final: TestResult, task_data: TaskData, workdir: Path) -> dict[str, float]:
    if not len(final.index):
        return {}
    names = task_data.class_names
    test_metrics = {f"test/{k}": v for k, v in final.metrics.items()}
    mlflow.log_metrics(test_metrics)
    y_true = task_data.data.labels[final.index]
    folder = workdir / "test"
    folder.mkdir()
    _predictions_frame(task_data, final.index, final.proba).to_csv(folder / "predictions.csv", index=False)
    _figures(y_true, final.proba, names, final.metrics, folder, "outer test")
    (folder / "classification_report.txt").write_text(m.classification_report(y_true, final.proba, names))
    mlflow.log_artifacts(str(folder), artifact_path="test")
    return test_metrics


def _figures(y_true, proba, names, scores, folder: Path, title: str) -> None:
    matrix = m.confusion(y_true, proba, len(names))
    pd.DataFrame(matrix, index=names, columns=names).to_csv(folder / "confusion_matrix.csv")
    plots.confusion_matrix_png(matrix, names, folder / "confusion_matrix.png", f"Confusion matrix, {title}")
    plots.roc_png(m.roc_curves(y_true, proba, names), scores, folder / "roc.png", f"ROC, {title}")


def _predictions_frame(task_data: TaskData, index: np.ndarray, proba: np.ndarray, fold=None) -> pd.DataFrame:
    entries = [task_data.split.entries[i] for i in index]
    frame = pd.DataFrame({"path": [e.path for e in entries], "sha256": [e.sha256 for e in entries],
                          "label": [task_data.class_names[k] for k in task_data.data.labels[index]]})
    if fold is not None:
        frame["fold"] = fold
    for k, name in enumerate(task_data.class_names):
        frame[f"p_{name}"] = proba[:, k]
    frame["predicted"] = [task_data.class_names[k] for k in proba.argmax(axis=1)]
    return frame


def _log_backbone_and_model(final: TestResult, task_data: TaskData, config: ExperimentConfig, workdir: Path,
                            lineage: dict) -> None:
    from mtl_suite.models.transfer import save_backbone

    save_backbone(final.backbone, workdir / "backbone.npz", lineage)
    mlflow.log_artifact(str(workdir / "backbone.npz"), artifact_path="backbone")
    example = task_data.data.images[:2].astype("float32")
    signature = infer_signature(example, final.model.predict(example, verbose=0))
    # input_example is left out on purpose: mlflow 3.17.2's keras flavour fails on it (FileNotFoundError).
    # Requirements are given, not inferred: inference reloads the model in a subprocess (most of a minute).
    mlflow.keras.log_model(final.model, name="model", signature=signature, pip_requirements=model_requirements())
    mlflow.log_dict({"class_names": task_data.class_names, "image_size": task_data.image_size,
                     "backbone": config.train.backbone,
                     # The model sees whole images (masks only cut stage 2's crops), so serving needs no masks.
                     "input_masking": False, **lineage}, "model_info.json")


def model_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("tensorflow", "keras", "numpy", "mlflow")]


def _summary(metrics: dict[str, float]) -> str:
    keys = ["cv/accuracy_mean", "cv/f1_macro_mean", "test/accuracy", "test/f1_macro"]
    shown = [f"{k} {metrics[k]:.3f}" for k in keys if k in metrics]
    return ", ".join(shown) or "ImageNet backbone saved"


def _yaml_ready(value):
    if isinstance(value, dict):
        return {k: _yaml_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_yaml_ready(v) for v in value]
    return value


class MlflowFoldObserver:
    """Opens a nested run per fold (and one for the final refit), logs its epochs and final metrics, and marks it
    FAILED or KILLED when training stops with an error or an interrupt."""

    def __init__(self, parent_run_id: str, stage: str, backbone: str, quiet: bool = False):
        self.client = mlflow.MlflowClient()
        self.parent = self.client.get_run(parent_run_id)
        self.stage, self.backbone = stage, backbone
        self.runs: dict[str, str] = {}

    def fold_started(self, fold: str, n_train: int, n_val: int, resumed_history=None):
        tags = {"mlflow.parentRunId": self.parent.info.run_id, "run_kind": "fold", "stage": self.stage,
                "backbone": self.backbone, "fold": fold, "task": self.parent.data.tags.get("task", "")}
        if resumed_history:
            tags["resumed_epochs"] = str(len(resumed_history.get("loss", [])))
        run = self.client.create_run(self.parent.info.experiment_id, tags=tags,
                                     run_name=f"{self.stage}-{self.backbone}-{fold}")
        self.runs[fold] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[mlflow.entities.Param("n_train", str(n_train)),
                                                       mlflow.entities.Param("n_validation", str(n_val))])
        if resumed_history:  # the epochs an interrupted attempt finished: one unbroken curve per fold
            self._log_history(run.info.run_id, resumed_history)
        return lambda phase, first_epoch: [MlflowEpochLogger(run.info.run_id, step_offset=first_epoch)]

    def _log_history(self, run_id: str, history: dict[str, list[float]]) -> None:
        now = int(time.time() * 1000)
        entities = [mlflow.entities.Metric(metric_key(name), float(value), now, step)
                    for name, values in history.items() for step, value in enumerate(values)]
        for start in range(0, len(entities), 1000):  # MLflow's batch limit
            self.client.log_batch(run_id, metrics=entities[start:start + 1000])

    def fold_finished(self, result: FoldResult) -> None:
        run_id = self.runs[result.fold]
        prefix = "test/" if result.fold == "final" else "fold/"
        now = int(time.time() * 1000)
        entities = [mlflow.entities.Metric(prefix + k, float(v), now, 0) for k, v in result.metrics.items()]
        if entities:
            self.client.log_batch(run_id, metrics=entities)
        # Before FINISHED: a finished fold always carries what a resumed run needs to reuse it.
        self.client.log_dict(run_id, result.to_json(), resume.FOLD_RESULT)
        self.client.set_terminated(run_id, "FINISHED")

    def fold_failed(self, fold: str, error: BaseException) -> None:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.client.set_terminated(self.runs[fold], status)
