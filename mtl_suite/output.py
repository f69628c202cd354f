"""Clean output on every path (`mtl-suite`, `python -m mtl_suite`, `mlflow run`, a served model): TensorFlow's
start-up lines say nothing a user can act on and read as failures, so they are kept off the terminal unless the
user asks for them (`mtl-suite --verbose`, $MTL_SUITE_VERBOSE=1) or set TF_CPP_MIN_LOG_LEVEL themselves.

Seen here with TensorFlow 2.21 on a CPU machine: "WARNING: All log messages before absl::InitializeLog() ...",
"I0000 ... oneDNN custom operations are on" and "I0000 ... Could not find cuda drivers" (each twice, while
`import tensorflow` runs), then "E0000 ... failed call to cuInit" at the first device query. TF_CPP_MIN_LOG_LEVEL=3
removes the last one only: the others are written by absl before it is initialised, which ignores every level
setting. So the first import of TensorFlow runs with file descriptor 2 pointed at a temporary file; what it wrote
is shown if the import fails. Python's own warnings and errors are untouched.

Imported by `mtl_suite/__init__.py`, so it is in place before any module can import TensorFlow."""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import sys
import tempfile
from typing import Iterator

VERBOSE_ENV = "MTL_SUITE_VERBOSE"
TF_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
# Marks a TF_CPP_MIN_LOG_LEVEL this module set (inherited by the suite's own subprocesses), not the user.
_OURS_ENV = "MTL_SUITE_SET_TF_LOG_LEVEL"
QUIET_TF_LEVEL = "3"
# MLflow's INFO lines about the store's own set-up ("Creating initial MLflow database tables...", alembic's
# migration steps) and, with --system-metrics, three lines per run and fold from its monitor: the suite prints what
# each run is and where it went.
_SETUP_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.system_metrics")


def verbose_requested() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def user_set_tf_level() -> bool:
    return TF_LEVEL_ENV in os.environ and os.environ.get(_OURS_ENV) != "1"


def quiet_start_up() -> None:
    """TensorFlow's start-up lines off, unless asked for or the user chose a TF_CPP_MIN_LOG_LEVEL."""
    if verbose_requested() or user_set_tf_level():
        return
    os.environ[TF_LEVEL_ENV] = QUIET_TF_LEVEL
    os.environ[_OURS_ENV] = "1"
    for name in _SETUP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _SilentTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SilentTensorFlowImport())


def set_verbose() -> None:
    """`--verbose`: everything TensorFlow and MLflow say at start-up, for reporting a problem. Must run before
    TensorFlow is imported (the CLI's root callback does)."""
    os.environ[VERBOSE_ENV] = "1"
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _SilentTensorFlowImport)]
    if os.environ.get(_OURS_ENV) == "1":
        os.environ.pop(TF_LEVEL_ENV, None)
        os.environ.pop(_OURS_ENV, None)
    for name in _SETUP_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


class _SilentTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` with the other finders and wraps its loader's exec_module, once: the whole import
    (its native libraries load inside it) runs with stderr's file descriptor captured."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 (importlib's signature)
        if fullname != "tensorflow":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        spec = next((found for finder in sys.meta_path if hasattr(finder, "find_spec")
                     for found in [finder.find_spec(fullname, path, target)] if found is not None), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            with native_stderr_captured():
                original(module)

        spec.loader.exec_module = exec_module  # this loader instance only: it loads tensorflow/__init__.py
        return spec


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Point file descriptor 2 (where C++ libraries write) at a temporary file; on an exception, write what was
    captured to stderr before the exception goes on, so the cause of a failed import is not lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (an embedding host): leave it alone
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            _restore(saved)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            sys.stderr.flush()
            raise
        else:
            _restore(saved)


def _restore(saved: int) -> None:
    if saved < 0:
        return
    os.dup2(saved, 2)
    os.close(saved)


@contextlib.contextmanager
def fit_lines_on_stderr() -> Iterator[None]:
    """Keras writes a fit's epoch lines to stdout; a command's stdout carries only its result (a run id, a model
    URI) for scripts, so the epoch lines go to stderr with the rest of its progress."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
