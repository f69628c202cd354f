"""Pieces every command shares: user-error handling, common options and their config keys, overrides from an
Optuna study, SIGTERM handling, progress output. Command modules import from here, never from each other."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Literal, Optional

import typer
# typer 0.29 vendors click as typer._click; its UsageError is every parse-time error (bad choice, unknown option,
# missing value, no such command). tests/unit/test_cli_options.py checks that a bad choice still ends as one line.
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from mtl_suite.catalog import Task, UnitSharing
from mtl_suite.config import COLOUR_FUSIONS, ENSEMBLES, EXECUTIONS, PRECISIONS, STAINS, TTAS
from mtl_suite.data.grouping import parse_grouping
from mtl_suite.data.layouts import LAYOUTS
from mtl_suite.errors import UserError
from mtl_suite.models.backbones import BACKBONES  # keras-free: the registry's names, --backbone's choices
from mtl_suite.tracking.reachability import mask_password

# Option name -> config key, for every option that overrides a key of the --config file. Each command takes the
# subset it has with config_keys(); only options the user typed override the file (explicit_options).
CONFIG_KEYS = {
    "data": "data.path", "layout": "data.layout", "masks": "data.masks", "image_size": "data.image_size",
    "cell_size": "data.cell_size", "allow_outside_root": "data.allow_outside_root", "group_by": "data.group_by",
    "folds": "data.folds", "test_fraction": "data.test_fraction", "data_seed": "data.seed",
    "backbone": "train.backbone", "weights": "train.weights", "epochs": "train.warmup_epochs",
    "finetune_epochs": "train.finetune_epochs", "unfreeze_layers": "train.unfreeze_layers",
    "batch_size": "train.batch_size", "learning_rate": "train.learning_rate",
    "finetune_learning_rate": "train.finetune_learning_rate", "decay_rate": "train.decay_rate",
    "dense_units": "train.dense_units", "dropout": "train.dropout",
    "early_stopping_patience": "train.early_stopping_patience", "augment": "train.augment", "seed": "train.seed",
    "feature_cache": "train.feature_cache", "precision": "train.precision", "jit_compile": "train.jit_compile",
    "execution": "train.execution", "activation_cut": "train.activation_cut",
    "activation_dtype": "train.activation_dtype", "augment_mode": "train.augment_mode",
    "offline_per_class": "train.offline_per_class", "stain": "train.stain", "ensemble": "train.ensemble",
    "tta": "train.tta", "colour_fusion": "train.colour_fusion", "tracking_uri": "tracking.tracking_uri",
    "experiment": "tracking.experiment",
}


ExternalOption = Annotated[Optional[str], typer.Option(
    "--external", help="Also score the final model on this folder of images from elsewhere (another lab), all of "
    "--external-class: the share called that class, flagged as unlike the training images, and called otherwise "
    "without a flag. Never trained, tuned or thresholded on.", show_default=False)]
ExternalClassOption = Annotated[Optional[str], typer.Option(
    "--external-class", help="The class of every --external image (a class of the model; for a binary task the "
    "data's normal class may be named).", show_default=False)]


def external_check(path: str | None, expected: str | None):
    """--external with --external-class (both or neither) as the workflows' ExternalCheck, or None."""
    path, expected = given(path), given(expected)
    if path is None and expected is None:
        return None
    if path is None or expected is None:
        raise UserError("--external and --external-class go together: the folder and the class all its images are. "
                        f"Received: --external {path!r}, --external-class {expected!r}")
    from mtl_suite.workflows.reliability import ExternalCheck  # heavy imports only when asked for

    return ExternalCheck(path, expected)


def config_keys(*options: str) -> dict[str, str]:
    """The part of CONFIG_KEYS a command has (an unknown option name is a KeyError at import)."""
    return {option: CONFIG_KEYS[option] for option in options}


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


def command_line(ctx: typer.Context) -> str:
    """The command as typed (options the user gave, defaults left out), rebuilt from click's parse so it is right
    in-process too; a password in a URL (--storage postgresql://user:secret@...) shown as ***: reports and tags
    show the command."""
    parts = ["mtl-suite", ctx.info_name or ""]
    for param in ctx.command.params:
        if not param.opts or not typed(ctx, param.name):
            continue
        value = ctx.params[param.name]
        if param.param_type_name == "argument":
            parts.append(shlex.quote(str(value)))
            continue
        if isinstance(value, (list, tuple)):  # a repeatable option (--set): once per value
            for item in value:
                parts += [param.opts[0], shlex.quote(mask_password(str(item)))]
            continue
        if isinstance(value, bool):
            if value:
                parts.append(param.opts[0])
            elif getattr(param, "secondary_opts", None):  # --x/--no-x typed as --no-x
                parts.append(param.secondary_opts[0])
            continue
        parts += [param.opts[0], shlex.quote(mask_password(str(value)))]
    return " ".join(parts)


def explicit_options(ctx: typer.Context, mapping: dict[str, str]) -> dict[str, Any]:
    """Config overrides from the options the user actually typed (not their defaults), so an experiment file's
    values win over option defaults but lose to options given on the command line. An empty value counts as not
    given: MLproject passes every parameter, an optional one left out as ""."""
    out = {}
    for param, key in mapping.items():
        if typed(ctx, param) and ctx.params[param] != "":
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


def given(value: str | None) -> str | None:
    """An optional path or name, None when left empty (MLproject's way of leaving a parameter out)."""
    return value or None


def check_inputs(cfg: Any, cells: str | None = None, source: str | None = None) -> None:
    """What a training command reads, checked before it opens the tracking store: a missing path, weights file, a
    bad --group-by or an unknown augmentation policy ends as one line, and no run, experiment or store is made for
    it."""
    data, train = cfg.data, cfg.train
    for option, value in (("--data (data.path)", data.path), ("--masks (data.masks)", data.masks),
                          ("--cells", cells), ("--source", source)):
        if value is not None and not Path(value).exists():
            raise UserError(f"{option}: no such file or folder. Received: {value!r}")
    parse_grouping(data.group_by, option="--group-by (data.group_by)")
    if train.weights not in ("imagenet", "none") and not Path(train.weights).is_file():
        raise UserError(f"--weights (train.weights): expected imagenet, none or a weights file. Received: "
                        f"{train.weights!r} (no such file)")
    if train.augment != "none":
        from mtl_suite.imaging.augment import build_transform  # albumentations: only when a policy is asked for

        build_transform(train.augment)


SYSTEM_METRICS_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"


def enable_system_metrics(on: bool) -> None:
    """--system-metrics: every run this process starts logs CPU, memory, disk and network use (`system/*`, and GPU
    use where pynvml finds one) through MLflow's own monitor, which needs psutil."""
    if not on:
        return
    import importlib.util

    if importlib.util.find_spec("psutil") is None:
        raise UserError("--system-metrics needs the psutil package: pip install -e '.[system-metrics]' "
                        "(or pip install psutil)")
    os.environ[SYSTEM_METRICS_ENV] = "true"


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


# --- typed choices: each from the registry or catalog that owns the names ------------------------------------------

def choice(names: Iterable[Any]) -> Any:
    """A `Literal` of the valid names: Typer refuses any other value while parsing, before a command runs (so before
    any run exists), naming the valid ones; `--help` lists them; the command receives the plain string."""
    return Literal[tuple(str(name) for name in names)]  # type: ignore[valid-type]


BackboneName = choice(BACKBONES)
TaskName = choice(Task)
LayoutName = choice(("auto", *LAYOUTS))
PrecisionName = choice(PRECISIONS)
ExecutionName = choice(EXECUTIONS)
StainName = choice(STAINS)
EnsembleName = choice(ENSEMBLES)
TtaName = choice(TTAS)
ColourFusionName = choice(COLOUR_FUSIONS)

Layout = Annotated[LayoutName, typer.Option("--layout", help="How the dataset is laid out; auto detects it.")]
AllowOutsideRoot = Annotated[bool, typer.Option("--allow-outside-root", help="Let a CSV manifest list files "
                                                "outside its own folder (refused by default).")]
GroupBy = Annotated[str, typer.Option("--group-by", help="Groups from file names, for data without patient ids, "
                                     "so the fields of one smear stay on one side of every split: none (only "
                                     "byte-identical files grouped); blocks:N (N consecutive file numbers, the last "
                                     "number in the name, per folder and name around it); regex:PATTERN (its first "
                                     "capture group, else the whole match, in the path below the data folder). "
                                     "Identical files stay together whatever the grouping.")]
TrackingUri = Annotated[
    Optional[str],
    typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                 help="MLflow tracking store. Default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
                      "working directory.", show_default=False),
]
Experiment = Annotated[str, typer.Option("--experiment", envvar="MLFLOW_EXPERIMENT_NAME",
                                         help="MLflow experiment. Default: $MLFLOW_EXPERIMENT_NAME (as `mlflow run` "
                                              "uses it), else mtl-suite.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
TextOrJson = Annotated[choice(("text", "json")), typer.Option("--format", "-f", help="text, or json: one JSON "
                                                                                  "object.")]
Backbone = Annotated[BackboneName, typer.Option("--backbone", "-b", help="Backbone network.")]
TaskOption = Annotated[TaskName, typer.Option("--task", help="binary (normal vs leukemia) or multiclass (the data's "
                                                             "own classes).")]
Precision = Annotated[PrecisionName, typer.Option("--precision", help="float32, or mixed (float16 on a GPU, bfloat16 "
                                                  "elsewhere; float32 output), mixed_float16, mixed_bfloat16.")]
Stain = Annotated[StainName, typer.Option("--stain", help="Stain control inside the model, so training, evaluation, "
                  "predict and serving apply it alike: none; gray (luminance only); reinhard (each image's L*a*b* "
                  "mean and spread matched to fixed reference statistics).")]
Ensemble = Annotated[EnsembleName, typer.Option("--ensemble", help="The final stage's model: none (one network "
                     "refit on all development images) or folds (the CV fold models, their probabilities averaged in "
                     "one model that predict, promote and serve use as any other). Earlier stages always refit.")]
Tta = Annotated[TtaName, typer.Option("--tta", help="Test-time augmentation of the final stage's model: none, or "
                "flips (the image and its three flips, predictions averaged inside the model).")]
ColourFusion = Annotated[ColourFusionName, typer.Option("--colour-fusion", help="none, or average: the final "
                         "model averages its probabilities with a colour-only classifier's (32-bin RGB histograms and "
                         "colour statistics, logistic regression, fit on the same training images), inside the "
                         "model. It reads stain, not cells: see the run's robustness/stain_shift_accuracy.")]
NormalClass = Annotated[Optional[str], typer.Option(
    "--normal-class", help="The data's normal class: what a binary task calls normal, and what a multiclass model's "
    "calls are also read against (normal vs leukemia). Default: a class named normal, benign, hem or healthy.",
    show_default=False)]
# predict's and evaluate's batch: how many images go to the model at once (speed), not a training batch
PredictBatch = Annotated[int, typer.Option("--batch-size", min=1, help="Images per model call.",
                                           rich_help_panel="Speed")]
SetOption = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Any setting of the experiment file, key=value with its keys, e.g. --set train.dropout=0.2 --set "
    "data.seed=43 (repeatable; wins over the file and the other options).", show_default=False)]
# Units of work shared by workers through the Optuna storage (tuning/units.py): the options of compare, assess and
# train, under their own panel (tune's --storage, the study's, stays under "Tuning")
SHARING = "Sharing the work"
UnitStorage = Annotated[Optional[str], typer.Option(
    "--storage", envvar="MTL_SUITE_OPTUNA_STORAGE", help="Optuna storage where the command's units are shared by "
    "every worker running this same command (postgresql://user:pass@host/db across machines, a journal file on one). "
    "Default: no sharing (this process runs every unit).", show_default=False, rich_help_panel=SHARING)]
HeartbeatInterval = Annotated[int, typer.Option("--heartbeat-interval", help="RDB storages: seconds between a "
                                                "worker's heartbeats.", rich_help_panel=SHARING)]
UnitGracePeriod = Annotated[Optional[int], typer.Option("--grace-period", help="RDB storages: a unit without "
                            "heartbeat for this long is a dead worker's, run again by another. Default: 3 "
                            "heartbeats.", show_default=False, rich_help_panel=SHARING)]
UnitMaxRetry = Annotated[int, typer.Option("--max-retry", help="Times a unit whose worker died is run again.",
                                           rich_help_panel=SHARING)]


def unit_sharing(storage: str | None, heartbeat_interval: int, grace_period: int | None,
                 max_retry: int) -> UnitSharing:
    """--storage, --heartbeat-interval, --grace-period and --max-retry of a command whose units workers share."""
    if heartbeat_interval < 1 or (grace_period is not None and grace_period <= heartbeat_interval):
        raise UserError(f"--grace-period ({grace_period}) must be longer than --heartbeat-interval "
                        f"({heartbeat_interval}, at least 1)")
    return UnitSharing(given(storage), heartbeat_interval, grace_period, max_retry)


SystemMetrics = Annotated[bool, typer.Option("--system-metrics/--no-system-metrics", help="Log CPU, memory (and "
                                             "GPU) use to each run through MLflow's system metrics (needs psutil: "
                                             "pip install -e '.\\[system-metrics]').")]  # \\[: not markup


# --- help panels ---------------------------------------------------------------------------------------------------

DATA, MODEL, TRAINING, SPEED, TUNING, ROI, TRACKING, OUTPUT, EXTERNAL = (
    "Data", "Model", "Training", "Speed", "Tuning", "ROI preprocessing", "Tracking", "Output", "Another lab's images")
# Option name -> the panel `--help` shows it under, one map for every command (as CONFIG_KEYS is one map of config
# keys). An option not listed stays under "Options"; a command's own panel= on an option wins.
PANELS: dict[str, str] = {
    **dict.fromkeys(("data", "path", "layout", "allow_outside_root", "group_by", "masks", "mask_kind", "cells",
                     "source", "normal_class", "image_size", "cell_size", "folds", "test_fraction", "data_seed",
                     "split_file", "on_bad_image", "duplicates", "label_policy", "stain", "splits", "first_seed"), DATA),
    **dict.fromkeys(("backbone", "task", "weights", "dense_units", "dropout", "unfreeze_layers", "depth", "width",
                     "model", "name", "run_id", "ensemble", "tta", "colour_fusion"), MODEL),
    **dict.fromkeys(("epochs", "finetune_epochs", "batch_size", "learning_rate", "finetune_learning_rate",
                     "decay_rate", "early_stopping_patience", "augment", "augment_mode", "offline_per_class", "seed",
                     "parent_run", "resume", "runs", "size", "settings"), TRAINING),
    **dict.fromkeys(("feature_cache", "precision", "jit_compile", "execution", "activation_cut", "activation_dtype"),
                    SPEED),
    **dict.fromkeys(("trials", "timeout", "study_name", "storage", "engine", "sampler", "pruner", "metric", "space",
                     "heartbeat_interval", "grace_period", "max_retry", "params_from_study"), TUNING),
    **dict.fromkeys(("red", "green", "blue", "threshold", "offset_mode"), ROI),
    **dict.fromkeys(("tracking_uri", "experiment", "system_metrics", "all_experiments"), TRACKING),
    **dict.fromkeys(("quiet", "out", "output_format", "report_dir", "as_json"), OUTPUT),
    **dict.fromkeys(("external", "external_class"), EXTERNAL),
}


def assign_help_panels(command: Any) -> None:
    """Put every option of a click command (and of a group's commands, recursively) under its PANELS heading."""
    for param in getattr(command, "params", ()):
        if param.param_type_name != "option":
            continue  # arguments keep Typer's own "Arguments" panel
        if getattr(param, "rich_help_panel", None) is None and param.name in PANELS:
            param.rich_help_panel = PANELS[param.name]
    for sub in getattr(command, "commands", {}).values():
        assign_help_panels(sub)


def one_line_command_help(command: Any) -> None:
    """A group's list of commands shows each one's first paragraph as one text that wraps at the terminal's width.
    Under rich markup Typer keeps the docstring's own line breaks there, so each entry came out broken at 120
    columns and wrapped again at the terminal's."""
    for sub in getattr(command, "commands", {}).values():
        if not sub.short_help and sub.help:
            sub.short_help = " ".join(inspect.cleandoc(sub.help).split("\n\n")[0].split())
        one_line_command_help(sub)


# --- the command group: one-line usage errors, help panels ---------------------------------------------------------


class SuiteGroup(TyperGroup):
    """The root `mtl-suite` group. A mistake on the command line ends as one line `error: ...` naming the value and
    the valid ones, exit code 2, like every other user error (Typer's default is a usage line plus a framed
    panel); options are grouped under PANELS in `--help`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assign_help_panels(self)
        one_line_command_help(self)

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _one_line_usage_errors():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def _one_line_usage_errors() -> Iterator[None]:
    try:
        yield
    except UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            raise  # a bare group: Typer prints its help
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        # Typer words a bad choice "Value error, 'x' is not one of 'a', 'b'."; the first two words say nothing
        message = " ".join(exc.format_message().replace("Value error, ", "").split())
        typer.echo(f"error: {message}{where}", err=True)
        raise typer.Exit(code=2) from None
