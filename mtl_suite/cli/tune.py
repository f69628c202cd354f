"""`mtl-suite tune`: sequential hyperparameter optimisation of one stage (Optuna, or keras-tuner), one MLflow
parent run per study with a nested run per trial. Rerunning the same command resumes the study."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mtl_suite import progress
from mtl_suite.catalog import TUNABLE_STAGES, Stage, Task
from mtl_suite.cli.common import (
    AllowOutsideRoot, BackboneName, Experiment, GroupBy, Layout, NormalClass, Quiet, SystemMetrics, TaskName,
    TrackingUri, check_inputs, choice, config_keys, enable_system_metrics, explicit_options, given,
    handle_user_errors, say,
)
from mtl_suite.config import DEFAULT_EXPERIMENT, DataConfig, TrainConfig, load_config
from mtl_suite.interrupts import unwind_on_interrupts
from mtl_suite.models.backbones import get_backbone_spec
from mtl_suite.tuning.names import ENGINES, PRUNERS, SAMPLERS

_D, _T = DataConfig(), TrainConfig()
TUNE_KEYS = config_keys("data", "layout", "allow_outside_root", "group_by", "masks", "image_size", "cell_size",
                        "test_fraction", "data_seed", "backbone", "weights", "tracking_uri", "experiment",
                        "early_stopping_patience")


@handle_user_errors
def tune(
    ctx: typer.Context,
    stage: Annotated[choice(TUNABLE_STAGES), typer.Option("--stage", help="Stage to tune.")] = Stage.STAGE3.value,
    backbone: Annotated[BackboneName, typer.Option("--backbone", "-b", help="Backbone to tune.")] = _T.backbone,
    task: Annotated[TaskName, typer.Option("--task", help="binary or multiclass (stage 2 is always binary).")
                    ] = Task.MULTICLASS.value,
    trials: Annotated[int, typer.Option("--trials", "-n", help="Finished (complete or pruned) trials the study "
                      "should have; trials already in the study count.")] = 20,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Stop starting trials after this many "
                       "seconds.", show_default=False)] = None,
    study_name: Annotated[Optional[str], typer.Option("--study-name", help="Default: <stage>-<backbone>-<task>.",
                          show_default=False)] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", envvar="MTL_SUITE_OPTUNA_STORAGE",
                       help="Optuna storage: a journal file path (default optuna-studies.log), sqlite:///file.db, "
                            "or postgresql://user:pass@host/db for several workers. keras-tuner: its project "
                            "folder (default keras-tuner/).", show_default=False)] = None,
    engine: Annotated[choice(ENGINES), typer.Option("--engine", help="optuna, or keras-tuner (Bayesian "
                      "optimisation).")] = "optuna",
    sampler: Annotated[choice(SAMPLERS), typer.Option("--sampler", help="Optuna's sampler (gp needs PyTorch).")
                       ] = "tpe",
    pruner: Annotated[choice(PRUNERS), typer.Option("--pruner", help="Optuna's pruner: median (judged from the first "
                      "epoch at which every trial is fine-tuning), hyperband, or none.")] = "median",
    metric: Annotated[str, typer.Option("--metric", help="CV metric to optimise: f1_macro, accuracy, auc_macro, "
                      "... (direction follows the metric).")] = "f1_macro",
    folds: Annotated[int, typer.Option("--folds", help="CV folds per trial.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampler and of training.")] = 42,
    space: Annotated[Optional[Path], typer.Option("--space", help="Search space YAML. Default: studies/<stage>.yaml.",
                     show_default=False)] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Experiment YAML: the fixed settings "
                      "the space does not search.", show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Smear dataset. Default: the bundled sample.",
                    show_default=False)] = None,
    layout: Layout = _D.layout,
    allow_outside_root: AllowOutsideRoot = _D.allow_outside_root,
    group_by: GroupBy = _D.group_by,
    masks: Annotated[Optional[str], typer.Option("--masks", help="Segmentations of the smears (stage 2 crops).",
                     show_default=False)] = None,
    cells: Annotated[Optional[str], typer.Option("--cells", help="Stage 2: a single-cell dataset.",
                     show_default=False)] = None,
    normal_class: NormalClass = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Default: the backbone's own.",
                          show_default=False)] = _D.image_size,
    cell_size: Annotated[Optional[int], typer.Option("--cell-size", help="Stage 2: single-cell input size. Default: "
                         "64, or the backbone's minimum if larger.", show_default=False)] = _D.cell_size,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Outer test part, never seen while "
                             "tuning.")] = _D.test_fraction,
    data_seed: Annotated[int, typer.Option("--data-seed", help="Split seed.")] = _D.seed,
    weights: Annotated[str, typer.Option("--weights", help="imagenet, none or a file (stage 1 / classical).")] = _T.weights,
    early_stopping_patience: Annotated[int, typer.Option("--early-stopping-patience")] = _T.early_stopping_patience,
    parent_run: Annotated[Optional[str], typer.Option("--parent-run", help="Run of the previous stage.",
                          show_default=False)] = None,
    heartbeat_interval: Annotated[int, typer.Option("--heartbeat-interval", help="RDB storages: seconds between "
                                  "a worker's heartbeats.")] = 10,
    grace_period: Annotated[Optional[int], typer.Option("--grace-period", help="RDB storages: a trial without "
                            "heartbeat for this long is failed. Default: 3 heartbeats.", show_default=False)] = None,
    max_retry: Annotated[int, typer.Option("--max-retry", help="Times a trial whose worker died (killed, lost) is "
                         "redone with its parameters; the limit stops a trial that kills its worker every time.")] = 3,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    system_metrics: SystemMetrics = False,
    quiet: Quiet = False,
) -> None:
    """Tune a stage's hyperparameters: mean CV macro-F1 over --folds, pruning, resumable and shareable studies."""
    cfg = load_config(config, explicit_options(ctx, TUNE_KEYS))  # a bad file or value fails before the heavy imports
    get_backbone_spec(cfg.train.backbone)  # an unknown name fails here, listing the valid ones
    cells = given(cells)
    check_inputs(cfg, cells=cells)
    enable_system_metrics(system_metrics)
    from mtl_suite.workflows.tune import TuneRequest, tune as run_tune

    unwind_on_interrupts()
    with progress.display(quiet):
        outcome = run_tune(TuneRequest(
            stage=stage, config=cfg, task=task, normal_class=normal_class, cells=cells, parent_run=parent_run,
            trials=trials, timeout=timeout, study_name=study_name, storage=storage, engine=engine, sampler=sampler,
            pruner=pruner, metric=metric, folds=folds, seed=seed, space=str(space) if space else None,
            heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry, quiet=quiet),
            say=lambda message: say(message, quiet))
    best = "none" if outcome.best_value is None else f"{outcome.best_value:.4f} (trial {outcome.best_trial})"
    use = (f"train with: mtl-suite {stage} --params-from-study {outcome.study_name}"
           + (f" --storage {outcome.storage}" if storage else "") if engine == "optuna"
           else "best parameters: study/best_params.yaml on that run")
    typer.echo(f"study {outcome.study_name}: MLflow run {outcome.study_run_id}; best {best}; {use}")
