"""`mtl-suite ensemble`: finished stage-3 runs on one split combined into one model that averages their class
probabilities, logged as a stage run of its own, so that `promote`, `predict` and `serve` take it like any other.

Nothing is trained. The ensemble's cross-validation and test figures are the members' logged out-of-fold and test
probabilities averaged per image: a fold's members never saw that fold, so the average is as honest as each member
is. The checks every stage run gets (colour baseline, stain shift, normal vs leukemia) run on the combined model.
Which runs to combine is the user's choice: the figures of runs picked for their test scores are optimistic, and
the run says which runs it holds (tag `ensemble_members`)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import RunStatus

from mtl_suite.analysis.stage_files import write_cv_files
from mtl_suite.catalog import STAGES, RunKind
from mtl_suite.config import DEFAULT_EXPERIMENT, TrainConfig
from mtl_suite.data.lineage import Exposure
from mtl_suite.data.looks import model_key
from mtl_suite.data.splits import save_split
from mtl_suite.errors import UserError
from mtl_suite.models.ensemble import run_ensemble
from mtl_suite.run_files import ModelInfo
from mtl_suite.tasks import TaskData, smear_task
from mtl_suite.tracking import looks, stage_log
from mtl_suite.tracking.logged_runs import LoggedStageRun, read_stage_run
from mtl_suite.tracking.report_queries import load_run_model
from mtl_suite.tracking.reachability import check_tracking_uri
from mtl_suite.tracking.runs import git_commit, log_split
from mtl_suite.tracking.setup import resolve_tracking_uri, use_tracking
from mtl_suite.training.cv import CVResult, TestResult
from mtl_suite.training.metrics import classification_metrics, summarise_folds
from mtl_suite.workflows import stage_checks
from mtl_suite.workflows.reliability import ExternalCheck, fit_reliability, log_reliability
from mtl_suite.workflows.stage import StageOutcome, log_test, record_test_look, ui_link

# what every member must share (run tags): one stage, task and split, so the averaged images are the same images
SHARED_TAGS = ("stage", "task", "split_digest", "image_size", "classes")


@dataclasses.dataclass(frozen=True)
class EnsembleRequest:
    run_ids: tuple[str, ...]
    tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    normal_class: str | None = None  # multiclass data: also read the calls as this class vs leukemia
    quiet: bool = False
    external: ExternalCheck | None = None  # the combined model also scored on these images
    extra_tags: tuple[tuple[str, str], ...] = ()  # e.g. the recipe that made it


def make_ensemble(request: EnsembleRequest, say: Callable[[str], None] = print) -> StageOutcome:
    uri = resolve_tracking_uri(request.tracking_uri)
    check_tracking_uri(uri)
    mlflow.set_tracking_uri(uri)  # the members are read before the experiment is made: bad input leaves nothing
    with tempfile.TemporaryDirectory(prefix="mtl-ensemble-") as tmp:
        members = [read_stage_run(run_id, Path(tmp) / run_id, f"member run {run_id}") for run_id in request.run_ids]
        check_members(members)
        first = members[0]
        stage, task = first.run.data.tags["stage"], first.run.data.tags["task"]
        say(f"ensemble of {len(members)} {stage} runs: reading the split's images")
        task_data = smear_task(first.config.data, task, request.normal_class)
        external = request.external and request.external.resolved(task_data, task_data.manifest.classes,
                                                                   request.normal_class)
        split = save_split(task_data.split, Path(tmp) / "split.json")
        if split[1] != first.run.data.tags.get("split_digest"):
            raise UserError(f"member run {first.run_id}: its split cannot be rebuilt from its settings (the data at "
                            f"{first.config.data.path} changed since it ran)")
        cv = averaged_cv(members, task_data)
        say(f"loading the {len(members)} members' models")
        model = run_ensemble([load_run_model(m.run_id) for m in members])
        final = averaged_test(members, task_data, model)
        name = f"ensemble-{stage}-{_backbones(members)}-{task}"
        _, experiment_id = use_tracking(uri, request.experiment)
        with mlflow.start_run(run_name=name, experiment_id=experiment_id) as run:
            say(f"ensemble of runs {', '.join(m.run_id for m in members)}: MLflow run {run.info.run_id} in {uri}")
            try:
                mlflow.set_tags(dict(request.extra_tags))
                metrics = _log(members, task_data, split, cv, final, Path(tmp) / "ensemble", say, external)
            except KeyboardInterrupt:
                mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
                raise
            outcome = StageOutcome(run.info.run_id, stage, metrics, uri, experiment_id,
                                   looks.logged_earlier(run.info.run_id))
    say(f"ensemble finished: run {outcome.run_id}{outcome.looks_text()}; promote it with: mtl-suite promote "
        f"{outcome.run_id}; view with: mlflow ui --backend-store-uri {uri}, then {ui_link(experiment_id)}")
    return outcome


def check_members(members: list[LoggedStageRun]) -> None:
    """At least two distinct finished final-stage runs (stage 3, classical) that share SHARED_TAGS (one split: the
    same test images)."""
    ids = [m.run_id for m in members]
    if len(set(ids)) < 2:
        raise UserError(f"an ensemble needs at least 2 different runs. Received: {' '.join(ids) or 'none'}")
    first = members[0]
    stage = first.run.data.tags.get("stage")
    if stage not in {str(plan.stage) for plan in STAGES.values() if plan.arm is not None}:
        raise UserError(f"member run {first.run_id} is a {stage} run: only the final stage's runs (the models that "
                        "are served) can be combined")
    for member in members[1:]:
        for tag in SHARED_TAGS:
            if member.run.data.tags.get(tag) != first.run.data.tags.get(tag):
                raise UserError(f"member run {member.run_id} has {tag} {member.run.data.tags.get(tag)!r}, member "
                                f"run {first.run_id} {first.run.data.tags.get(tag)!r}: every member must share "
                                f"{', '.join(SHARED_TAGS)}")
    missing_oof = [m.run_id for m in members if m.oof is None]
    if missing_oof and len(missing_oof) < len(members):
        raise UserError(f"member run {missing_oof[0]} has no out-of-fold predictions (it ran without "
                        "cross-validation) while others have: the ensemble's CV figures would be some members' only")


def averaged_cv(members: list[LoggedStageRun], task_data: TaskData) -> CVResult | None:
    """Per fold, the members' out-of-fold probabilities averaged and scored; None when the runs had no CV."""
    if members[0].oof is None:
        return None
    index = _row_index(task_data)
    oof = members[0].oof
    rows = index.loc[oof.sha256].to_numpy()
    proba = _mean_probabilities(members, "oof", oof.sha256, task_data.class_names)
    labels, folds = task_data.data.labels[rows], oof["fold"].to_numpy()
    fold_metrics = [classification_metrics(labels[folds == k], proba[folds == k], task_data.class_names)
                    for k in sorted(set(folds))]
    return CVResult(fold_metrics, summarise_folds(fold_metrics), rows, proba, folds)


def averaged_test(members: list[LoggedStageRun], task_data: TaskData, model) -> TestResult:
    digests = members[0].test.sha256
    rows = _row_index(task_data).loc[digests].to_numpy()
    proba = _mean_probabilities(members, "test", digests, task_data.class_names)
    metrics = classification_metrics(task_data.data.labels[rows], proba, task_data.class_names)
    return TestResult(model, None, metrics, rows, proba, {})


def _mean_probabilities(members: list[LoggedStageRun], part: str, digests: pd.Series,
                        class_names: list[str]) -> np.ndarray:
    columns = [f"p_{name}" for name in class_names]
    return np.mean([getattr(m, part).set_index("sha256").loc[digests, columns].to_numpy() for m in members], axis=0)


def _row_index(task_data: TaskData) -> pd.Series:
    """Image digest -> row of the task data."""
    return pd.Series(np.arange(len(task_data.split.entries)), index=[e.sha256 for e in task_data.split.entries])


def _log(members: list[LoggedStageRun], task_data: TaskData, split: tuple[Path, str], cv: CVResult | None,
         final: TestResult, workdir: Path, say: Callable[[str], None],
         external: ExternalCheck | None = None) -> dict[str, float]:
    first = members[0]
    workdir.mkdir()
    mlflow.set_tags(_run_tags(members, task_data))
    log_split(*split, task_data.split.to_json())
    stage_log.log_exposure(_union([m.exposure for m in members]))
    metrics: dict[str, float] = {}
    if cv is not None:
        cv_metrics = {f"cv/{k}": v for k, v in cv.summary.items()}
        stage_log.log_metrics_and_folder(cv_metrics, write_cv_files(cv, task_data, workdir / "cv"), "cv")
        metrics.update(cv_metrics)
    metrics.update(log_test(final, task_data, workdir))
    record_test_look(final, task_data, f"ensemble of {len(members)} {first.run.data.tags.get('stage')} runs "
                     f"({_backbones(members)}): {', '.join(m.run_id[:8] for m in members)}",
                     model_key(run_id=stage_log.active_run_id()))
    say("logging the combined model")
    stage_log.log_keras_model(final.model, task_data.data.images[:2].astype("float32"), ModelInfo(
        class_names=tuple(first.class_names), image_size=first.image_size, backbone=_backbones(members),
        input_masking=False, ensemble_members=tuple(m.run_id for m in members)))
    train = checks_config([m.config.train for m in members])
    reliability = fit_reliability(task_data, train, cv, say)
    metrics.update(log_reliability(reliability))
    say(f"checks: colour baselines on the split, the combined model on {len(task_data.split.test_indices)} "
        "re-stained test images")
    metrics.update(stage_checks.run_checks("ensemble", final, task_data, train, metrics, say, cv, reliability,
                                           external))
    return metrics


def _run_tags(members: list[LoggedStageRun], task_data: TaskData) -> dict[str, str]:
    """A stage run's tags (promote and the reports find it as one), with what it combines."""
    tags = members[0].run.data.tags
    shared = {tag: tags[tag] for tag in (*SHARED_TAGS, "dataset_digest") if tag in tags}
    return {"run_kind": RunKind.STAGE, "git_commit": git_commit(), **shared, "backbone": _backbones(members),
            "final_model": f"run_ensemble_{len(members)}", "ensemble_members": ",".join(m.run_id for m in members),
            "data": task_data.description[:250]}


def _backbones(members: list[LoggedStageRun]) -> str:
    """'xception', or 'xception+mobilenet_025' for members of different backbones."""
    return "+".join(dict.fromkeys(m.run.data.tags.get("backbone", "?") for m in members))


def checks_config(trains: list[TrainConfig]) -> TrainConfig:
    """The settings the stage checks read: the members' common stain control (none when they differ: the ensemble
    reads raw pixels), colour fusion when any member fuses colour."""
    stains = {t.stain for t in trains}
    fused = any(t.colour_fusion != "none" for t in trains)
    return dataclasses.replace(trains[0], stain=stains.pop() if len(stains) == 1 else "none",
                               colour_fusion="average" if fused else "none")


def _union(exposures: list[Exposure | None]) -> Exposure:
    """What any member's weights saw (a member without a record adds nothing it can prove)."""
    known = [e for e in exposures if e is not None]
    return Exposure(frozenset().union(*(e.digests for e in known)),
                    tuple(dict.fromkeys(source for e in known for source in e.sources)))
