"""The CLI's shared option handling: every closed choice (backbone, task, stage, engine, sampler, ...) comes from the
registry or catalog that owns it and is checked while parsing, so a typo ends as one line before any run exists;
options are grouped in help; `import mtl_suite.cli` stays free of Keras/TensorFlow/MLflow/Optuna; compare's "made by"
command line lists only the options the user typed."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import pytest
import typer
import typer.main

from mtl_suite.catalog import ARM_STAGES, STAGES, TUNABLE_STAGES, Task
from mtl_suite.cli import app
from mtl_suite.cli.analysis import command_line
from mtl_suite.config import EXECUTIONS, PRECISIONS
from mtl_suite.data.layouts import LAYOUTS
from mtl_suite.models.backbones import BACKBONES
from mtl_suite.tuning.names import ENGINES, PRUNERS, SAMPLERS


def _refusal(runner, *args: str) -> str:
    """The one line a bad command line ends with (exit 2, no traceback)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _names(values) -> str:
    return ", ".join(repr(str(v)) for v in values)


@pytest.mark.parametrize("command", [*map(str, STAGES), "tune", "compare"])
def test_backbone_choices_are_exactly_the_registry(runner, monkeypatch, tmp_path, command):
    """A typo is refused while parsing: before the command body, so before any store, experiment or run exists."""
    from mtl_suite.cli import analysis, train, tune

    def never(*args, **kwargs):
        raise AssertionError("reached the command with an unknown backbone")

    for module in (train, analysis, tune):
        monkeypatch.setattr(module, "load_config", never)
    monkeypatch.chdir(tmp_path)
    line = _refusal(runner, command, "--backbone", "resnet_9000", "-q")
    assert f"'resnet_9000' is not one of {_names(BACKBONES)}" in line
    assert "--backbone" in line
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/


def test_stage_commands_come_from_the_catalog(runner):
    group = typer.main.get_command(app)
    for stage, plan in STAGES.items():
        assert group.commands[str(stage)].help == plan.help
    assert f"'stage1' is not one of {_names(TUNABLE_STAGES)}" in _refusal(runner, "tune", "--stage", "stage1")
    assert f"'stage2' is not one of {_names(ARM_STAGES)}" in _refusal(runner, "promote", "--stage", "stage2")


@pytest.mark.parametrize(("args", "bad", "names"), [
    (["stage3", "--task"], "tri", list(Task)),
    (["stage3", "--precision"], "half", list(PRECISIONS)),
    (["stage3", "--execution"], "lazy", list(EXECUTIONS)),
    (["stage3", "--layout"], "flat", ["auto", *LAYOUTS]),
    (["tune", "--engine"], "hyperopt", list(ENGINES)),
    (["tune", "--sampler"], "grid", list(SAMPLERS)),
    (["tune", "--pruner"], "asha", list(PRUNERS)),
    (["predict", "x.png", "--format"], "xml", ["table", "csv", "json"]),
    (["data", "split", "--duplicates"], "keep", ["drop", "group"]),
])
def test_every_choice_is_checked_while_parsing(runner, args, bad, names):
    assert f"'{bad}' is not one of {_names(names)}" in _refusal(runner, *args, bad)


def test_tuning_choices_are_the_engines_own():
    from mtl_suite.tuning.optuna_engine import SAMPLERS as OPTUNA_SAMPLERS, make_pruner
    from mtl_suite.workflows.tune import ENGINES as WORKFLOW_ENGINES

    assert tuple(OPTUNA_SAMPLERS) == SAMPLERS
    assert tuple(WORKFLOW_ENGINES) == ENGINES
    for name in PRUNERS:
        make_pruner(name, max_steps=4)  # each offered pruner is one the engine builds


def test_missing_inputs_are_refused_before_the_store_is_opened(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert "--data (data.path): no such file or folder" in _refusal(runner, "stage3", "--data", "missing/", "-q")
    assert "--weights (train.weights): expected imagenet, none or a weights file" in _refusal(
        runner, "stage3", "--weights", "w.h5")
    assert "unknown augmentation policy 'swirl'" in _refusal(runner, "stage3", "--augment", "swirl")
    assert "unknown augmentation policy 'swirl'" in _refusal(runner, "segment", "train", "--augment", "swirl")
    assert list(tmp_path.iterdir()) == []


def test_unknown_options_and_commands_end_in_one_line(runner):
    assert "No such option: --epoch" in _refusal(runner, "stage3", "--epoch", "3")
    assert "No such command 'stag3'" in _refusal(runner, "stag3")


def test_version(runner):
    from mtl_suite import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mtl-suite {__version__}"


def _panel_of(help_text: str, option: str) -> str | None:
    """The help panel ("╭─ Speed ───╮") whose box lists `option`."""
    panel = None
    for line in help_text.splitlines():
        if line.startswith("╭─"):
            panel = line.strip("╭─╮ ").rstrip("─").strip()
        elif line.startswith("│") and option in line.split("│")[1].split()[:2]:  # the option's own row
            return panel
    return None


@pytest.mark.parametrize(("command", "expected"), [
    ("stage3", {"--data": "Data", "--folds": "Data", "--backbone": "Model", "--epochs": "Training",
                "--precision": "Speed", "--feature-cache": "Speed", "--experiment": "Tracking",
                "--params-from-study": "Tuning", "--quiet": "Output"}),
    ("tune", {"--sampler": "Tuning", "--backbone": "Model", "--tracking-uri": "Tracking", "--storage": "Tuning"}),
    ("train", {"--storage": "Sharing the work", "--max-retry": "Sharing the work", "--set": "Training"}),
    ("assess", {"--storage": "Sharing the work", "--grace-period": "Sharing the work"}),
])
def test_options_are_grouped_in_help(runner, command, expected):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert {option: _panel_of(result.output, option) for option in expected} == expected


def test_importing_the_cli_loads_no_heavy_library():
    code = ("import sys, mtl_suite.cli; "
            "print(sorted(m for m in ('keras', 'tensorflow', 'mlflow', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def _probe_app() -> typer.Typer:
    probe_app = typer.Typer()

    @probe_app.command()
    def probe(ctx: typer.Context, runs: int = 10, backbone: str = "tiny", label: str = "a b",
              quiet: Annotated[bool, typer.Option("--quiet")] = False,
              cache: Annotated[bool, typer.Option("--cache/--no-cache")] = True) -> None:
        typer.echo(command_line(ctx))

    @probe_app.command()
    def other() -> None:  # a second command, so `probe` is a subcommand as compare is
        pass

    return probe_app


def test_command_line_lists_typed_options_only(runner):
    result = runner.invoke(_probe_app(), ["probe", "--runs", "3", "--label", "x y", "--quiet", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "mtl-suite probe --runs 3 --label 'x y' --quiet --no-cache"


def test_command_line_leaves_defaults_out(runner):
    result = runner.invoke(_probe_app(), ["probe", "--backbone", "tiny"])  # typed, though equal to the default
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "mtl-suite probe --backbone tiny"
    result = runner.invoke(_probe_app(), ["probe"])
    assert result.output.strip() == "mtl-suite probe"


def test_command_line_hides_a_password_in_a_url(runner):
    """compare's command goes into its report and a run tag: a --storage URL's password must not."""
    result = runner.invoke(_probe_app(), ["probe", "--label", "postgresql://mtl:secret@db:5432/optuna"])
    assert result.output.strip() == "mtl-suite probe --label 'postgresql://mtl:***@db:5432/optuna'"


IDLE_VALUES = {"ensemble": "folds", "tta": "flips", "colour_fusion": "average", "parent_run": "abc", "task": "binary",
               "cells": "cells", "masks": "masks", "source": "source"}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_option_that_does_nothing_there_is_refused_not_ignored(runner, tmp_path, stage):
    """Every stage command shares one option set; where an option has no effect (a fold ensemble on stage 1, a task
    on stage 2, masks on the classical baseline) it is one line and exit 2, before any run or store exists."""
    from mtl_suite.cli.train import idle_options

    plan = STAGES[stage]
    idle = idle_options(plan)
    assert set(idle) <= set(IDLE_VALUES)
    for name in IDLE_VALUES:
        option = "--" + name.replace("_", "-")
        result = runner.invoke(app, [str(stage), option, IDLE_VALUES[name], "--tracking-uri",
                                     f"sqlite:///{tmp_path}/mlflow.db", "--data", str(tmp_path / "none")])
        line = result.output.strip().splitlines()[-1]
        if name in idle:
            assert (result.exit_code, line) == (2, f"error: {option} has no effect on {stage}: {idle[name]}")
        else:  # it acts here: the command goes on to the next check (the missing --data folder)
            assert "has no effect" not in result.output, result.output
    assert not (tmp_path / "mlflow.db").exists()


def test_help_shows_bracketed_text_rich_markup_would_eat(runner):
    result = runner.invoke(app, ["classical", "--help"], terminal_width=200)
    assert "'.[system-metrics]'" in result.output


def test_the_command_list_shows_each_description_unbroken(runner, monkeypatch):
    """A description's docstring line breaks do not reach `mtl-suite --help`: it wraps once, at the terminal's width."""
    monkeypatch.setenv("COLUMNS", "400")  # rich's width
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    (train,) = [line for line in result.output.splitlines() if line.startswith("│ train ")]
    assert "its ensemble members and their ensemble, then promote" in train, result.output
