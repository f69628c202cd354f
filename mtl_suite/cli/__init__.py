"""The `mtl-suite` command line. Each command group lives in its own module and is added here."""

from __future__ import annotations

import logging
from typing import Annotated

# TensorFlow's start-up lines are kept off the terminal by mtl_suite/output.py (installed when the package is
# imported, before any command can import TensorFlow); --verbose below brings them back.
import typer

from mtl_suite import __version__, output
from mtl_suite.cli import analysis, cache, data, registry, train, tune
from mtl_suite.cli import assess as assess_cli
from mtl_suite.cli import augment as augment_cli
from mtl_suite.cli import evaluate as evaluate_cli
from mtl_suite.cli import preprocess as preprocess_cli
from mtl_suite.cli import recipe as recipe_cli
from mtl_suite.cli import segment as segment_cli
from mtl_suite.cli.common import SuiteGroup

app = typer.Typer(
    name="mtl-suite",
    cls=SuiteGroup,
    help="Multistage transfer learning for ALL classification: MLflow-tracked stages, Optuna tuning, "
         "registry and serving. Results go to the MLflow store given by --tracking-uri, $MLFLOW_TRACKING_URI, "
         "or sqlite:///mlflow.db in the working directory.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"mtl-suite {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", envvar=output.VERBOSE_ENV, help="Show TensorFlow's and "
                                          "MLflow's start-up lines (hidden unless this or TF_CPP_MIN_LOG_LEVEL is "
                                          "set).")] = False,
) -> None:
    """Multistage transfer learning for ALL classification."""
    if verbose:
        output.set_verbose()  # before any command imports TensorFlow


# In the order of the workflow: data and images, the stages, tuning, statistics, then registry and serving.
app.add_typer(data.app, name="data", help="Inspect and split datasets.")
app.command("preprocess")(preprocess_cli.preprocess)
app.add_typer(segment_cli.app, name="segment", help="WBC segmentation: residual U-Net, masks, single-cell crops.")
app.add_typer(augment_cli.app, name="augment", help="Augmentation policies (training data only).")
app.command("train")(recipe_cli.train)  # a recipe end to end: the one command to a served model
train.register(app)
app.command("tune")(tune.tune)
analysis.register(app)  # compare, report
app.command("assess")(assess_cli.assess)  # a recipe's headline figures over fresh outer splits
registry.register(app)  # promote, predict, serve
app.command("evaluate")(evaluate_cli.evaluate)
app.add_typer(cache.app, name="cache", help="The on-disk cache (backbone features, cell crops, policies): info, clear.")


def main() -> None:
    # Every fold builds fresh models, so tf.function retraces by design: its "excessive retracing" warnings are noise.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    app()
