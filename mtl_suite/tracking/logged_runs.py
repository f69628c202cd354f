"""Reading back what a finished stage run logged (its settings, model description, out-of-fold and test
probabilities, what its weights saw), for `mtl-suite ensemble`, which combines runs without training them again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from mtl_suite.config import ExperimentConfig, load_config
from mtl_suite.data.lineage import Exposure
from mtl_suite.errors import UserError
from mtl_suite.run_files import CONFIG
from mtl_suite.tracking import registry, stage_log
from mtl_suite.tracking.report_queries import run_data


@dataclass(frozen=True)
class LoggedStageRun:
    run: Run
    config: ExperimentConfig  # as the run resolved it (config.yaml)
    class_names: list[str]
    image_size: int
    oof: pd.DataFrame | None  # out-of-fold probabilities, one row per development image (None: no CV)
    test: pd.DataFrame  # outer-test probabilities, one row per test image
    exposure: Exposure | None  # None: the run predates the record, what its weights saw is unknown

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def read_stage_run(run_id: str, folder: Path, what: str) -> LoggedStageRun:
    """A finished stage run with its settings and outer-test predictions logged; a user error naming `what` (e.g.
    'member run abc') otherwise. The predictions and model description are read as the reports read them."""
    run = registry.finished_stage_run(run_id, what)
    logged = run_data(mlflow.MlflowClient(), run, folder)
    if logged.test is None:
        raise UserError(f"{what} logged no test/predictions.csv: only a stage run with an outer test part can be "
                        "combined")
    try:
        config = load_config(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CONFIG,
                                                                 dst_path=str(folder)))
    except (MlflowException, OSError):
        raise UserError(f"{what} logged no {CONFIG} (its data settings)") from None
    return LoggedStageRun(run, config, logged.class_names, logged.image_size, logged.oof, logged.test,
                          stage_log.read_exposure(run_id))
