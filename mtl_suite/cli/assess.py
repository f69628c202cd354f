"""`mtl-suite assess RECIPE`: a recipe file trained from nothing on N fresh outer splits, and its headline figures
(accuracy over splits, normal vs leukemia, calibration, colour alone beside each) in one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mtl_suite import progress
from mtl_suite.cli.common import (
    Experiment, HeartbeatInterval, NormalClass, Quiet, SetOption, TrackingUri, UnitGracePeriod, UnitMaxRetry,
    UnitStorage, check_inputs, command_line, config_keys, explicit_options, given,
    handle_user_errors, say, unit_sharing,
)
from mtl_suite.config import DEFAULT_EXPERIMENT
from mtl_suite.errors import UserError
from mtl_suite.interrupts import unwind_on_interrupts
from mtl_suite.models.backbones import get_backbone_spec
from mtl_suite.recipes import load_recipe, parse_settings

ASSESS_CONFIG_KEYS = config_keys("data", "group_by", "tracking_uri", "experiment")
# Away from the data seeds earlier work scored (42 and 43 for the shipped recipes, compare's pairs from 42 up), so
# the assessment's test parts are fresh; the report's "earlier looks" column says whether they were.
FIRST_SEED = 1000
MIN_SPLITS, HEADLINE_SPLITS = 2, 5  # analysis/assessment.py's; kept here so --help needs no pandas or scipy


@handle_user_errors
def assess(
    ctx: typer.Context,
    recipe: Annotated[Path, typer.Argument(help="Recipe file: an experiment YAML with a `recipe:` section, fixed "
                                           "before the assessment runs (copied beside the report with its sha256).",
                                           show_default=False)],
    data: Annotated[Optional[str], typer.Option("--data", help="Smear dataset. Default: the recipe's data.path, "
                    "else the bundled sample.", show_default=False)] = None,
    splits: Annotated[int, typer.Option("--splits", "-n", help=f"Outer splits, each trained from nothing; at least "
                      f"{MIN_SPLITS} (the headline protocol uses at least {HEADLINE_SPLITS}).")] = HEADLINE_SPLITS,
    first_seed: Annotated[int, typer.Option("--first-seed", help="Data seed of the first split; split i uses "
                          f"it + i. The default {FIRST_SEED} keeps clear of the seeds earlier work scored (42 and 43, "
                          "and compare's 42 + i), so the test parts are fresh.")] = FIRST_SEED,
    group_by: Annotated[Optional[str], typer.Option("--group-by", help="Groups from file names kept on one side of "
                        "every split: none, blocks:N or regex:PATTERN (as the stage commands' --group-by). "
                        "Default: the recipe's data.group_by.", show_default=False)] = None,
    settings: SetOption = None,
    normal_class: NormalClass = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Folder of the report, its JSON, the per-image "
                   "predictions and the recipe's copy. Default: reports/assess-<recipe>-<date>.",
                   show_default=False)] = None,
    storage: UnitStorage = None,
    heartbeat_interval: HeartbeatInterval = 10,
    grace_period: UnitGracePeriod = None,
    max_retry: UnitMaxRetry = 3,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    quiet: Quiet = False,
) -> None:
    """Headline figures from a protocol fixed beforehand: the recipe trained from nothing on N fresh outer splits
    (nothing registered), then mean, sd and 95% interval of test accuracy, normal-vs-leukemia sensitivity and
    specificity with Wilson intervals and calibration (ECE, Brier), colour alone beside each. Rerun to resume; run
    the same command with the same --storage on several machines to share the work."""
    if splits < MIN_SPLITS:
        raise UserError(f"--splits must be at least {MIN_SPLITS}: a t-interval needs two or more splits (the headline "
                        f"protocol uses at least {HEADLINE_SPLITS}). Received: {splits}")
    sharing = unit_sharing(storage, heartbeat_interval, grace_period, max_retry)
    overrides = {**explicit_options(ctx, ASSESS_CONFIG_KEYS), **parse_settings(settings or [])}
    if "data.seed" in overrides:
        raise UserError("data.seed is each split's own (--first-seed + i); set --first-seed instead of "
                        f"--set data.seed={overrides['data.seed']}")
    loaded = load_recipe(recipe, overrides)  # a bad file, member or value fails here, before the heavy imports
    for member in loaded.members:
        get_backbone_spec(member.train.backbone)
        check_inputs(member)
    from mtl_suite.workflows.assess import AssessRequest, assess_recipe, default_out  # heavy imports

    unwind_on_interrupts()
    seeds = tuple(range(first_seed, first_seed + splits))
    with progress.display(quiet):
        outcome = assess_recipe(AssessRequest(loaded, seeds, Path(out) if given(out) else default_out(loaded),
                                              command_line(ctx), given(normal_class), quiet, sharing),
                                say=lambda message: say(message, quiet))
    typer.echo(str(outcome.report))  # stdout: the report, for scripts
