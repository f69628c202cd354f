"""`mtl-suite train RECIPE`: a recipe file (experiments/*.yaml) run end to end to a registered champion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mtl_suite import progress
from mtl_suite.cli.common import (
    AllowOutsideRoot, Experiment, ExternalClassOption, ExternalOption, HeartbeatInterval, Layout, NormalClass, Quiet,
    SetOption, TrackingUri, UnitGracePeriod, UnitMaxRetry, UnitStorage, check_inputs, config_keys,
    explicit_options, external_check, handle_user_errors, say, unit_sharing,
)
from mtl_suite.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME
from mtl_suite.errors import UserError
from mtl_suite.interrupts import unwind_on_interrupts
from mtl_suite.models.backbones import get_backbone_spec
from mtl_suite.recipes import load_recipe, parse_settings

# the options of `train` that override one setting of every member (the rest: --set)
TRAIN_CONFIG_KEYS = config_keys("data", "layout", "allow_outside_root", "masks", "weights", "tracking_uri",
                                "experiment")


@handle_user_errors
def train(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="Recipe file: an experiment YAML with a `recipe:` section (the "
                                           "shipped ones are in experiments/).", show_default=False)],
    data: Annotated[Optional[str], typer.Option("--data", help="Your smear dataset (folder per class, ALL-IDB, CSV). "
                    "Default: the recipe's data.path, else the bundled sample.", show_default=False)] = None,
    layout: Layout = "auto",
    allow_outside_root: AllowOutsideRoot = False,
    masks: Annotated[Optional[str], typer.Option("--masks", help="Segmentations of the smears for stage 2's "
                     "single-cell crops (same relative names). Default: the recipe's, else the suite's own "
                     "segmentation.", show_default=False)] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="ImageNet weights file for the backbone "
                       "(for machines that cannot download them). Default: the recipe's.", show_default=False)
                       ] = None,
    settings: SetOption = None,
    name: Annotated[str, typer.Option("--name", help="Registered model name.")] = DEFAULT_MODEL_NAME,
    force: Annotated[bool, typer.Option("--force", help="Make the result the champion even if the current champion "
                                        "scores better.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Train every member again. Default: a rerun of the same "
                                        "recipe reuses each member whose run finished (same settings, data and "
                                        "split) and resumes an interrupted one.")] = False,
    normal_class: NormalClass = None,
    external: ExternalOption = None,
    external_class: ExternalClassOption = None,
    storage: UnitStorage = None,
    heartbeat_interval: HeartbeatInterval = 10,
    grace_period: UnitGracePeriod = None,
    max_retry: UnitMaxRetry = 3,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    quiet: Quiet = False,
) -> None:
    """Run a recipe end to end: its stages (stages 1-2 first where it ends in stage 3), its ensemble members and
    their ensemble, then promote the result to champion; prints the model version and how to serve it. Rerun to
    resume; run the same command with the same --storage on several machines to train the members side by side."""
    sharing = unit_sharing(storage, heartbeat_interval, grace_period, max_retry)
    if sharing.storage and fresh:
        raise UserError("--fresh trains every member again, while --storage shares units an earlier command may have "
                        "finished: give one of them (for a fresh start under --storage, a new storage)")
    overrides = {**explicit_options(ctx, TRAIN_CONFIG_KEYS), **parse_settings(settings or [])}
    loaded = load_recipe(recipe, overrides)  # a bad file, member or value fails here, before the heavy imports
    for member in loaded.members:
        get_backbone_spec(member.train.backbone)
        check_inputs(member)
    checked_external = external_check(external, external_class)
    from mtl_suite.workflows.recipe import TrainRequest, train_recipe  # heavy imports only when training

    unwind_on_interrupts()
    request = TrainRequest(loaded, name, normal_class, checked_external, force, quiet, fresh, sharing)
    with progress.display(quiet):
        outcome = train_recipe(request, say=lambda message: say(message, quiet))
    # stdout: the registered version (or, when the champion stayed, the final run), for scripts
    typer.echo(outcome.model_uri or outcome.final_run)
