"""The stage commands' speed options (--feature-cache, --precision, --jit-compile, --execution) reach TrainConfig; a bad value
is a one-line user error naming the key."""

from __future__ import annotations

import typer

from mtl_suite.cli import train as train_cli


def stage_app() -> typer.Typer:
    app = typer.Typer()
    train_cli.register(app)
    return app


def test_speed_options_override_the_train_config(runner, monkeypatch):
    from mtl_suite.workflows import stage as stage_runs

    seen = []

    def fake_run_stage(request, say):
        seen.append(request.config.train)
        return stage_runs.StageOutcome("run", request.stage, {}, "sqlite:///x.db", "0")

    monkeypatch.setattr(stage_runs, "run_stage", fake_run_stage)
    monkeypatch.setattr(train_cli, "unwind_on_interrupts", lambda: None)
    result = runner.invoke(stage_app(), ["stage3", "--no-feature-cache", "--precision", "mixed", "--jit-compile",
                                         "--execution", "graph"])
    assert result.exit_code == 0, result.output
    assert (seen[0].feature_cache, seen[0].precision, seen[0].jit_compile, seen[0].execution) == (
        False, "mixed", True, "graph")
    result = runner.invoke(stage_app(), ["stage3"])
    assert (seen[1].feature_cache, seen[1].precision, seen[1].jit_compile, seen[1].execution) == (
        True, "float32", False, "auto")


def test_unknown_precision_is_refused_while_parsing(runner, monkeypatch):
    from mtl_suite.cli import app

    monkeypatch.setattr(train_cli, "unwind_on_interrupts", lambda: None)
    result = runner.invoke(app, ["stage3", "--precision", "half"])
    assert result.exit_code == 2
    assert ("error: Invalid value for '--precision': 'half' is not one of 'float32', 'mixed', 'mixed_float16', "
            "'mixed_bfloat16'.") in result.output


def test_unknown_precision_in_a_config_file_names_the_key(runner, monkeypatch, tmp_path):
    monkeypatch.setattr(train_cli, "unwind_on_interrupts", lambda: None)
    config = tmp_path / "experiment.yaml"
    config.write_text("train: {precision: half}\n")
    result = runner.invoke(stage_app(), ["stage3", "--config", str(config)])
    assert result.exit_code == 2
    assert "'train.precision' must be one of float32, mixed, mixed_float16, mixed_bfloat16" in result.output


def test_eager_execution_with_xla_is_refused_in_one_line(runner, monkeypatch):
    monkeypatch.setattr(train_cli, "unwind_on_interrupts", lambda: None)
    result = runner.invoke(stage_app(), ["stage3", "--execution", "eager", "--jit-compile"])
    assert result.exit_code == 2
    assert ("command line: 'train.execution + train.jit_compile' must be compatible: eager steps are never "
            "XLA-compiled (use auto or graph). Received: 'eager + True'") in result.output
