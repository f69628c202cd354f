"""Pieces every command shares: user-error handling, common options and their config keys, overrides from an
Optuna study, SIGTERM handling, progress output. Command modules import from here, never from each other."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from mtl_suite.errors import UserError
from mtl_suite.models.backbones import BACKBONES  # keras-free: the registry's names, for --backbone's help

# Option name -> config key, for every option that overrides a key of the --config file. Each command takes the
# subset it has with config_keys(); only options the user typed override the file (explicit_options).
CONFIG_KEYS = {
    "data": "data.path", "layout": "data.layout", "masks": "data.masks", "image_size": "data.image_size",
    "cell_size": "data.cell_size", "allow_outside_root": "data.allow_outside_root",
    "folds": "data.folds", "test_fraction": "data.test_fraction", "data_seed": "data.seed",
    "backbone": "train.backbone", "weights": "train.weights", "epochs": "train.warmup_epochs",
    "finetune_epochs": "train.finetune_epochs", "unfreeze_layers": "train.unfreeze_layers",
    "batch_size": "train.batch_size", "learning_rate": "train.learning_rate",
    "finetune_learning_rate": "train.finetune_learning_rate", "decay_rate": "train.decay_rate",
    "dense_units": "train.dense_units", "dropout": "train.dropout",
    "early_stopping_patience": "train.early_stopping_patience", "augment": "train.augment", "seed": "train.seed",
    "feature_cache": "train.feature_cache", "precision": "train.precision", "jit_compile": "train.jit_compile",
    "execution": "train.execution",
    "tracking_uri": "tracking.tracking_uri", "experiment": "tracking.experiment",
}


def config_keys(*options: str) -> dict[str, str]:
    """The part of CONFIG_KEYS a command has (an unknown option name is a KeyError at import)."""
    return {option: CONFIG_KEYS[option] for option in options}


def backbone_help(lead: str = "") -> str:
    """--backbone's help: the registry's names, so a new backbone shows up without touching the CLI."""
    return f"{lead}{', '.join(BACKBONES)}."


def handle_user_errors(command: Callable) -> Callable:
    """A user's mistake ends as one line on stderr and exit code 2; a bug keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def typed(ctx: typer.Context, param: str) -> bool:
    """Whether the user gave the option (command line or environment), not left it at its default."""
    # Compared by name: typer 0.29 vendors click (typer._click), whose ParameterSource is not click.core's.
    source = ctx.get_parameter_source(param)
    return source is not None and source.name != "DEFAULT"


def explicit_options(ctx: typer.Context, mapping: dict[str, str]) -> dict[str, Any]:
    """Config overrides from the options the user actually typed (not their defaults), so an experiment file's
    values win over option defaults but lose to options given on the command line."""
    out = {}
    for param, key in mapping.items():
        if typed(ctx, param):
            value = ctx.params[param]
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def parse_units(text: str) -> list[int]:
    """--dense-units "256,64" -> [256, 64]."""
    try:
        units = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--dense-units: expected integers separated by commas, e.g. 256,64. Received: {text!r}") from None
    return units


def study_overrides(ctx: typer.Context, stage: str, name: str, storage: str | None, overrides: dict[str, Any],
                    task: str) -> tuple[dict[str, Any], str, tuple[tuple[str, str], ...]]:
    """For --params-from-study: the study's best parameters under the options the user typed (typed options win).
    Returns (overrides, task, tags naming the study and trial)."""
    from mtl_suite.catalog import get_stage
    from mtl_suite.workflows.tune import study_choice  # optuna: only when a study is asked for

    choice = study_choice(name, storage, stage)
    if typed(ctx, "task") and task != choice.task and get_stage(stage).fixed_task is None:
        raise UserError(f"--params-from-study {name}: the study tuned the {choice.task} task; this run asks for "
                        f"--task {task}")
    typed_backbone = overrides.get("train.backbone")
    if typed_backbone and typed_backbone != choice.overrides["train.backbone"]:
        raise UserError(f"--params-from-study {name}: the study tuned backbone {choice.overrides['train.backbone']}; "
                        f"this run asks for --backbone {typed_backbone}")
    return {**choice.overrides, **overrides}, choice.task, choice.tags


def mark_runs_killed_on_sigterm() -> None:
    """`kill` (SIGTERM) unwinds like Ctrl-C, so open MLflow runs are closed as KILLED/FAILED, not left RUNNING."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        typer.echo(message, err=True)


def progress_printer(total: int, label: str, quiet: bool) -> Callable[[int], None] | None:
    """A one-line counter on stderr (no dependence on a terminal, so logs from CI stay readable)."""
    if quiet or total == 0:
        return None
    step = max(1, total // 20)

    def report(done: int) -> None:
        if done % step == 0 or done == total:
            end = "\n" if done == total else "\r"
            sys.stderr.write(f"{label}: {done}/{total}{end}")
            sys.stderr.flush()

    return report


DataPath = Annotated[
    Optional[Path],
    typer.Argument(help="Dataset root (folder per class, ALL-IDB, C-NMC) or CSV manifest. Default: bundled sample.",
                   show_default=False),
]
Layout = Annotated[str, typer.Option("--layout", help="auto, folder, allidb, cnmc or csv.")]
AllowOutsideRoot = Annotated[bool, typer.Option("--allow-outside-root", help="Let a CSV manifest list files "
                                                "outside its own folder (refused by default).")]
TrackingUri = Annotated[
    Optional[str],
    typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                 help="MLflow tracking store. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
                      "working directory.", show_default=False),
]
Experiment = Annotated[str, typer.Option("--experiment", help="MLflow experiment name.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
