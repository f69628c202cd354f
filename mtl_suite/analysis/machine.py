"""The machine, software and code a result came from, in one line each, for a report to quote. Environment only:
no MLflow import (its version comes from the installed package's metadata)."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import tensorflow as tf

        gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        tf_version = tf.__version__
    except Exception:  # noqa: BLE001 - only for the description
        gpus, tf_version = [], "unknown"
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} CPU cores, "
            f"{'GPU: ' + ', '.join(gpus) if gpus else 'no GPU'}; Python {platform.python_version()}, "
            f"TensorFlow {tf_version}, MLflow {_version('mlflow')}")


def _version(package: str) -> str:
    """From the installed distribution's metadata: the same string as `package.__version__`, without importing it."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def code_description(commit: str) -> str:
    """A run's or report's `git_commit` (tracking/runs.py:git_commit) in words: "git 0123456789ab" (plus what the
    recorder added: uncommitted changes, a git archive), "not a git checkout: mtl-suite X.Y.Z" as it is, and for an
    empty value or the "unknown" that runs before that function's fallback recorded, "not recorded by the run"."""
    if re.match(r"[0-9a-f]{40}", commit or ""):
        return f"git {commit[:12]}{commit[40:]}"
    if not commit or commit == "unknown":
        return "not recorded by the run"
    return commit
