"""Run bookkeeping shared by every tracked command: tags, provenance, the split as a dataset input."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import mlflow
import pandas as pd


def git_commit() -> str:
    """The commit of the code that produced a run ("unknown" outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_split(split_path: Path, split_digest: str, split_json: dict, context: str = "training") -> None:
    """Log the split file as an artifact and as an mlflow.data dataset input, so the UI shows which images a run
    used and its digest."""
    rows = pd.DataFrame(split_json["rows"])[["path", "label", "group", "sha256", "role"]]
    with warnings.catch_warnings():  # a local path matches two equivalent source types; MLflow warns, harmlessly
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(rows, source=split_json.get("root") or str(split_path),
                                          name=f"split-{split_digest[:12]}")
    mlflow.log_input(dataset, context=context)
    mlflow.log_artifact(str(split_path), artifact_path="data")
    mlflow.set_tags({"split_digest": split_digest, "dataset_digest": split_json["manifest_digest"]})
