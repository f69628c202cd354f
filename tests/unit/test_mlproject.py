"""MLproject against the CLI: every entry point's command is a real `mtl-suite` command, every `-P` name is the
option of the same name, every parameter is used, and the command line MLflow builds from the defaults parses
(choices included) without running anything. The three environment files pin the same dependencies."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main
import yaml

from mtl_suite.cli import app

REPO = Path(__file__).resolve().parents[2]
MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text(encoding="utf-8"))
ENTRY_POINTS = MLPROJECT["entry_points"]
PLACEHOLDER = re.compile(r"\{(\w+)\}")


def command_of(entry: dict):
    """The click command an entry point runs, and the arguments after its name (placeholders still in)."""
    words = shlex.split(entry["command"])
    assert words[:3] == ["python", "-m", "mtl_suite"], entry["command"]
    command, rest = typer.main.get_command(app), words[3:]
    while hasattr(command, "commands") and rest and rest[0] in command.commands:
        command, rest = command.commands[rest[0]], rest[1:]
    assert not hasattr(command, "commands"), f"{entry['command']}: names a group, not a command"
    return command, rest


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_every_parameter_is_the_option_of_the_same_name(name):
    entry = ENTRY_POINTS[name]
    command, rest = command_of(entry)
    declared = set(entry.get("parameters", {}))
    used = set(PLACEHOLDER.findall(entry["command"]))
    assert used == declared, f"{name}: declared but unused {declared - used}, used but undeclared {used - declared}"
    options = {opt: param for param in command.params if param.param_type_name == "option"
               for opt in param.opts}
    for flag, value in zip(rest, rest[1:]):
        found = PLACEHOLDER.fullmatch(value)
        if flag.startswith("--") and found:
            assert flag in options, f"{name}: {flag} is not an option of `{command.name}`"
            assert options[flag].name == found.group(1), f"{name}: -P {found.group(1)} is passed as {flag}"
    positional = [w for i, w in enumerate(rest) if PLACEHOLDER.fullmatch(w)
                  and not (i and rest[i - 1].startswith("--"))]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    assert len(positional) <= len(arguments), f"{name}: {positional} but `{command.name}` takes {arguments}"


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_the_default_command_line_parses(name):
    """What `mlflow run . -e <name>` runs with no -P: parsed by the command itself, choices checked, nothing run."""
    entry = ENTRY_POINTS[name]
    defaults = {key: spec.get("default", "") for key, spec in entry.get("parameters", {}).items()}
    line = PLACEHOLDER.sub(lambda m: _as_mlflow_renders(defaults[m.group(1)]), entry["command"])
    command, rest = command_of({"command": line})
    ctx = command.make_context(command.name, list(rest))
    for key, value in defaults.items():
        if key in ctx.params:  # an empty default must arrive empty (the CLI reads it as "not given")
            assert str(ctx.params[key] if ctx.params[key] is not None else "") == str(value), (key, ctx.params[key])


def _as_mlflow_renders(value) -> str:
    """MLflow quotes every parameter value for the shell (mlflow.projects: shlex.quote), the empty string too."""
    return shlex.quote(str(value))


def test_every_cli_command_that_makes_runs_has_an_entry_point():
    commands = {command_of(entry)[0].name for entry in ENTRY_POINTS.values()}
    assert {"stage1", "stage2", "stage3", "classical", "tune", "compare", "report", "promote", "train"} <= commands


def _requirement_names(requirements) -> dict[str, str]:
    return {re.split(r"[<>=\[]", r, maxsplit=1)[0].strip().lower(): r.replace(" ", "") for r in requirements}


def test_the_environment_files_pin_what_pyproject_pins():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    python_env = yaml.safe_load((REPO / "python_env.yaml").read_text(encoding="utf-8"))
    conda = yaml.safe_load((REPO / "conda.yaml").read_text(encoding="utf-8"))
    conda_pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    expected = _requirement_names(pyproject)
    assert _requirement_names(python_env["dependencies"]) == expected
    assert _requirement_names(conda_pip) == expected
    assert MLPROJECT["python_env"] == "python_env.yaml" and (REPO / MLPROJECT["python_env"]).is_file()
