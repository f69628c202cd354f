"""A transfer stage end to end: find (or first run) the stage it starts from, assemble its task data, open its
MLflow run (adopting an interrupted one), cross-validate and refit (plain Keras, training/), and keep the results
(files from analysis/, MLflow I/O from tracking/)."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.entities import RunStatus

from mtl_suite import progress
from mtl_suite.analysis.intervals import context_from_metrics
from mtl_suite.analysis.stage_files import write_cv_files, write_test_files
from mtl_suite.cache import default_cache_root
from mtl_suite.catalog import Stage, StageData, StagePlan, Task, get_stage
from mtl_suite.config import DataConfig, ExperimentConfig, TrainConfig, keyed_settings
from mtl_suite.data.lineage import DataSource, Exposure, HeldOut
from mtl_suite.data.looks import Look, earlier_text, part_digest
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_text
from mtl_suite.models.backbones import with_backbone_sizes
from mtl_suite.run_files import ModelInfo
from mtl_suite.tasks import (CellSegmenter, TaskData, TaskRequest, describe, held_out_images, load_task_data,
                              roi_segmenter, smear_masks)
from mtl_suite.tracking import looks, resume, stage_log
from mtl_suite.tracking.folds import MlflowFoldObserver
from mtl_suite.tracking.setup import take_launcher_run, use_tracking
from mtl_suite.training.activations import describe_finetuning
from mtl_suite.training.cv import (FoldResult, TestResult, cross_validate, ensemble_and_test, fold_reusable,
                                   refit_and_test)
from mtl_suite.training.progress import FoldProgress
from mtl_suite.training.stages import imagenet_backbone_file, model_factory
from mtl_suite.workflows import stage_checks
from mtl_suite.workflows.reliability import ExternalCheck, fit_reliability, log_reliability, shift_probe


ROI_SEGMENTATION = "roi"


@dataclass(frozen=True)
class StageRequest:
    stage: Stage | str
    config: ExperimentConfig
    task: Task | str = Task.MULTICLASS
    normal_class: str | None = None
    cells: str | None = None  # stage 2: a single-cell dataset instead of crops of the smears
    source: str | None = None  # stage 1: optional source dataset to fine-tune on
    parent_run: str | None = None
    quiet: bool = False
    extra_tags: tuple[tuple[str, str], ...] = ()  # tags that are part of what the run is (in its resume key)
    # tags that only say who made the run (the claim of a shared unit): left out of the resume key, so a redo of the
    # unit by another worker adopts the run a dead worker left, with its finished folds
    claim_tags: tuple[tuple[str, str], ...] = ()
    resume: str = "auto"  # auto: adopt an interrupted run with the same settings; never; or a run id
    # a finished run with the same settings, data, split and parent run stands for this one (train's rerun of a
    # recipe does not train its finished members again); never with an external check that run may lack
    reuse_finished: bool = False
    name_prefix: str = ""  # before the run name, e.g. a comparison's "pair3-"
    # Stage 2 on smears without masks: ROI_SEGMENTATION or a `segment train` run id that cuts the cells; None: the
    # experiment's newest U-Net, else ROI (a comparison fixes it once for all its pairs).
    segmentation: str | None = None
    external: ExternalCheck | None = None  # the final stage's model also scored on these images (workflows/reliability.py)
    # the final stage's folds also scored on their validation images re-stained and magnified (cv/shift/*, about a
    # minute per fold for Xception at 224 px on 2 cores); compare leaves it out: its question is CTL against MTL
    shift_probe: bool = True

    def task_request(self) -> TaskRequest:
        return TaskRequest(self.config.data, self.task, self.normal_class, self.cells, self.source)

    def run_task(self, plan: StagePlan) -> str:
        return plan.run_task(self.task, has_source=bool(self.source))


@dataclass(frozen=True)
class StageOutcome:
    run_id: str
    stage: str
    metrics: dict[str, float]
    tracking_uri: str
    experiment_id: str
    earlier: int | None = None  # other configurations that had scored its outer test part first (None: none scored)
    reused: bool = False  # a finished run of the same settings found in the store, not trained now

    def looks_text(self) -> str:
        """'; this test part had been scored by 3 earlier configurations', or "" for a run that scored none."""
        return "" if self.earlier is None else f"; {earlier_text(self.earlier)}"


@dataclass(frozen=True)
class Resumption:
    """What an interrupted attempt left: finished folds (from the tracking store) and epoch checkpoints."""

    folds: dict[str, FoldResult]
    checkpoints: Path


def run_stage(request: StageRequest, say: Callable[[str], None] = print) -> StageOutcome:
    """Run one stage (running missing earlier stages first) and return where its results went."""
    request = replace(request, config=with_backbone_sizes(request.config))
    tracking = request.config.tracking
    uri, experiment_id = use_tracking(tracking.tracking_uri, tracking.experiment)
    launcher_run = take_launcher_run(experiment_id)  # `mlflow run`'s run becomes this stage's run
    return _run(request, uri, experiment_id, launcher_run, say)


def _run(request: StageRequest, uri: str, experiment_id: str, run_id: str | None,
         say: Callable[[str], None]) -> StageOutcome:
    plan = get_stage(request.stage)
    request = _with_final_model_settings(plan, request)
    backbone = request.config.train.backbone
    parent_id = resolve_parent_run(plan, request, uri, experiment_id, say)
    with tempfile.TemporaryDirectory(prefix=f"mtl-{plan.name}-") as tmp:
        workdir = Path(tmp)
        task_data = stage_task_data(plan, request, say, experiment_id)
        request = _with_checked_external(plan, request, task_data)
        key = _resume_key(plan, request, parent_id, task_data)
        may_reuse = request.reuse_finished and request.external is None
        finished = resume.find_finished_run(experiment_id, key) if may_reuse else None
        if finished is not None:
            return _reused(plan, finished, uri, experiment_id, say)
        interrupted = resume.find_interrupted_run(experiment_id, key, request.resume)
        # before the run opens: a weights file that does not fit the backbone leaves no FAILED run
        initial, initial_tags = prepare_initial_weights(plan, request, parent_id, workdir)
        run_name = f"{request.name_prefix}{plan.name}-{backbone}-{request.run_task(plan)}"
        with mlflow.start_run(run_id=run_id, run_name=run_name, experiment_id=experiment_id) as run:
            say(f"{plan.name} ({plan.description}), backbone {backbone}: MLflow run {run.info.run_id} in {uri}")
            try:
                # Tagged before adopting: if this attempt dies too, the next one finds it (and what it adopted).
                origin = resume.origin_of(interrupted) if interrupted else run.info.run_id
                mlflow.set_tags({resume.RESUME_KEY: key, resume.ORIGIN: origin, **resume.owner_tags()})
                checkpoints = resume.checkpoint_folder(origin)
                reusable = functools.partial(fold_reusable, cfg=request.config.train, checkpoints=checkpoints)
                adopted = resume.adopt(interrupted, run.info.run_id, say, reusable) if interrupted else {}
                stage_log.log_setup(_run_tags(plan, request, task_data, parent_id), request.config, task_data,
                                    workdir)
                stage_log.log_exposure(exposure_of(plan, task_data, parent_id, run.info.run_id))
                mlflow.set_tags(initial_tags)
                metrics = _train_and_log(plan, request, task_data, initial, workdir, say,
                                         Resumption(adopted, checkpoints))
            except KeyboardInterrupt:
                mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))  # the context manager would say FAILED
                raise
            outcome = StageOutcome(run.info.run_id, plan.name, metrics, uri, experiment_id,
                                   looks.logged_earlier(run.info.run_id))
        shutil.rmtree(checkpoints, ignore_errors=True)  # every fold is in the tracking store now
    say(f"{plan.name} finished: run {outcome.run_id} ({_summary(metrics)}){outcome.looks_text()}; "
        f"view with: mlflow ui --backend-store-uri {uri}, then {ui_link(experiment_id)}")
    _stage_done(plan.name)
    return outcome


def _reused(plan: StagePlan, run, uri: str, experiment_id: str, say: Callable[[str], None]) -> StageOutcome:
    outcome = StageOutcome(run.info.run_id, plan.name, dict(run.data.metrics), uri, experiment_id,
                           looks.logged_earlier(run.info.run_id), reused=True)
    say(f"{plan.name}: reusing finished run {outcome.run_id} (same settings, data, split and parent run; "
        f"{_summary(outcome.metrics)})")
    _stage_done(plan.name, reused=True)
    return outcome


def _with_final_model_settings(plan: StagePlan, request: StageRequest) -> StageRequest:
    """A fold ensemble, test-time flips and colour fusion shape the final stage's model; a stage whose backbone starts
    another (stage 1, stage 2) always refits one network, so it runs without them (and resumes and is found as
    without)."""
    train = request.config.train
    if not plan.starts_another or (train.ensemble, train.tta, train.colour_fusion) == ("none", "none", "none"):
        return request
    plain = replace(train, ensemble="none", tta="none", colour_fusion="none")
    return replace(request, config=replace(request.config, train=plain))


def _with_checked_external(plan: StagePlan, request: StageRequest, task_data: TaskData | None) -> StageRequest:
    """The external check resolved against the task before the run opens (a bad folder or class leaves no run); only
    the final stage's model is scored on it."""
    if request.external is None:
        return request
    if plan.starts_another or task_data is None:
        return replace(request, external=None)
    return replace(request, external=request.external.resolved(task_data, task_data.manifest.classes,
                                                               request.normal_class))


def ui_link(experiment_id: str) -> str:
    """The experiment in `mlflow ui` (default address), on its training runs: MLflow 3.17's UI opens a fresh browser
    on its GenAI pages whatever the experiment's kind tag says, unless the address names the workflow."""
    return f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def _stage_done(name: str, extra: int = 0, reused: bool = False) -> None:
    """The command's "stages" level (`mtl-suite stage3` and the missing stages it runs first), when it has one."""
    display = progress.current()
    stages = display.find("stages")
    if stages is not None:
        display.grow(stages, extra) if extra else display.advance(stages, name, reused=reused)


# --- lineage ----------------------------------------------------------------------------------------------------

def resolve_parent_run(plan: StagePlan, request: StageRequest, uri: str, experiment_id: str,
                       say: Callable[[str], None]) -> str | None:
    """The run whose backbone this stage starts from: the explicit one (checked), else the newest finished run of
    the previous stage with the same backbone whose weights have seen none of the images this stage holds out, else
    a new run of the previous stage made now. A parent that saw held-out images would leak them into the score."""
    if plan.previous is None:
        return None
    backbone = request.config.train.backbone
    held_out = held_out_images(plan, request.task_request())
    if request.parent_run:
        stage_log.check_parent(request.parent_run, plan.previous, backbone)
        problem = lineage_problem(request.parent_run, held_out)
        if problem:
            raise UserError(f"--parent-run {request.parent_run} cannot be this {plan.name} run's parent: {problem}. "
                            f"Pick a {plan.previous} run trained on this split's development part, or leave "
                            "--parent-run out to run a matching one")
        return request.parent_run
    skipped = []
    for candidate in stage_log.finished_stage_runs(experiment_id, plan.previous, backbone):
        problem = lineage_problem(candidate, held_out)
        if problem is None:
            say(f"{plan.name}: starting from {plan.previous} run {candidate}")
            return candidate
        skipped.append((candidate, problem))
    if skipped:
        newest, problem = skipped[0]
        others = f" ({len(skipped) - 1} older ones likewise)" if len(skipped) > 1 else ""
        say(f"{plan.name}: not starting from {plan.previous} run {newest}: {problem}{others}; running a "
            f"{plan.previous} run on this split first")
    else:
        say(f"{plan.name}: no finished {plan.previous} run for backbone {backbone} in this experiment; "
            f"running {plan.previous} first")
    previous = get_stage(plan.previous)
    _stage_done(previous.name, extra=1)
    earlier = replace(request, stage=previous.stage, parent_run=None, resume="auto",
                      task=previous.task_for(request.task))
    return _run(earlier, uri, experiment_id, None, say).run_id


def lineage_problem(run_id: str, held_out: HeldOut | None) -> str | None:
    """Why the run's weights may not start a stage that holds out `held_out` (None: they may)."""
    if held_out is None:
        return None
    exposure = stage_log.read_exposure(run_id)
    if exposure is None:
        return "it has no record of the images its weights have seen (made by an older version of the suite)"
    return exposure.conflict(held_out)


def exposure_of(plan: StagePlan, task_data: TaskData | None, parent_id: str | None, run_id: str) -> Exposure:
    """What this run's weights will have seen: the parent's record plus the images this stage trains on."""
    inherited = (stage_log.read_exposure(parent_id) if parent_id else None) or Exposure()
    if task_data is None:  # stage 1 without a source dataset: ImageNet weights, nothing of ours
        return inherited
    split = task_data.split  # for crops: the cells' own split, drawn with the smears' split seed
    source = DataSource(plan.name, run_id, task_data.description, split.manifest_digest, split.seed,
                        len(task_data.trained_from))
    return inherited.extended(source, task_data.trained_from)


def pinned_segmentation(data: DataConfig, cells: str | None, experiment_id: str) -> str | None:
    """What cuts stage 2's cells when the smears have no masks and there is no --cells: the experiment's newest
    U-Net run, else ROI_SEGMENTATION; None when stage 2 needs no segmentation. For commands that run stage 2 many
    times and must give every run the same cells (compare)."""
    if cells or smear_masks(data) is not None:
        return None
    return stage_log.newest_segmentation_run(experiment_id) or ROI_SEGMENTATION


def stage_task_data(plan: StagePlan, request: StageRequest, say: Callable[[str], None],
                    experiment_id: str | None = None) -> TaskData | None:
    """The stage's task data. Stage 2 on smears with neither --cells nor masks cuts its cells with the suite's own
    segmentation (cell_segmenter); `experiment_id` is where to look for a U-Net (None: the config's experiment)."""
    segmenter = None
    if plan.data is StageData.CELLS and not request.cells and smear_masks(request.config.data) is None:
        segmenter = cell_segmenter(request, experiment_id, say)
    task_data = load_task_data(plan, replace(request.task_request(), segmenter=segmenter), default_cache_root())
    if task_data is not None:
        say(describe(plan, task_data))
    return task_data


def cell_segmenter(request: StageRequest, experiment_id: str | None, say: Callable[[str], None]) -> CellSegmenter:
    """What cuts stage 2's cells from smears without masks: the U-Net of the experiment's newest finished
    `segment train` run (the paper feeds its U-Net's cells to stage 2), else the paper's ROI method. The U-Net is
    loaded once, when the first field is segmented: crops already cached need none."""
    tracking = request.config.tracking
    if experiment_id is None:  # tune, compare's input check: the store is set up already; find the experiment
        experiment_id = use_tracking(tracking.tracking_uri, tracking.experiment)[1]
    name = get_stage(request.stage).name
    run_id = request.segmentation or stage_log.newest_segmentation_run(experiment_id)
    if run_id in (None, ROI_SEGMENTATION):
        why = "as fixed for this comparison" if request.segmentation else "no `segment train` run in this experiment"
        say(f"{name}: no masks for the smears; cutting cells with the ROI method ({why})")
        return roi_segmenter()
    say(f"{name}: no masks for the smears; cutting cells with the U-Net of run {run_id}")

    @functools.cache
    def trained():
        from mtl_suite.workflows.segment import load_trained

        return load_trained(run_id, tracking.tracking_uri, tracking.experiment)

    def masks(image):
        from mtl_suite.imaging.segment import unet_mask

        return unet_mask(trained().model, image, trained().size)

    return CellSegmenter(f"unet:{run_id}", run_id, masks)


def prepare_initial_weights(plan: StagePlan, request: StageRequest, parent_id: str | None,
                            workdir: Path) -> tuple[Path, dict[str, str]]:
    """W_{k-1} as a local archive and the tags naming where it came from: the parent run's backbone, or ImageNet
    (or file/none) weights for stage 1 and the classical baseline. Needs no open run, so a command makes it before
    opening one: a weights file that does not fit the backbone fails with no run left behind."""
    from mtl_suite.models.transfer import read_backbone_metadata

    train, size = request.config.train, request.config.data.image_size
    if parent_id is None:
        path, provenance = imagenet_backbone_file(train.backbone, size, train.weights, workdir / "initial.npz",
                                                  {"stage": "imagenet"}, seed=train.seed)
        return path, dict(provenance)
    local = stage_log.download_backbone(parent_id, workdir / "parent")
    meta = read_backbone_metadata(local)
    if meta.get("backbone") != train.backbone:
        raise UserError(f"parent run {parent_id} holds a {meta.get('backbone')} backbone, not {train.backbone}")
    tags = {"weights": meta.get("weights", ""), "weights_sha256": meta.get("weights_sha256", ""),
            "weights_source": f"run {parent_id} ({meta.get('stage')})"}
    tags.update({key: meta[key] for key in ("stage1_run", "stage2_run") if meta.get(key)})
    return local, tags


def check_stage_inputs(request: StageRequest, workdir: Path) -> None:
    """Everything a stage run reads from the user (data, task, normal class, cells; the weights of a first stage),
    read once without opening a run: for commands that open a run of their own before their stages run (compare),
    so a user error leaves no FAILED run. Data and cell crops are cached: the stages read them again cheaply."""
    plan = get_stage(request.stage)
    stage_task_data(plan, request, lambda message: None)
    if plan.previous is None:
        prepare_initial_weights(plan, request, None, workdir)


def _run_tags(plan: StagePlan, request: StageRequest, task_data: TaskData | None,
              parent_id: str | None) -> dict[str, str]:
    config = request.config
    return {
        "stage": plan.name, "backbone": config.train.backbone, "task": request.run_task(plan),
        "seed": str(config.train.seed), "parent_stage_run": parent_id or "",
        "image_size": str(task_data.image_size if task_data else config.data.image_size),
        # stage 2: "cells:<path>", "masks:<path>", "unet:<segment train run>" or "roi"
        **({"cell_source": task_data.cell_source} if task_data is not None and task_data.cell_source else {}),
        **dict(request.extra_tags), **dict(request.claim_tags),
    }


def _resume_key(plan: StagePlan, request: StageRequest, parent_id: str | None, task_data: TaskData | None) -> str:
    """Everything that decides this run's results: only a run with the same key may be resumed."""
    settings = {k: v for k, v in keyed_settings(request.config).items() if not k.startswith("tracking.")}
    return resume.resume_key({
        "stage": plan.name, "task": request.run_task(plan), "normal_class": request.normal_class,
        "cells": request.cells, "source": request.source, "parent": parent_id, "settings": settings,
        "split": sha256_text(json.dumps(task_data.split.to_json(), sort_keys=True)) if task_data else None,
        "tags": sorted(request.extra_tags)})


# --- training and its results -----------------------------------------------------------------------------------

def _train_and_log(plan: StagePlan, request: StageRequest, task_data: TaskData | None, initial: Path,
                   workdir: Path, say: Callable[[str], None], resumption: Resumption) -> dict[str, float]:
    config = request.config
    lineage = _lineage(plan, initial)
    if task_data is None:  # stage 1 without a source dataset: W1 is the ImageNet backbone itself
        from mtl_suite.models.transfer import rewrite_metadata

        rewrite_metadata(initial, workdir / "backbone.npz", lineage)
        stage_log.log_backbone(workdir / "backbone.npz")
        return {}
    factory = model_factory(config.train.backbone, task_data.image_size, initial, plan.head,
                            len(task_data.class_names), config.train)
    augment = _online_augment(config.train)
    mlflow.set_tags(describe_finetuning(config.train.backbone, task_data.image_size, config.train, augment is not None))
    observer = MlflowFoldObserver(stage_log.active_run_id(), plan.name, config.train.backbone, quiet=request.quiet)
    cv_folds = task_data.split.folds if task_data.split.folds >= 1 and len(task_data.split.development_indices) else 0
    observer = FoldProgress(observer, f"{plan.name} folds", cv_folds + 1,  # + the final refit
                            config.train.warmup_epochs + config.train.finetune_epochs, already=len(resumption.folds))
    verbose = 0 if request.quiet or progress.current().live else 2  # a live display shows the epochs itself
    metrics: dict[str, float] = {}
    cv = None
    if cv_folds:
        cv = cross_validate(task_data.data, task_data.split, task_data.class_names, factory, config.train,
                            observer, augment, verbose, progress=None if request.quiet else say,
                            completed=resumption.folds, checkpoints=resumption.checkpoints,
                            probe=shift_probe(config.train) if request.shift_probe and not plan.starts_another
                            else None)
        cv_metrics = {f"cv/{k}": v for k, v in cv.summary.items()}
        stage_log.log_metrics_and_folder(cv_metrics, write_cv_files(cv, task_data, workdir / "cv"), "cv")
        metrics.update(cv_metrics)
    mlflow.set_tags(_final_model_tags(config.train, cv_folds))
    if config.train.ensemble == "folds":
        if cv is None:
            raise UserError("train.ensemble folds averages the cross-validation fold models, but this data has no "
                            "development images to cross-validate on")
        final = ensemble_and_test(task_data.data, task_data.split, task_data.class_names, factory, config.train,
                                  cv, observer)
    else:
        final = refit_and_test(task_data.data, task_data.split, task_data.class_names, factory, config.train,
                               observer, augment, verbose, checkpoints=resumption.checkpoints)
    metrics.update(log_test(final, task_data, workdir))
    if not plan.starts_another:  # the final model's test figures are seen: a look at the test part
        record_test_look(final, task_data, configuration_text(plan, request),
                         looks.run_model_key(stage_log.active_run_id()))
    _log_backbone_and_model(final, task_data, config, workdir, lineage)
    reliability = None
    if not plan.starts_another:  # the served model: it says when an image is unlike its training images
        reliability = fit_reliability(task_data, config.train, cv, say)
        metrics.update(log_reliability(reliability))
    metrics.update(stage_checks.run_checks(plan.name, final, task_data, config.train, metrics, say, cv, reliability,
                                           request.external))
    return metrics


def _final_model_tags(train: TrainConfig, folds: int) -> dict[str, str]:
    """What the logged model is: one network refit on all development images, or the fold models averaged; and
    whether it averages its predictions over flips and with a colour classifier."""
    final = f"fold_ensemble_{folds}" if train.ensemble == "folds" else "refit"
    return {"final_model": final, "tta": train.tta, "colour_fusion": train.colour_fusion}


def log_test(final: TestResult, task_data: TaskData, workdir: Path) -> dict[str, float]:
    if not len(final.index):
        return {}
    test_metrics = {f"test/{k}": v
                    for k, v in {**final.metrics, **stage_checks.test_part_context(final, task_data)}.items()}
    stage_log.log_metrics_and_folder(test_metrics, write_test_files(final, task_data, workdir / "test"), "test")
    return test_metrics


def record_test_look(final: TestResult, task_data: TaskData, configuration: str, model: str) -> None:
    """The active run's look at its outer test part, in the ledger (data/looks.py); nothing without a test part."""
    if len(final.index):
        digests = [task_data.split.entries[i].sha256 for i in final.index]
        looks.record_look(Look(part_digest(digests), len(set(digests)), model, configuration))


def configuration_text(plan: StagePlan, request: StageRequest) -> str:
    """The configuration in a few words, for the ledger: 'stage3 xception multiclass, seed 42, refit, tta flips'
    (the run's params hold all of it)."""
    train = request.config.train
    shaped = [f"{name} {value}" for name, value in (("stain", train.stain), ("tta", train.tta),
                                                    ("colour fusion", train.colour_fusion)) if value != "none"]
    final = "fold ensemble" if train.ensemble == "folds" else "refit"
    return ", ".join([f"{plan.name} {train.backbone} {request.run_task(plan)}", f"seed {train.seed}", final, *shaped])


def _online_augment(train: TrainConfig):
    """The per-batch augmentation (None: none, or offline copies that cross-validation adds to each fold)."""
    if train.augment == "none" or train.augment_mode == "offline":
        return None
    from mtl_suite.imaging.augment import get_batch_augment

    return get_batch_augment(train.augment)


def _lineage(plan: StagePlan, initial: Path) -> dict:
    """The run ids a backbone archive carries: which stage-1 and stage-2 runs the weights passed through."""
    from mtl_suite.models.transfer import read_backbone_metadata

    meta = read_backbone_metadata(initial)
    run_id = stage_log.active_run_id()
    lineage = {k: meta[k] for k in ("weights", "weights_source", "weights_sha256", "stage1_run", "stage2_run")
               if k in meta}
    if plan.data is not StageData.SMEARS:  # a pre-training stage: later stages record it
        lineage[f"{plan.name}_run"] = run_id
    return {**lineage, "stage": plan.name, "backbone": meta.get("backbone"), "run_id": run_id}


def _log_backbone_and_model(final: TestResult, task_data: TaskData, config: ExperimentConfig, workdir: Path,
                            lineage: dict) -> None:
    from mtl_suite.models.transfer import save_backbone

    if final.backbone is not None:  # a fold ensemble has none; it ends the chain
        save_backbone(final.backbone, workdir / "backbone.npz", lineage)
        stage_log.log_backbone(workdir / "backbone.npz")
    example = task_data.data.images[:2].astype("float32")
    stage_log.log_keras_model(final.model, example, ModelInfo(
        class_names=tuple(task_data.class_names), image_size=task_data.image_size, backbone=config.train.backbone,
        # The model sees whole images (masks only cut stage 2's crops), so serving needs no masks.
        input_masking=False,
        # the archive's lineage names its backbone too (the same one: a parent of another backbone is refused)
        lineage={k: v for k, v in lineage.items() if k != "backbone"}))


def _summary(metrics: dict[str, float]) -> str:
    keys = ["cv/accuracy_mean", "cv/f1_macro_mean", "test/accuracy", "test/f1_macro"]
    context = context_from_metrics(metrics, "test/")  # n, 95% interval, majority class beside the test accuracy
    shown = [f"test accuracy {context.text()}" if k == "test/accuracy" and context else f"{k} {metrics[k]:.3f}"
             for k in keys if k in metrics]
    if "test/ood/flagged_share" in metrics:
        shown.append(f"test images flagged {metrics['test/ood/flagged_share']:.1%}")
    if "external/called_expected_share" in metrics:
        colour = metrics.get("external/colour_called_expected_share")
        shown.append(f"external images: {metrics['external/called_expected_share']:.1%} called the expected class"
                     + (f" (colour alone {colour:.1%})" if colour is not None else "")
                     + f", {metrics['external/confident_wrong_share']:.1%} wrong without a flag")
    return ", ".join(shown) or "ImageNet backbone saved"
