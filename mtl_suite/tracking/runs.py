"""Run bookkeeping shared by every tracked command: tags, provenance, the split as a dataset input."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from mtl_suite.config import to_flat_dict


def config_params(config: Any) -> dict[str, str]:
    """A resolved config as MLflow params, one per dotted key (`train.learning_rate`): the same keys on stage runs
    and trial runs, so MLflow's compare view lines them up. The tracking URI is left out (it is where the run is)."""
    flat = to_flat_dict(config)
    flat.pop("tracking.tracking_uri", None)
    return {k: str(",".join(map(str, v)) if isinstance(v, tuple) else v)[:500] for k, v in flat.items()}


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
