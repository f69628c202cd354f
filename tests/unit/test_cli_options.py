"""The CLI's shared option handling: --backbone's help and check come from the backbone registry, `import
mtl_suite.cli` stays free of Keras/TensorFlow/MLflow/Optuna, and compare's "made by" command line lists only the
options the user typed."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated

import pytest
import typer
import typer.main

from mtl_suite.catalog import STAGES, TUNABLE_STAGES
from mtl_suite.cli import app
from mtl_suite.cli.analysis import command_line
from mtl_suite.models.backbones import BACKBONES


def _option(command: str, name: str):
    group = typer.main.get_command(app)
    return next(param for param in group.commands[command].params if param.name == name)


def _listed_names(help_text: str) -> list[str]:
    """"Backbone to tune: a, b, c." -> [a, b, c]."""
    return help_text.rpartition(": ")[2].rstrip(".").split(", ")


@pytest.mark.parametrize("command", [*map(str, STAGES), "tune", "compare"])
def test_backbone_help_lists_exactly_the_registry(command):
    assert _listed_names(_option(command, "backbone").help) == list(BACKBONES)


def test_stage_commands_come_from_the_catalog():
    group = typer.main.get_command(app)
    for stage, plan in STAGES.items():
        assert group.commands[str(stage)].help == plan.help
    assert _listed_names(_option("tune", "stage").help) == list(map(str, TUNABLE_STAGES))


@pytest.mark.parametrize("command", ["stage3", "compare"])
def test_an_unknown_backbone_is_refused_in_one_line(runner, monkeypatch, command):
    from mtl_suite.cli import analysis, train

    def never(*args, **kwargs):
        raise AssertionError("reached training with an unknown backbone")

    for module in (train, analysis):  # the check comes before the SIGTERM handler and any heavy import
        monkeypatch.setattr(module, "mark_runs_killed_on_sigterm", never)
    result = runner.invoke(app, [command, "--backbone", "resnet_9000", "-q"])
    assert result.exit_code == 2, result.output
    assert f"unknown backbone 'resnet_9000'. Expected one of: {', '.join(BACKBONES)}" in result.output
    assert "Traceback" not in result.output


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
