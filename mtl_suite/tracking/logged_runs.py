"""Reading back what a finished stage run logged (its settings, model description, out-of-fold and test
probabilities, what its weights saw), for `mtl-suite ensemble`, which combines runs without training them again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Run

from mtl_suite.config import ExperimentConfig, load_config
from mtl_suite.data.lineage import Exposure
from mtl_suite.errors import UserError
from mtl_suite.tracking import registry, stage_log

OOF_PREDICTIONS, TEST_PREDICTIONS = "cv/oof_predictions.csv", "test/predictions.csv"


@dataclass(frozen=True)
class LoggedStageRun:
    run: Run
    config: ExperimentConfig  # as the run resolved it (config.yaml)
    info: dict  # model_info.json: class_names, image_size, backbone, lineage
    oof: pd.DataFrame | None  # out-of-fold probabilities, one row per development image (None: no CV)
    test: pd.DataFrame  # outer-test probabilities, one row per test image
    exposure: Exposure | None  # None: the run predates the record, what its weights saw is unknown

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def read_stage_run(run_id: str, folder: Path, what: str) -> LoggedStageRun:
    """A finished stage run with a logged model and outer-test predictions; a user error naming `what` (e.g. 'member
    run abc') otherwise."""
    run = registry.finished_stage_run(run_id, what)
    names = {a.path for part in ("", "cv", "test") for a in mlflow.MlflowClient().list_artifacts(run_id, part)}
    missing = [path for path in ("config.yaml", "model_info.json", TEST_PREDICTIONS) if path not in names]
    if missing:
        raise UserError(f"{what} logged no {', '.join(missing)}: only a stage run with an outer test part and a "
                        "logged model can be combined")

    def fetched(path: str) -> Path:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(folder)))

    oof = pd.read_csv(fetched(OOF_PREDICTIONS)) if OOF_PREDICTIONS in names else None
    return LoggedStageRun(run, load_config(fetched("config.yaml")), json.loads(fetched("model_info.json").read_text()),
                          oof, pd.read_csv(fetched(TEST_PREDICTIONS)), stage_log.read_exposure(run_id))
