"""Pieces every command shares: user-error handling, common options, progress output."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from mtl_suite.config import DEFAULT_EXPERIMENT
from mtl_suite.errors import UserError


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


def explicit_options(ctx: typer.Context, mapping: dict[str, str]) -> dict[str, Any]:
    """Config overrides from the options the user actually typed (not their defaults), so an experiment file's
    values win over option defaults but lose to options given on the command line."""
    # Compared by name: typer 0.29 vendors click (typer._click), whose ParameterSource is not click.core's.
    out = {}
    for param, key in mapping.items():
        source = ctx.get_parameter_source(param)
        if source is not None and source.name != "DEFAULT":
            value = ctx.params[param]
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


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
DEFAULT_EXPERIMENT_NAME = DEFAULT_EXPERIMENT
