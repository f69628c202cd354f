"""`mtl-suite ensemble`, `mtl-suite promote`, `mtl-suite predict`, `mtl-suite serve`: the model registry and serving.

ensemble combines finished stage-3 runs into one run whose model averages theirs; promote registers the best finished
stage run as a raw-image pyfunc with alias `champion`; predict and serve load `models:/<name>@champion` (or any model
URI) and take image files, folders, or base64 bytes over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from mtl_suite.catalog import ARM_STAGES, Stage
from mtl_suite.cli.common import (Experiment, ExternalClassOption, ExternalOption, NormalClass, PredictBatch, Quiet,
                                  TaskName, TrackingUri, choice, external_check, handle_user_errors, progress_printer,
                                  say)
from mtl_suite.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME as DEFAULT_NAME, DEFAULT_MODEL_URI as DEFAULT_MODEL
from mtl_suite.errors import UserError
from mtl_suite.interrupts import unwind_on_interrupts
from mtl_suite.training.conformal import DEFAULT_COVERAGE, check_coverage
from mtl_suite.tracking.reachability import check_tracking_uri

FORMATS = ("table", "csv", "json")

ModelUri = Annotated[str, typer.Option("--model", "-m", help="Model URI: models:/<name>@<alias>, models:/<name>/<version>, "
                                       "runs:/... or a local folder.")]


@handle_user_errors
def promote(
    run_id: Annotated[Optional[str], typer.Argument(help="The stage run to promote (found by its id, in any "
                                                    "experiment). Default: the best finished run by --metric.",
                                                    show_default=False)] = None,
    stage: Annotated[choice(ARM_STAGES), typer.Option("--stage", help="Stage whose runs compete.")
                     ] = Stage.STAGE3.value,
    task: Annotated[Optional[TaskName], typer.Option("--task", help="Only runs of this task.", show_default=False)
                    ] = None,
    metric: Annotated[str, typer.Option("--metric", help="Run metric that decides, e.g. cv/accuracy_mean, "
                                        "test/f1_macro.")] = "cv/f1_macro_mean",
    lower_is_better: Annotated[bool, typer.Option("--lower-is-better", help="The metric is a loss.")] = False,
    name: Annotated[str, typer.Option("--name", help="Registered model name.")] = DEFAULT_NAME,
    all_experiments: Annotated[bool, typer.Option("--all-experiments", help="Search every experiment, not only "
                                                  "--experiment.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Promote even if worse than the current champion.")] = False,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    quiet: Quiet = False,
) -> None:
    """Register the best finished stage-3 run's model (as a pyfunc taking raw images) with alias 'champion'."""
    from mtl_suite.workflows.promote import PromoteRequest, promote as run_promote

    experiment_ids = _experiment_ids(tracking_uri, experiment, all_experiments, searched=run_id is None)
    outcome = run_promote(PromoteRequest(experiment_ids=experiment_ids, stage=stage, task=task, metric=metric,
                                         greater_is_better=not lower_is_better, name=name, run_id=run_id,
                                         dry_run=dry_run, force=force), say=lambda m: say(m, quiet))
    if dry_run and not quiet:
        typer.echo(outcome.plan.ranking.head(10).to_string(index=False), err=True)
    if outcome.version is not None:
        typer.echo(f"models:/{name}/{outcome.version.version}")


@handle_user_errors
def ensemble(
    run_ids: Annotated[list[str], typer.Argument(help="Finished stage-3 (or classical) runs on one split, same task "
                                                 "and image size.", show_default=False)],
    normal_class: NormalClass = None,
    external: ExternalOption = None,
    external_class: ExternalClassOption = None,
    tracking_uri: TrackingUri = None,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    quiet: Quiet = False,
) -> None:
    """Combine finished runs into one model that averages their probabilities, logged as a stage run (promote,
    predict and serve take it like any other). Nothing is trained: its CV and test figures are the members' logged
    out-of-fold and test probabilities averaged."""
    from mtl_suite.workflows.ensemble import EnsembleRequest, make_ensemble

    unwind_on_interrupts()
    outcome = make_ensemble(EnsembleRequest(tuple(run_ids), tracking_uri, experiment, normal_class, quiet,
                                            external_check(external, external_class)),
                            say=lambda m: say(m, quiet))
    typer.echo(outcome.run_id)


def _experiment_ids(tracking_uri: str | None, experiment: str, all_experiments: bool,
                    searched: bool = True) -> list[str]:
    """The experiments whose runs compete; none when nothing is searched (a given run id names the run, in whatever
    experiment it is). Sets the tracking URI either way."""
    import mlflow

    from mtl_suite.tracking.setup import resolve_tracking_uri

    check_tracking_uri(resolve_tracking_uri(tracking_uri))
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if not searched:
        return []
    if all_experiments:
        return [e.experiment_id for e in mlflow.search_experiments()]
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in mlflow.search_experiments()]
        raise UserError(f"no experiment named {experiment!r} in {resolve_tracking_uri(tracking_uri)}. "
                        f"Experiments: {', '.join(names) or 'none'}")
    return [found.experiment_id]


@handle_user_errors
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).",
                                                 show_default=False)],
    model: ModelUri = DEFAULT_MODEL,
    output_format: Annotated[choice(FORMATS), typer.Option("--format", "-f", help="How to print the results.")
                             ] = "table",
    batch_size: PredictBatch = 32,
    coverage: Annotated[float, typer.Option("--coverage", help="Prediction sets cover the true class with this "
                                            "probability on images like the training images (split-conformal).")
                        ] = DEFAULT_COVERAGE,
    tracking_uri: TrackingUri = None,
    quiet: Quiet = False,
) -> None:
    """Classify images with a registered model (default: the champion): per image the class, probabilities, whether
    it is like the model's training images, and the set of classes that covers the true one with --coverage. Unusable
    images get an error row; the exit code is 2 only if no image could be classified."""
    if output_format not in FORMATS:
        raise UserError(f"--format: expected one of {', '.join(FORMATS)}. Received: {output_format!r}")
    check_coverage(coverage)
    from mtl_suite.workflows.predict import collect_images, load_pyfunc, predict_files

    files = collect_images(images)
    pyfunc = load_pyfunc(model, tracking_uri, say=lambda m: say(m, quiet))
    frame = predict_files(pyfunc, files, batch_size, coverage,
                          progress_printer(len(files), "predicting", quiet or len(files) <= batch_size))
    failed = int(frame["error"].notna().sum())
    typer.echo(render(frame, output_format))
    flagged = flagged_count(frame)
    marked = f" (marked{FLAG_MARK})" if output_format == "table" else " (in_distribution false)"
    say(f"{flagged} of {len(frame) - failed} image(s) flagged as unlike the model's training images"
        + (f"{marked}: their labels are the classifier's, but the model was not made for such images"
           if flagged else ""), quiet)
    if frame["in_distribution"].isna().all() and failed < len(frame):
        say("this model carries no out-of-distribution detector (made before mtl-suite fitted one); nothing is "
            "flagged", quiet)
    if failed:
        say(f"{failed} of {len(frame)} image(s) could not be classified (see the error column)", quiet)
    if failed == len(frame):
        raise typer.Exit(code=2)


FLAG_MARK = " [flagged]"  # after a flagged image's label in the table: its class is never shown without the flag


def render(frame, output_format: str) -> str:
    """One row per image: file, predicted label, whether the image is like the training images (in_distribution,
    ood_score), the prediction set, one p_<class> column per class, error."""
    import pandas as pd

    names = next((c for c in frame["class_names"] if _is_list(c)), [])
    names = [str(n) for n in names]
    ok = [not isinstance(e, str) for e in frame["error"]]
    if output_format == "json":
        records = [{"file": row["file"], "label": row["label"] if good else None, "class_names": names,
                    "probabilities": [float(v) for v in row["probabilities"]] if good else None,
                    "in_distribution": _plain(row["in_distribution"]) if good else None,
                    "ood_score": _plain(row["ood_score"]) if good else None,
                    "prediction_set": list(row["prediction_set"]) if good and _is_list(row["prediction_set"])
                    else None,
                    "error": None if good else row["error"]}
                   for good, (_, row) in zip(ok, frame.iterrows())]
        return json.dumps(records, indent=2)
    flat = pd.DataFrame({"file": frame["file"], "label": frame["label"],
                         "in_distribution": [_plain(v) for v in frame["in_distribution"]],
                         "ood_score": [_plain(v) for v in frame["ood_score"]],
                         "prediction_set": ["|".join(s) if _is_list(s) else None for s in frame["prediction_set"]]})
    for k, name in enumerate(names):
        flat[f"p_{name}"] = [float(p[k]) if _is_list(p) else None for p in frame["probabilities"]]
    flat["error"] = frame["error"]
    if output_format == "csv":
        return flat.to_csv(index=False, float_format="%.6f").rstrip("\n")
    shown = flat.copy()
    flagged = [_plain(value) is False for value in flat["in_distribution"]]
    shown["label"] = [("-" if label is None else label) + (FLAG_MARK if flag else "")
                      for label, flag in zip(shown["label"], flagged)]
    shown["in_distribution"] = ["-" if v is None else ("yes" if v else "NO") for v in flat["in_distribution"]]
    shown["prediction_set"] = shown["prediction_set"].fillna("-")
    shown["error"] = shown["error"].fillna("")
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


def flagged_count(frame) -> int:
    """Images the model's detector flagged as unlike its training images."""
    return sum(_plain(value) is False for value in frame["in_distribution"])


def _plain(value):
    """A JSON-ready scalar: numpy scalars as Python ones, NaN and None as None."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def _is_list(value) -> bool:
    return isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) == 1


@handle_user_errors
def serve(
    model: ModelUri = DEFAULT_MODEL,
    host: Annotated[str, typer.Option("--host", "-h", help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port.")] = 5001,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Server worker processes.")] = 1,
    allow_paths: Annotated[bool, typer.Option("--allow-paths", help="Let requests name image files on this "
                                              "machine (off: requests carry base64 bytes or arrays).")] = False,
    tracking_uri: TrackingUri = None,
) -> None:
    """Serve a registered model over HTTP (wraps `mlflow models serve --env-manager local`). POST JSON to
    /invocations: {"dataframe_records": [{"image": "<base64 of the file>"}]}."""
    command, env = serve_command(model, host, port, workers, allow_paths, tracking_uri)
    say(f"serving {model} on http://{host}:{port}/invocations (Ctrl-C stops)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)  # the server replaces this process, so signals reach it directly


def serve_command(model: str, host: str, port: int, workers: int, allow_paths: bool,
                  tracking_uri: str | None) -> tuple[list[str], dict[str, str]]:
    """The `mlflow models serve` call and its environment: our bin/ first on PATH (it starts uvicorn by name)."""
    from mtl_suite.tracking.setup import resolve_tracking_uri

    if not 0 < port < 65536:
        raise UserError(f"--port: expected 1..65535. Received: {port}")
    uri = resolve_tracking_uri(tracking_uri)
    check_model_uri(model, uri)
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
           "MTL_SUITE_ALLOW_PATHS": "1" if allow_paths else "0"}
    mlflow_exe = shutil.which("mlflow", path=env["PATH"])
    if mlflow_exe is None:
        raise UserError(f"the `mlflow` command is not on PATH ({bin_dir} first); reinstall mtl-suite's environment")
    command = [mlflow_exe, "models", "serve", "-m", model, "--env-manager", "local", "-h", host, "-p", str(port),
               "-w", str(workers)]
    return command, env


def check_model_uri(model: str, tracking_uri: str) -> None:
    """Fail before starting a server when `models:/name@alias` or `models:/name/version` does not exist."""
    if not model.startswith("models:/"):
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    check_tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient()
    ref = model[len("models:/"):]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            client.get_model_version_by_alias(name, alias)
        elif "/" in ref:
            name, version = ref.split("/", 1)
            client.get_model_version(name, version)
    except MlflowException as exc:
        raise UserError(f"{model} not found in {tracking_uri} (run `mtl-suite promote` first): "
                        f"{str(exc).splitlines()[0][:200]}") from None


def register(app: typer.Typer) -> None:
    app.command("ensemble")(ensemble)
    app.command("promote")(promote)
    app.command("predict")(predict)
    app.command("serve")(serve)
