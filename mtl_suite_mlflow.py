"""MLflow's hook for the experiment of `mlflow run` (entry point group `mlflow.default_experiment_provider`, in
pyproject.toml): when nobody names one ($MLFLOW_EXPERIMENT_NAME, --experiment-name, --experiment-id), `mlflow run
<this project>` creates its run in the suite's own experiment, `mtl-suite`, as the CLI does, instead of in MLflow's
Default experiment (where the run would be, and the CLI's runs would not).

A top-level module, not part of the mtl_suite package: MLflow loads every such provider whenever it is imported, in
any program of the environment, and importing mtl_suite would set TensorFlow's environment there. It answers only for
the `mlflow run` command running this project (and only then imports the suite, to create the experiment as the CLI
does); everywhere else MLflow's own default stands."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mlflow.tracking.default_experiment.abstract_context import DefaultExperimentProvider

PROJECT_NAME = "mtl-suite"  # MLproject's `name:`
EXPERIMENT = "mtl-suite"  # mtl_suite.config.DEFAULT_EXPERIMENT (tests/unit/test_experiment.py checks they agree)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # as mtl_suite/tracking/setup.py sets it


class MtlSuiteProjectExperiment(DefaultExperimentProvider):
    def in_context(self) -> bool:
        return runs_this_project(sys.argv)

    def get_experiment_id(self) -> str:
        import mlflow

        from mtl_suite.tracking.setup import create_experiment

        return create_experiment(EXPERIMENT, mlflow.get_tracking_uri(), tags={KIND_TAG: KIND})


def runs_this_project(argv: list[str]) -> bool:
    """Whether this process is `mlflow run <folder>` (or `python -m mlflow run`) for a folder whose MLproject is
    this project's."""
    if len(argv) < 3 or argv[1] != "run" or Path(argv[0]).name not in ("mlflow", "__main__.py"):
        return False
    for word in argv[2:]:
        project = Path(word) / "MLproject"
        if not word.startswith("-") and project.is_file():
            text = project.read_text(encoding="utf-8", errors="replace")
            return re.search(rf"^name:\s*{re.escape(PROJECT_NAME)}\s*$", text, re.MULTILINE) is not None
    return False
