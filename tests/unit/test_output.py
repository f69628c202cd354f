"""Clean output: importing TensorFlow through the suite (as every command, `python -m mtl_suite`, `mlflow run` and a
served model do) prints none of TensorFlow's start-up lines, unless the user set TF_CPP_MIN_LOG_LEVEL or asked for
them (--verbose, $MTL_SUITE_VERBOSE); a failing import still shows what TensorFlow wrote."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

NOISE = ("I0000", "E0000", "W0000", "absl::InitializeLog", "oneDNN custom operations", "cuda drivers", "cuInit")
# What a command does first: import Keras (which imports TensorFlow), then ask for devices (the cuInit probe).
TOUCH_TENSORFLOW = ("import mtl_suite, keras, tensorflow as tf, sys; tf.config.list_physical_devices(); "
                    "from mtl_suite.output import _SilentTensorFlowImport; "
                    "print(any(isinstance(f, _SilentTensorFlowImport) for f in sys.meta_path), "
                    "sys.modules['tensorflow'].__version__)")


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("TF_CPP_MIN_LOG_LEVEL", "MTL_SUITE_VERBOSE", "MTL_SUITE_SET_TF_LOG_LEVEL")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**clean, **env})


@pytest.mark.slow
def test_tensorflow_start_up_lines_are_not_shown():
    done = python(TOUCH_TENSORFLOW)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False"  # the hook removed itself after the one import it wraps
    shown = [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)]
    assert shown == [], done.stderr


@pytest.mark.slow
def test_a_user_set_log_level_or_verbose_leaves_tensorflow_alone():
    for env in ({"TF_CPP_MIN_LOG_LEVEL": "0"}, {"MTL_SUITE_VERBOSE": "1"}):
        done = python("import os, sys, mtl_suite; from mtl_suite.output import _SilentTensorFlowImport; "
                      "print(any(isinstance(f, _SilentTensorFlowImport) for f in sys.meta_path), "
                      "os.environ.get('TF_CPP_MIN_LOG_LEVEL'))", **env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["False", env.get("TF_CPP_MIN_LOG_LEVEL", "None")]


def test_the_suites_own_subprocesses_stay_quiet():
    """A level the suite set is inherited by the processes it starts; they quieten TensorFlow too."""
    done = python("import sys, mtl_suite; from mtl_suite.output import _SilentTensorFlowImport; "
                  "print(any(isinstance(f, _SilentTensorFlowImport) for f in sys.meta_path))",
                  TF_CPP_MIN_LOG_LEVEL="3", MTL_SUITE_SET_TF_LOG_LEVEL="1")
    assert done.stdout.strip() == "True", done.stderr


def test_a_failing_import_shows_what_was_written(tmp_path):
    """The captured native output is replayed when the import fails, so its cause is not lost."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos.write(2, b'native: libfoo.so not found\\n')\n"
                                      "raise ImportError('no libfoo')\n")
    done = python("import mtl_suite, tensorflow", PYTHONPATH=str(tmp_path))
    assert done.returncode != 0
    assert "native: libfoo.so not found" in done.stderr and "no libfoo" in done.stderr


def test_verbose_option_turns_the_hook_off(runner, monkeypatch):
    from mtl_suite import output
    from mtl_suite.cli import app

    monkeypatch.setattr(output, "set_verbose", lambda: calls.append("verbose"))
    calls: list[str] = []
    result = runner.invoke(app, ["--verbose", "cache", "info"])
    assert result.exit_code == 0, result.output
    assert calls == ["verbose"]
