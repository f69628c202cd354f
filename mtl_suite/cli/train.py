"""`mtl-suite stage1|stage2|stage3|classical`: one MLflow run per stage, nested runs per CV fold.

The stage commands (one per entry of catalog.STAGES) share one option set; each option overrides the same key of
the --config file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mtl_suite import progress
from mtl_suite.catalog import STAGES, StageData, StagePlan, Task, chain
from mtl_suite.cli.common import (
    CONFIG_KEYS, AllowOutsideRoot, BackboneName, ColourFusion, Ensemble, ExecutionName, Experiment, ExternalClassOption,
    ExternalOption, GroupBy, Layout, NormalClass, Precision, Quiet, SetOption, Stain, SystemMetrics, TaskOption,
    TrackingUri, Tta, check_inputs, enable_system_metrics, explicit_options, external_check, given, handle_user_errors,
    parse_units, say, choice, study_overrides, typed,
)
from mtl_suite.config import (ACTIVATION_DTYPES, AUGMENT_MODES, DEFAULT_EXPERIMENT, DataConfig, TrainConfig,
                              load_config)
from mtl_suite.errors import UserError
from mtl_suite.interrupts import unwind_on_interrupts
from mtl_suite.models.backbones import get_backbone_spec
from mtl_suite.recipes import check_single_model_file, parse_settings

_D, _T = DataConfig(), TrainConfig()


def stage_command(plan: StagePlan):
    stage = plan.name

    def command(
        ctx: typer.Context,
        config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Experiment YAML; options override it.",
                                                       show_default=False)] = None,
        data: Annotated[Optional[str], typer.Option("--data", help="Smear dataset (folder per class, ALL-IDB, "
                        "CSV). Default: the bundled sample.", show_default=False)] = None,
        layout: Layout = _D.layout,
        allow_outside_root: AllowOutsideRoot = _D.allow_outside_root,
        group_by: GroupBy = _D.group_by,
        masks: Annotated[Optional[str], typer.Option("--masks", help="Segmentations of the smears (same relative "
                         "names; 'segmented on black' or binary) used to crop single cells for stage 2. Default "
                         "with the bundled sample: its segmented/ folder.", show_default=False)] = None,
        cells: Annotated[Optional[str], typer.Option("--cells", help="Stage 2: a single-cell dataset (ALL-IDB2, "
                         "C-NMC, folder, CSV) instead of crops of the smears.", show_default=False)] = None,
        source: Annotated[Optional[str], typer.Option("--source", help="Stage 1: a source dataset to fine-tune the "
                          "ImageNet backbone on.", show_default=False)] = None,
        backbone: Annotated[BackboneName, typer.Option("--backbone", "-b", help="Backbone network.")] = _T.backbone,
        task: TaskOption = Task.MULTICLASS.value,
        normal_class: NormalClass = None,
        image_size: Annotated[Optional[int], typer.Option("--image-size", help="Input size in pixels. Default: "
                              "the backbone's own (299 for the paper's, 224 for MobileNet).",
                              show_default=False)] = _D.image_size,
        cell_size: Annotated[Optional[int], typer.Option("--cell-size", help="Stage 2: single-cell input size. "
                             "Default: 64, or the backbone's minimum if larger.", show_default=False)] = _D.cell_size,
        stain: Stain = _T.stain,
        folds: Annotated[int, typer.Option("--folds", help="CV folds (paper: 10); 1 = one train/validation split.")] = _D.folds,
        test_fraction: Annotated[float, typer.Option("--test-fraction", help="Outer held-out test part.")] = _D.test_fraction,
        epochs: Annotated[int, typer.Option("--epochs", help="Head warm-up epochs, backbone frozen (paper: 160 "
                          "in total).")] = _T.warmup_epochs,
        finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Epochs with the top layers "
                                   "unfrozen.")] = _T.finetune_epochs,
        unfreeze_layers: Annotated[int, typer.Option("--unfreeze-layers", help="Top backbone layers to fine-tune.")] = _T.unfreeze_layers,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Paper: 48.")] = _T.batch_size,
        learning_rate: Annotated[float, typer.Option("--learning-rate", help="Adam, paper: 1e-3.")] = _T.learning_rate,
        finetune_learning_rate: Annotated[float, typer.Option("--finetune-learning-rate")] = _T.finetune_learning_rate,
        decay_rate: Annotated[float, typer.Option("--decay-rate", help="Exponential decay per epoch.")] = _T.decay_rate,
        dense_units: Annotated[str, typer.Option("--dense-units", help="Head dense layers, e.g. 256,64.")] = "128",
        dropout: Annotated[float, typer.Option("--dropout")] = _T.dropout,
        early_stopping_patience: Annotated[int, typer.Option("--early-stopping-patience", help="0 disables.")] = _T.early_stopping_patience,
        augment: Annotated[str, typer.Option("--augment", help="Augmentation policy for training batches.")] = _T.augment,
        weights: Annotated[str, typer.Option("--weights", help="imagenet, none, or a weights file.")] = _T.weights,
        seed: Annotated[int, typer.Option("--seed", help="Training seed (weights init, shuffling).")] = _T.seed,
        feature_cache: Annotated[bool, typer.Option("--feature-cache/--no-feature-cache", help="Warm-up without "
                                 "augmentation: compute backbone features once (cached on disk under "
                                 "$MTL_SUITE_CACHE) and train the head on them; same results, less time.")] = _T.feature_cache,
        precision: Precision = _T.precision,
        jit_compile: Annotated[bool, typer.Option("--jit-compile/--no-jit-compile", help="XLA-compile training "
                               "steps (worth it on a GPU; off by default).")] = _T.jit_compile,
        execution: Annotated[ExecutionName, typer.Option("--execution", help="auto: a short training phase (at most 16 "
                             "steps of the head on cached features, 8 through the backbone) runs eagerly, since "
                             "tracing it would cost more, a longer one as a traced graph; or graph; or eager.")
                             ] = _T.execution,
        activation_cut: Annotated[str, typer.Option("--activation-cut", help="Fine-tuning without online "
                                  "augmentation: cache the activations entering the trainable top and train the "
                                  "top alone. auto: the highest cut below the lowest trainable layer where one "
                                  "tensor flows; none: through the whole network; or a layer name.")
                                  ] = _T.activation_cut,
        activation_dtype: Annotated[choice(ACTIVATION_DTYPES), typer.Option("--activation-dtype", help="Storage of cached activations: "
                                    "float32, or float16 (half the memory and disk).")] = _T.activation_dtype,
        augment_mode: Annotated[choice(AUGMENT_MODES), typer.Option("--augment-mode", help="online: augment every training batch "
                                "afresh; offline (the paper's): a fixed augmented, class-balanced copy of each "
                                "training fold, made once, so the caches still apply.")] = _T.augment_mode,
        offline_per_class: Annotated[int, typer.Option("--offline-per-class", help="Offline augmentation: images "
                                     "per class after balancing (0: as many as the largest class).")
                                     ] = _T.offline_per_class,
        ensemble: Ensemble = _T.ensemble,
        tta: Tta = _T.tta,
        colour_fusion: ColourFusion = _T.colour_fusion,
        data_seed: Annotated[int, typer.Option("--data-seed", help="Split seed.")] = _D.seed,
        parent_run: Annotated[Optional[str], typer.Option("--parent-run", help="Run id of the previous stage. "
                              "Default: its newest finished run with this backbone.", show_default=False)] = None,
        resume: Annotated[str, typer.Option("--resume", help="auto: continue the newest interrupted run made with "
                          "the same settings (finished folds reused, an unfinished fold from its last epoch); never: "
                          "always start a new run; or the id of the run to continue.")] = "auto",
        params_from_study: Annotated[Optional[str], typer.Option("--params-from-study", help="Train with the best "
                                     "trial of this Optuna study (`mtl-suite tune`); typed options still win.",
                                     show_default=False)] = None,
        storage: Annotated[Optional[str], typer.Option("--storage", envvar="MTL_SUITE_OPTUNA_STORAGE", help="Optuna "
                           "storage of --params-from-study. Default: optuna-studies.log.", show_default=False)] = None,
        settings: SetOption = None,
        external: ExternalOption = None,
        external_class: ExternalClassOption = None,
        tracking_uri: TrackingUri = None,
        experiment: Experiment = DEFAULT_EXPERIMENT,
        system_metrics: SystemMetrics = False,
        quiet: Quiet = False,
    ) -> None:
        refuse_idle_options(ctx, plan)
        cells, source, parent_run, params_from_study = map(given, (cells, source, parent_run, params_from_study))
        external_check = final_stage_external(plan, external, external_class)
        overrides = explicit_options(ctx, CONFIG_KEYS)
        if "train.dense_units" in overrides:
            overrides["train.dense_units"] = parse_units(dense_units)
        overrides.update(parse_settings(settings or []))
        study_tags: tuple[tuple[str, str], ...] = ()
        if params_from_study:
            overrides, task, study_tags = study_overrides(ctx, stage, params_from_study, storage, overrides, task)
        if config is not None:
            check_single_model_file(config, stage)
        cfg = load_config(config, overrides)  # a bad file or value fails here, before the heavy imports
        get_backbone_spec(cfg.train.backbone)  # an unknown name fails here too, listing the valid ones
        check_inputs(cfg, cells=cells, source=source)  # paths, weights file, augmentation policy: before any run
        enable_system_metrics(system_metrics)
        from mtl_suite.workflows.stage import StageRequest, run_stage  # heavy imports only when training

        unwind_on_interrupts()
        with progress.display(quiet) as display, display.level("stages", 1):  # grows by the missing stages run first
            outcome = run_stage(StageRequest(stage=stage, config=cfg, task=task, normal_class=normal_class,
                                             cells=cells, source=source, parent_run=parent_run, quiet=quiet,
                                             extra_tags=study_tags, resume=resume, external=external_check),
                                say=lambda message: say(message, quiet))
        # Always said, even with --quiet: where the results went.
        typer.echo(f"{stage} run {outcome.run_id} (experiment {outcome.experiment_id}) in {outcome.tracking_uri}"
                   f"{outcome.looks_text()}")

    command.__doc__ = plan.help
    return handle_user_errors(command)


def register(app: typer.Typer) -> None:
    for plan in STAGES.values():
        app.command(name=plan.name, help=plan.help)(stage_command(plan))


def idle_options(plan: StagePlan) -> dict[str, str]:
    """Options of the shared stage signature that do nothing on this stage (option name -> why), from the catalog:
    what the stage and the stages it runs first train on, and whether its model is the one served."""
    stages = chain(plan.stage)
    trains_on = {p.data for p in stages}
    idle: dict[str, str] = {}
    if plan.starts_another:
        why = "it shapes the served model, which the final stage (stage3, classical) makes"
        idle.update(dict.fromkeys(("ensemble", "tta", "colour_fusion"), why))
    if plan.previous is None:
        idle["parent_run"] = "this stage starts from ImageNet weights, not from another stage's run"
    if plan.data is not StageData.SMEARS:
        idle["task"] = "only the stages that train on smears (stage3, classical) take a task"
    if StageData.CELLS not in trains_on:
        idle.update(dict.fromkeys(("cells", "masks"), "no stage it runs trains on single cells"))
    if StageData.SOURCE not in trains_on:
        idle["source"] = "it starts from ImageNet weights directly (stage 1 is not part of it)"
    return idle


def refuse_idle_options(ctx: typer.Context, plan: StagePlan) -> None:
    """An option given where it does nothing is refused with one line, never silently ignored. An empty value counts
    as not given (MLproject passes every parameter)."""
    for name, why in idle_options(plan).items():
        if typed(ctx, name) and ctx.params[name] not in ("", None):
            option = "--" + name.replace("_", "-")
            raise UserError(f"{option} has no effect on {plan.name}: {why}")


def final_stage_external(plan: StagePlan, path: str | None, expected: str | None):
    """--external is for the served model: the final stage's (stage 3 or classical) only."""
    if plan.starts_another and (given(path) or given(expected)):
        raise UserError(f"--external scores the served model: give it to a final stage (stage3, classical), not "
                        f"{plan.name}")
    return external_check(path, expected)
