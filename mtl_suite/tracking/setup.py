"""Where runs go: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
(MLflow 3's own default), so a user always knows which store holds their results."""

from __future__ import annotations

import os

import mlflow

from mtl_suite.config import DEFAULT_TRACKING_URI


def resolve_tracking_uri(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_tracking(uri: str | None, experiment: str) -> tuple[str, str]:
    """Point MLflow at the store and experiment; return (tracking URI, experiment id)."""
    # Artifact download bars would interleave with our progress lines; a user can turn them back on.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    experiment_obj = mlflow.set_experiment(experiment)
    return resolved, experiment_obj.experiment_id
