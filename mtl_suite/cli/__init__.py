"""The `mtl-suite` command line. Each command group lives in its own module and is added here."""

from __future__ import annotations

import typer

from mtl_suite.cli import analysis, data, registry, train, tune
from mtl_suite.cli import augment as augment_cli
from mtl_suite.cli import preprocess as preprocess_cli
from mtl_suite.cli import segment as segment_cli

app = typer.Typer(
    name="mtl-suite",
    help="Multistage transfer learning for ALL classification: MLflow-tracked stages, Optuna tuning, "
         "registry and serving. Results go to the MLflow store given by --tracking-uri, $MLFLOW_TRACKING_URI, "
         "or sqlite:///mlflow.db in the working directory.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
# In the order of the workflow: data and images, the stages, tuning, statistics, then registry and serving.
app.add_typer(data.app, name="data", help="Inspect and split datasets.")
app.command("preprocess")(preprocess_cli.preprocess)
app.add_typer(segment_cli.app, name="segment", help="WBC segmentation: residual U-Net, masks, single-cell crops.")
app.add_typer(augment_cli.app, name="augment", help="Augmentation policies (training data only).")
train.register(app)
app.command("tune")(tune.tune)
analysis.register(app)  # compare, report
registry.register(app)  # promote, predict, serve


def main() -> None:
    app()
