"""`mtl-suite compare` (classical vs multistage over paired runs, with statistics) and `mtl-suite report`
(the paper's tables and figures from what is in MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mtl_suite import progress
from mtl_suite.catalog import Stage, Task
from mtl_suite.cli.common import (
    AllowOutsideRoot, BackboneName, ColourFusion, Ensemble, Experiment, GroupBy, HeartbeatInterval, NormalClass,
    Quiet, SystemMetrics, TaskOption, TrackingUri, Tta, UnitGracePeriod, UnitMaxRetry, check_inputs,
    command_line, config_keys, enable_system_metrics, explicit_options, given, handle_user_errors, say,
    study_overrides, unit_sharing,
)
from mtl_suite.config import DEFAULT_EXPERIMENT, DataConfig, TrainConfig, load_config
from mtl_suite.errors import UserError
from mtl_suite.interrupts import unwind_on_interrupts
from mtl_suite.models.backbones import get_backbone_spec

_D, _T = DataConfig(), TrainConfig()

COMPARE_OPTION_KEYS = config_keys(
    "data", "allow_outside_root", "group_by", "masks", "image_size", "cell_size", "folds", "test_fraction", "data_seed",
    "backbone", "weights", "epochs", "finetune_epochs", "batch_size", "learning_rate", "augment", "seed",
    "ensemble", "tta", "colour_fusion", "tracking_uri", "experiment",
)


@handle_user_errors
def compare(
    ctx: typer.Context,
    backbone: Annotated[BackboneName, typer.Option("--backbone", "-b", help="Backbone of both arms.")] = _T.backbone,
    task: TaskOption = Task.MULTICLASS.value,
    runs: Annotated[int, typer.Option("--runs", "-n", help="Paired runs per arm (paper: 10); at least 2.")] = 10,
    folds: Annotated[int, typer.Option("--folds", help="CV folds inside every run.")] = _D.folds,
    params_from_study: Annotated[Optional[str], typer.Option("--params-from-study", help="Train both arms with the "
                                 "best trial of this stage-3 Optuna study (`mtl-suite tune`).", show_default=False)] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", envvar="MTL_SUITE_OPTUNA_STORAGE", help="Optuna "
                       "storage: where --params-from-study's study is, and where the comparison's units are shared "
                       "by every worker running this same command (postgresql://user:pass@host/db across machines, "
                       "a journal file on one). Default: no sharing (this process runs every unit); "
                       "--params-from-study reads optuna-studies.log.", show_default=False)] = None,
    heartbeat_interval: HeartbeatInterval = 10,
    grace_period: UnitGracePeriod = None,
    max_retry: UnitMaxRetry = 3,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Experiment YAML; options override it.",
                                                   show_default=False)] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="Smear dataset. Default: the bundled sample.",
                                                show_default=False)] = None,
    allow_outside_root: AllowOutsideRoot = _D.allow_outside_root,
    group_by: GroupBy = _D.group_by,
    masks: Annotated[Optional[str], typer.Option("--masks", help="Segmentations of the smears for stage 2's "
                                                 "cell crops.", show_default=False)] = None,
    cells: Annotated[Optional[str], typer.Option("--cells", help="Stage 2: a single-cell dataset instead of crops.",
                                                 show_default=False)] = None,
    normal_class: NormalClass = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", help="Default: the backbone's own.",
                          show_default=False)] = _D.image_size,
    cell_size: Annotated[Optional[int], typer.Option("--cell-size", help="Stage 2 of the MTL arm: single-cell "
                         "input size. Default: 64, or the backbone's minimum if larger.", show_default=False)
                         ] = _D.cell_size,
    test_fraction: Annotated[float, typer.Option("--test-fraction")] = _D.test_fraction,
    epochs: Annotated[int, typer.Option("--epochs", help="Head warm-up epochs (each stage, each arm).")] = _T.warmup_epochs,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs")] = _T.finetune_epochs,
    batch_size: Annotated[int, typer.Option("--batch-size")] = _T.batch_size,
    learning_rate: Annotated[float, typer.Option("--learning-rate")] = _T.learning_rate,
    augment: Annotated[str, typer.Option("--augment")] = _T.augment,
    weights: Annotated[str, typer.Option("--weights", help="imagenet, none, or a weights file.")] = _T.weights,
    seed: Annotated[int, typer.Option("--seed", help="Base training seed; pair i uses seed + i.")] = _T.seed,
    ensemble: Ensemble = _T.ensemble,
    tta: Tta = _T.tta,
    colour_fusion: ColourFusion = _T.colour_fusion,
    data_seed: Annotated[int, typer.Option("--data-seed", help="Base split seed; pair i uses it + i.")] = _D.seed,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where compare-<backbone>-<task>-<date>.md "
                                             "and its plot go.")] = Path("reports"),
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    system_metrics: SystemMetrics = False,
    quiet: Quiet = False,
) -> None:
    """Classical TL vs multistage TL: N paired runs each (same seed and split per pair), then paired, Welch and
    Nadeau-Bengio corrected t-tests, a Table V, a plot and a report under reports/. Rerun to resume; run the same
    command with the same --storage on several machines to share the work."""
    if runs < 2:
        raise UserError(f"--runs must be at least 2: a t-test needs two or more paired runs. Received: {runs}")
    sharing = unit_sharing(storage, heartbeat_interval, grace_period, max_retry)
    overrides = explicit_options(ctx, COMPARE_OPTION_KEYS)
    if params_from_study:  # a stage-3 study's best trial; both arms train with it (typed options still win)
        overrides, task, _ = study_overrides(ctx, Stage.STAGE3.value, params_from_study, storage, overrides, task)
    cfg = load_config(config, overrides)
    get_backbone_spec(cfg.train.backbone)  # an unknown name fails here, listing the valid ones
    cells = given(cells)
    check_inputs(cfg, cells=cells)
    enable_system_metrics(system_metrics)
    from mtl_suite.catalog import CompareRequest
    from mtl_suite.workflows.compare import run_comparison

    unwind_on_interrupts()
    command = command_line(ctx)
    with progress.display(quiet):
        run_comparison(CompareRequest(config=cfg, task=task, runs=runs, normal_class=normal_class, cells=cells,
                                      report_dir=out, command=command, study=params_from_study,
                                      quiet=quiet, config_file=config, sharing=sharing),
                       say=lambda message: say(message, quiet))


@handle_user_errors
def report(
    experiment: Experiment = DEFAULT_EXPERIMENT,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. Default: reports/<experiment>-<date>.",
                                                show_default=False)] = None,
    gradcam_per_class: Annotated[int, typer.Option("--gradcam-per-class", help="Correct and wrong test images "
                                                   "per class with Grad-CAM overlays (0: none).")] = 2,
    comparison: Annotated[Optional[list[str]], typer.Option(
        "--comparison", help="Only the stage runs of this `mtl-suite compare` run (its id; repeat for several). "
        "Default: every finished stage run of the experiment.", show_default=False)] = None,
    tracking_uri: TrackingUri = None,
    quiet: Quiet = False,
) -> None:
    """The paper's tables and figures (Tables II-IV, Figs. 9-11) plus calibration, a colour-histogram shortcut check
    and Grad-CAM overlays, built from the runs in MLflow: report.md and a self-contained report.html."""
    from mtl_suite.workflows.report import build_report

    paths = build_report(experiment, tracking_uri, out, gradcam_per_class=gradcam_per_class,
                         comparisons=tuple(comparison or ()), say=lambda message: say(message, quiet))
    typer.echo(f"{paths[0]}\n{paths[1]}")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
    app.command("report")(report)
