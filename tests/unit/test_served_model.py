"""The registered pyfunc as MLflow saves and loads it (models-from-code, a tiny Keras classifier and detector in
place of a trained one): a loaded model reads no file a request names unless its environment turns paths on, and
`mtl-suite predict` reads its files itself."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from mtl_suite.cli.registry import predict_files
from mtl_suite.paths import SAMPLE_IMAGES
from mtl_suite.serving import pyfunc as serving

SAMPLE = sorted(SAMPLE_IMAGES.rglob("*.jpg"))[0]
SIZE = 16
CLASSES = ["normal", "blast"]


def _tiny(units: int, activation: str | None):
    import keras

    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(units, activation=activation)])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model folder as `promote` logs it (without the code copy: the suite is importable here)."""
    import mlflow.keras

    from mtl_suite.training.conformal import ConformalCalibration
    from mtl_suite.training.reliability import Reliability

    root = tmp_path_factory.mktemp("served")
    mlflow.keras.save_model(_tiny(len(CLASSES), "softmax"), str(root / "keras"), pip_requirements=["keras"])
    (root / "model_info.json").write_text(json.dumps({"class_names": CLASSES, "image_size": SIZE}))
    Reliability(_tiny(1, None), 1e9, SIZE, ConformalCalibration((0.1, 0.2, 0.3)), 0.015).save(root / "reliability")
    mlflow.pyfunc.save_model(
        str(root / "model"), python_model=str(Path(serving.__file__).with_name("model_code.py")),
        artifacts={serving.KERAS_ARTIFACT: str(root / "keras"), serving.INFO_ARTIFACT: str(root / "model_info.json"),
                   serving.RELIABILITY_ARTIFACT: str(root / "reliability")},
        signature=serving.signature(), pip_requirements=["mlflow"])
    return root / "model"


@pytest.fixture
def loaded(model_dir, monkeypatch):
    """The model loaded with no paths setting in the environment, as `mlflow models serve` would run it."""
    monkeypatch.delenv(serving.PATHS_ENV, raising=False)
    return mlflow.pyfunc.load_model(str(model_dir))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def test_a_loaded_model_refuses_a_server_path_and_takes_base64(loaded, monkeypatch):
    assert SAMPLE.is_file()  # a real file on this machine: refused for what it is, not for being missing
    with pytest.raises(MlflowException, match="file paths are turned off here: send the file's bytes as base64"):
        loaded.predict(pd.DataFrame({"image": [str(SAMPLE)]}))
    for value in ("0", "true", "yes", ""):  # only "1" turns paths on
        monkeypatch.setenv(serving.PATHS_ENV, value)
        with pytest.raises(MlflowException, match="file paths are turned off"):
            loaded.predict(pd.DataFrame({"image": [str(SAMPLE)]}))
    monkeypatch.delenv(serving.PATHS_ENV)
    answer = loaded.predict(pd.DataFrame({"image": [_b64(SAMPLE)]}))
    assert answer["error"][0] is None and answer["label"][0] in CLASSES


def test_paths_are_read_only_where_the_environment_turns_them_on(loaded, monkeypatch):
    """What `mtl-suite serve --allow-paths` sets (tests/unit/test_safe_defaults.py checks that it does)."""
    monkeypatch.setenv(serving.PATHS_ENV, "1")
    by_path = loaded.predict(pd.DataFrame({"image": [str(SAMPLE)]}))
    by_bytes = loaded.predict(pd.DataFrame({"image": [_b64(SAMPLE)]}))
    assert by_path["error"][0] is None
    np.testing.assert_allclose(by_path["probabilities"][0], by_bytes["probabilities"][0])


def test_predict_reads_its_files_itself_and_names_each_bad_one(loaded, tmp_path, make_image, write_bad):
    """`mtl-suite predict` needs no paths setting: it sends arrays. A batch that the model refuses whole (every image
    unusable) still gives each file its reason."""
    sent = []

    class Recording:
        def predict(self, frame, params=None):
            sent.extend(frame["image"])
            return loaded.predict(frame, params=params)

    good = make_image(tmp_path / "good.png", size=(40, 30))
    tiny = make_image(tmp_path / "tiny.png", size=(4, 4))
    broken = write_bad(tmp_path / "broken.jpg", "truncated-jpeg")
    frame = predict_files(Recording(), [good, broken, tiny, SAMPLE], batch_size=3)
    assert list(frame["file"]) == [str(good), str(broken), str(tiny), str(SAMPLE)]
    errors = list(frame["error"])
    assert errors[0] is None and errors[3] is None and frame["label"][0] in CLASSES
    assert errors[1].startswith("truncated or corrupt image") and errors[2].startswith("image too small: 4x4")
    assert frame["probabilities"][1] is None and frame["label"][2] is None
    assert sent and all(isinstance(item, np.ndarray) for item in sent)
    alone = predict_files(loaded, [tiny])  # the only image is unusable: the model refuses the batch
    assert alone["error"][0].startswith("image too small: 4x4")
