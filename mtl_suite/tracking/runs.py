"""Run bookkeeping shared by every tracked command: tags, provenance, the split as a dataset input."""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from mtl_suite.config import to_flat_dict


def config_params(config: Any) -> dict[str, str]:
    """A resolved config as MLflow params, one per dotted key (`train.learning_rate`): the same keys on stage runs
    and trial runs, so MLflow's compare view lines them up. The tracking URI is left out (it is where the run is)."""
    flat = to_flat_dict(config)
    flat.pop("tracking.tracking_uri", None)
    return {k: str(",".join(map(str, v)) if isinstance(v, tuple) else v)[:500] for k, v in flat.items()}


PACKAGE_DIR = Path(__file__).resolve().parents[1]
# Filled in by `git archive` (export-subst in .gitattributes): an archive of a commit names that commit here.
ARCHIVE_COMMIT = "archive_commit.txt"
UNCOMMITTED = " + uncommitted changes"


def git_commit(package_dir: Path = PACKAGE_DIR) -> str:
    """The code that produced a run, in words a reader can check (never "unknown"):

    - run from a git checkout that tracks this package: its commit (40 hex digits), followed by
      " + uncommitted changes" when the package's files differ from that commit;
    - run from a `git archive` of a commit (how the benchmarks copy the code): that commit, which git wrote into
      `archive_commit.txt`, followed by " (from a git archive)";
    - else "not a git checkout: mtl-suite X.Y.Z", the package's version (an installed wheel, a copied tree).

    A package installed into a virtualenv inside some other checkout is not that checkout's code: only a checkout
    that tracks the package's own files counts."""
    if _git(package_dir, "ls-files", "--error-unmatch", "--", "__init__.py") is not None:
        head = _git(package_dir, "rev-parse", "HEAD")
        if head:
            return head + (UNCOMMITTED if _git(package_dir, "status", "--porcelain", "--", ".") else "")
    try:
        archived = (package_dir / ARCHIVE_COMMIT).read_text(encoding="utf-8").strip()
    except OSError:
        archived = ""
    if re.fullmatch(r"[0-9a-f]{40}", archived):  # unfilled (a checkout's copy) it still reads "$Format:%H$"
        return f"{archived} (from a git archive)"
    from mtl_suite import __version__

    return f"not a git checkout: mtl-suite {__version__}"


def _git(cwd: Path, *args: str) -> str | None:
    """git's output in `cwd`, None when git fails there or is not installed."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def log_split(split_path: Path, split_digest: str, split_json: dict, context: str = "training") -> None:
    """Log the split file as an artifact and as an mlflow.data dataset input, so the UI shows which images a run
    used and its digest."""
    rows = pd.DataFrame(split_json["rows"])[["path", "label", "group", "sha256", "role"]]
    with warnings.catch_warnings():  # a local path matches two equivalent source types; MLflow warns, harmlessly
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(rows, source=split_json.get("root") or str(split_path),
                                          name=f"split-{split_digest[:12]}")
    log_input(dataset, context=context)
    mlflow.log_artifact(str(split_path), artifact_path="data")
    mlflow.set_tags({"split_digest": split_digest, "dataset_digest": split_json["manifest_digest"]})


def log_input(dataset, **kwargs: Any) -> None:
    """mlflow.log_input, tried once more when another process stored the same dataset between the store's look for
    it and its insert (the store then refuses the row: SQLite's UNIQUE constraint, PostgreSQL's duplicate key). Runs
    of one split side by side do that: two members of a recipe, or a pair's two arms, under --storage. The second try
    finds the row and only links it to this run."""
    try:
        mlflow.log_input(dataset, **kwargs)
    except MlflowException as exc:
        if not _dataset_row_raced(exc):
            raise
        mlflow.log_input(dataset, **kwargs)


def _dataset_row_raced(exc: MlflowException) -> bool:
    text = str(exc)
    return "dataset" in text.lower() and ("UNIQUE constraint failed" in text or "duplicate key value" in text)
