"""A user's mistake that only shows once the work starts (weights that do not fit the backbone, a class that is not
in the data) is still found before a command opens its MLflow run: one line, exit code 2, and no FAILED (or any)
run left in the store. Each case here used to leave a FAILED run: stage, tuning-study or comparison run."""

from __future__ import annotations

import mlflow
import pytest

from mtl_suite.cli import app

TINY = ["--image-size", "64", "--folds", "2", "--epochs", "1", "--finetune-epochs", "0", "-q"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for variable in ("MLFLOW_TRACKING_URI", "MTL_SUITE_OPTUNA_STORAGE"):
        monkeypatch.delenv(variable, raising=False)
    for module in ("mtl_suite.cli.train", "mtl_suite.cli.tune", "mtl_suite.cli.analysis"):
        monkeypatch.setattr(f"{module}.unwind_on_interrupts", lambda: None, raising=False)
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture
def not_weights(tmp_path):
    path = tmp_path / "not-weights.h5"
    path.write_text("this is not a weights file\n")
    return path


@pytest.mark.parametrize("case", ["stage1-tiny-file", "classical-mobilenet-text", "tune-classical-tiny-file",
                                  "compare-unknown-normal-class"])
def test_no_run_is_left_by_a_user_error(runner, store, not_weights, tmp_path, case):
    args, fragment = {
        "stage1-tiny-file": (["stage1", "--backbone", "tiny", "--weights", not_weights, *TINY],
                             "the tiny backbone has no pretrained weights"),
        "classical-mobilenet-text": (["classical", "--backbone", "mobilenet_025", "--weights", not_weights,
                                      "--image-size", "32", "--folds", "2", "--epochs", "1", "-q"],
                                     f"weights file {not_weights} does not fit backbone mobilenet_025"),
        "tune-classical-tiny-file": (["tune", "--stage", "classical", "--backbone", "tiny", "--weights", not_weights,
                                      "--image-size", "64", "--trials", "1", "--folds", "2", "-q",
                                      "--storage", tmp_path / "studies.log"],
                                     "the tiny backbone has no pretrained weights"),
        "compare-unknown-normal-class": (["compare", "--backbone", "tiny", "--weights", "none", "--task", "binary",
                                          "--normal-class", "healthy-ish", "--runs", "2", *TINY],
                                         "--normal-class 'healthy-ish' is not a class of the data"),
    }[case]
    result = runner.invoke(app, [str(a) for a in [*args, "--tracking-uri", store]])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.output  # (MLflow may say it made the experiment)
    assert "Traceback" not in result.output
    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [(r.info.run_name, r.info.status) for r in runs] == []
