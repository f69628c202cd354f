"""The `mtl-suite` command line. Each command group lives in its own module and is added here."""

from __future__ import annotations

import logging
import os

# TensorFlow's start-up INFO lines (CPU features, no CUDA) say nothing a user can act on; warnings and errors stay.
# Set before any command imports TensorFlow; a value the user exported wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import typer  # noqa: E402

from mtl_suite.cli import analysis, cache, data, registry, train, tune  # noqa: E402
from mtl_suite.cli import augment as augment_cli  # noqa: E402
from mtl_suite.cli import preprocess as preprocess_cli  # noqa: E402
from mtl_suite.cli import segment as segment_cli  # noqa: E402

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
app.add_typer(cache.app, name="cache", help="The on-disk cache (backbone features, cell crops, policies): info, clear.")


def main() -> None:
    # Every fold builds fresh models, so tf.function retraces by design: its "excessive retracing" warnings are noise.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    app()
