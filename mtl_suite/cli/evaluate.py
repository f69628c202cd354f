"""`mtl-suite evaluate MODEL DATA`: a registered or logged model's stage metrics on any labelled dataset, as an
MLflow evaluation run linked to the model (workflows/evaluate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mtl_suite.cli.common import (OUTPUT, AllowOutsideRoot, DataPath, Experiment, Layout, PredictBatch, Quiet,
                                  TrackingUri, choice, given, handle_user_errors, progress_printer, say)
from mtl_suite.config import DEFAULT_EXPERIMENT
from mtl_suite.data.manifest import BAD_IMAGE_POLICIES
from mtl_suite.training.conformal import DEFAULT_COVERAGE


@handle_user_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="Model URI: models:/<name>/<version>, models:/<name>@<alias>, "
                                         "models:/m-<id> (a logged model), runs:/<run id>/<path> or a local "
                                         "folder.", show_default=False)],
    data: DataPath = None,
    layout: Layout = "auto",
    allow_outside_root: AllowOutsideRoot = False,
    on_bad_image: Annotated[choice(BAD_IMAGE_POLICIES), typer.Option(
        "--on-bad-image", help="fail: stop at an unusable image; skip: leave it out (listed in the run).")] = "fail",
    normal_class: Annotated[Optional[str], typer.Option(
        "--normal-class", help="For a binary model (normal vs leukemia/blast): the data's class scored as normal; "
        "every other class is scored as the positive class. Default: the data's labels must be the model's "
        "classes.", show_default=False)] = None,
    expect: Annotated[Optional[str], typer.Option(
        "--expect", help="Every image under DATA (in any folders) is of this class, e.g. another lab's normal "
        "smears: report the share called it, flagged as unlike the training images, and called otherwise without a "
        "flag. A class of the model (for a binary model, with --normal-class NAME, the data's NAME).",
        show_default=False)] = None,
    coverage: Annotated[float, typer.Option("--coverage", help="Coverage of the prediction sets.")
                        ] = DEFAULT_COVERAGE,
    batch_size: PredictBatch = 32,
    again: Annotated[bool, typer.Option(
        "--again", help="DATA holds images of a sealed set (`mtl-suite data seal`) that another configuration has "
        "scored: score it with this one too, recorded as a further look. One configuration is the run that made the "
        "model, however it is named (a registered version, its logged model, runs:/): scoring it again needs no "
        "--again and is no new configuration.")] = False,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Also write the metrics, confusion matrix and per-class report to this JSON file.",
        show_default=False, rich_help_panel=OUTPUT)] = None,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    quiet: Quiet = False,
) -> None:
    """Score a model on a labelled dataset (e.g. an external test set): accuracy with n, 95% CI and majority
    class, precision/recall/F1, AUC, confusion matrix, the share flagged as unlike the training images and the
    prediction sets' coverage, logged as an evaluation run linked to the model. With --expect CLASS, a folder of
    one class's images (another lab's normal smears): the share called CLASS, flagged, and wrong without a flag.
    Every evaluation is a look at DATA's images, counted in the store's ledger (`mtl-suite data looks`); a sealed
    set is scored by a second configuration only with --again."""
    from mtl_suite.workflows.evaluate import EvaluateRequest, evaluate as run_evaluate

    request = EvaluateRequest(
        model_uri=model, data=str(data) if data else None, layout=layout, allow_outside_root=allow_outside_root,
        on_bad_image=on_bad_image, normal_class=given(normal_class), batch_size=batch_size,
        tracking_uri=given(tracking_uri), experiment=experiment, output=str(out) if out else None,
        expect=given(expect), coverage=coverage, again=again)
    outcome = run_evaluate(request, say=lambda m: say(m, quiet),
                           progress=lambda total: progress_printer(total, "evaluating", quiet))
    typer.echo(outcome.summary())
