"""The `mtl-suite` command line. Each command group lives in its own module and is added here."""

from __future__ import annotations

import typer

from mtl_suite.cli import data

app = typer.Typer(
    name="mtl-suite",
    help="Multistage transfer learning for ALL classification: MLflow-tracked stages, Optuna tuning, "
         "registry and serving. Results go to the MLflow store given by --tracking-uri, $MLFLOW_TRACKING_URI, "
         "or sqlite:///mlflow.db in the working directory.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(data.app, name="data", help="Inspect and split datasets.")


def main() -> None:
    app()
