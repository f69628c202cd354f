"""A tracking store with two real stage-3 runs of the tiny backbone (different seeds), trained once per test
session and shared by test_registry.py and test_serving.py (imported by both; the cache makes it train once)."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mtl_suite.paths import SAMPLE_IMAGES

EXPERIMENT = "registry-tests"
IMAGE_SIZE = 64
SAMPLES = [SAMPLE_IMAGES / "Benign" / "WBC-Benign-001.jpg", SAMPLE_IMAGES / "Early" / "WBC-Malignant-Early-001.jpg",
           SAMPLE_IMAGES / "Pro" / "WBC-Malignant-Pro-001.jpg"]


@dataclass(frozen=True)
class Store:
    root: Path
    uri: str
    experiment: str
    runs: tuple[str, ...]  # stage-3 run ids, oldest first


@functools.lru_cache(maxsize=1)
def trained_store() -> Store:
    from mtl_suite.config import load_config
    from mtl_suite.workflows.stage import StageRequest, run_stage

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root = Path(tempfile.mkdtemp(prefix="mtl-registry-tests-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # after the session (servers are stopped by then)
    uri = f"sqlite:///{root}/mlflow.db"
    runs = []
    for seed in (1, 2):  # the first also runs stage 1 and stage 2; the second starts from that stage-2 run
        config = load_config(None, {
            "data.image_size": IMAGE_SIZE, "data.folds": 2, "train.backbone": "tiny", "train.weights": "none",
            "train.warmup_epochs": 1, "train.finetune_epochs": 0, "train.augment": "none", "train.seed": seed,
            "tracking.tracking_uri": uri, "tracking.experiment": EXPERIMENT,
        })
        outcome = run_stage(StageRequest(stage="stage3", config=config, quiet=True), say=lambda m: None)
        runs.append(outcome.run_id)
    return Store(root, uri, EXPERIMENT, tuple(runs))


def promoted_store(name: str) -> Store:
    """The trained store with its best stage-3 run registered as `name` (alias champion) by `mtl-suite promote`."""
    from typer.testing import CliRunner

    from mtl_suite.cli import app

    store = trained_store()
    result = CliRunner().invoke(app, ["promote", "--tracking-uri", store.uri, "--experiment", store.experiment,
                                      "--name", name, "-q"])
    assert result.exit_code == 0, result.output
    return store
