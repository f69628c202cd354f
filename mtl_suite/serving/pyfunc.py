"""The registered model: an MLflow pyfunc that takes what a user has (image files, base64 image bytes, uint8 arrays
of any size) and returns, per image, class probabilities, the predicted label and the class names.

Input (one image per row; the column is called `image`):
  - a pandas DataFrame with a column `image`, or a list, or a single value; each value is one of
    * a path to an image file, read on the machine that runs the model, only where PATHS_ENV is "1" (`mtl-suite
      serve --allow-paths` sets it): off by default, so a served model (`mtl-suite serve`, `mlflow models serve`)
      never reads a file a request names. In-process callers read their files themselves (`read_file`) and pass
      arrays,
    * a base64 string of the encoded file bytes (JPEG, PNG, BMP, TIFF; an optional `data:image/...;base64,`
      prefix is dropped), or raw `bytes`,
    * an (H, W, 3) RGB array: a numpy uint8 array in-process, or nested lists of integers 0..255 (JSON).
  Over HTTP: {"dataframe_records": [{"image": "<base64>"}, ...]} or {"inputs": {"image": ["<base64>", ...]}}.

Output: a DataFrame, one row per input row, in order, with columns
  `label` (predicted class name), `probabilities` (one float per class, in `class_names` order), `class_names`,
  `ood_score` (the out-of-distribution detector's score: how unlike the training images the image is),
  `in_distribution` (false: flagged, the score is above the threshold fitted on held-out development images; the
  label is still the classifier's), `prediction_set` (the classes that cover the true class with the requested
  coverage, split-conformal; see training/reliability.py), `error` (null, or why this image could not be used; then
  the other values are null).
Parameter `coverage` (default 0.99): the prediction sets' coverage, e.g. {"params": {"coverage": 0.95}} over HTTP.
A request with no images, or one in which no image can be used, raises MlflowException(INVALID_PARAMETER_VALUE):
the scoring server answers HTTP 400 with the message and keeps serving.

Preprocessing is exactly training's: decode with training's decoder (`data.images.decode_rgb`, in memory: a request
never becomes a file on the server; same checks and limits as `read_rgb`), resize with `data.images.resize` to the
model's size; normalisation and stain control (`--stain`) are inside the Keras graph.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from mtl_suite.data.images import MAX_PIXELS, MIN_SIDE, decode_rgb, read_rgb, resize, too_small
from mtl_suite.errors import BadImageError, UserError
from mtl_suite.run_files import ModelInfo
from mtl_suite.training.conformal import DEFAULT_COVERAGE, check_coverage
from mtl_suite.training.reliability import Reliability

COLUMN = "image"
KERAS_ARTIFACT = "keras_model"
INFO_ARTIFACT = "model_info"  # the stage run's model_info.json as it was logged (run_files.py:ModelInfo)
RELIABILITY_ARTIFACT = "reliability"
COVERAGE_PARAM = "coverage"
# "1": strings may also name image files on the machine running the model. Unset or anything else: strings are base64
# only. An environment variable, not a request parameter: whoever may send requests must not be able to turn it on.
PATHS_ENV = "MTL_SUITE_ALLOW_PATHS"
BATCH = 32
OUTPUT_COLUMNS = ["label", "probabilities", "class_names", "ood_score", "in_distribution", "prediction_set", "error"]
_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
_SHOWN = 60


class ImageError(ValueError):
    """One unusable image in a batch; becomes that row's `error`."""


class MtlImageClassifier(PythonModel):
    """Raw images in, class probabilities with how far to trust them out, for a stage-3 (or classical) Keras model of
    mtl-suite and its reliability parts (training/reliability.py)."""

    # The input is validated by the model's signature and the checks below, not by predict()'s type hints
    # (MLflow would otherwise warn at class creation that there are none).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import mlflow.keras

        import mtl_suite.models.serializable  # noqa: F401  registers the suite's layers for the safe-mode load

        info = ModelInfo.read(Path(context.artifacts[INFO_ARTIFACT]), f"the model's {INFO_ARTIFACT} artifact")
        # safe_mode: a model file cannot smuggle Python code (Lambda bytecode) into the server.
        model = mlflow.keras.load_model(context.artifacts[KERAS_ARTIFACT], load_model_kwargs={"safe_mode": True})
        # every model `promote` registers has one (it refuses a run without); a bare classifier answers without flags
        folder = context.artifacts.get(RELIABILITY_ARTIFACT)
        self.use(info, model, Reliability.load(Path(folder)) if folder else None)

    def use(self, info: ModelInfo, model, reliability: Reliability | None) -> None:
        """Set up from parts: load_context's, or a stage run's own model and parts (`evaluate` on a runs:/ URI)."""
        self.info, self.model, self.reliability = info, model, reliability
        self.class_names = list(info.class_names)  # a list: it is every answer's `class_names` column
        self.image_size = info.image_size

    reliability: Reliability | None = None

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would infer a schema from them
        items = input_items(model_input)
        if not items:
            raise MlflowException("empty payload: expected at least one image in the column 'image' "
                                  "(a base64 string of the file bytes or an (H, W, 3) uint8 array)",
                                  INVALID_PARAMETER_VALUE)
        coverage = requested_coverage(params)
        allow_paths = paths_allowed()
        images: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for index, item in enumerate(items):
            try:
                images.append(to_image(item, allow_paths))
                errors.append(None)
            except ImageError as exc:
                images.append(None)
                errors.append(f"image {index}: {exc}")
        good = [i for i, image in enumerate(images) if image is not None]
        if not good:
            shown = "; ".join(e for e in errors[:5] if e) + ("; ..." if len(errors) > 5 else "")
            raise MlflowException(f"no usable image in the request: {shown}", INVALID_PARAMETER_VALUE)
        rows = [{**dict.fromkeys(OUTPUT_COLUMNS), "class_names": self.class_names, "error": error} for error in errors]
        for i, row in zip(good, self.answers([images[i] for i in good], coverage)):
            rows[i].update(row)
        # object columns keep None as None (pandas 3 string columns would turn it into NaN, which is not JSON)
        return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in OUTPUT_COLUMNS})

    def answers(self, images: list[np.ndarray], coverage: float) -> list[dict]:
        """Per image: label and probabilities, with the detector's score and flag and the prediction set."""
        if self.reliability is None:
            proba = self.probabilities(np.stack([resize(image, self.image_size) for image in images]))
            return [{"label": self.class_names[int(np.argmax(p))], "probabilities": [float(v) for v in p]}
                    for p in proba]
        readings = self.reliability.read(images, self.probabilities)
        sets = self.reliability.sets(readings.proba, coverage)
        return [{"label": self.class_names[int(np.argmax(p))], "probabilities": [float(v) for v in p],
                 "ood_score": float(readings.ood_score[k]), "in_distribution": bool(readings.in_distribution[k]),
                 "prediction_set": None if sets is None else
                 [name for name, inside in zip(self.class_names, sets[k]) if inside]}
                for k, p in enumerate(readings.proba)]

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, classes); a single sigmoid column becomes [1 - p, p] as in training."""
        from mtl_suite.training.metrics import as_class_probabilities

        chunks = [np.asarray(self.model.predict_on_batch(batch[i:i + BATCH].astype("float32")))
                  for i in range(0, len(batch), BATCH)]
        return as_class_probabilities(np.concatenate(chunks))


def requested_coverage(params: dict | None) -> float:
    """The `coverage` parameter (default DEFAULT_COVERAGE); a value outside (0, 1) is the request's error."""
    value = (params or {}).get(COVERAGE_PARAM, DEFAULT_COVERAGE)
    try:
        coverage = float(value)
        check_coverage(coverage)
    except (TypeError, ValueError, UserError):
        raise MlflowException(f"parameter {COVERAGE_PARAM!r}: expected a number between 0 and 1 (exclusive), e.g. "
                              f"0.95. Received: {value!r}", INVALID_PARAMETER_VALUE) from None
    return coverage


def signature():
    """The logged model's signature: one `image` column of any type in (the checks in this module decide what is usable),
    the output columns out, and the prediction sets' `coverage` as a parameter. The scoring server parses requests
    against it."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), COLUMN)]),
        outputs=Schema([ColSpec(DataType.string, "label"), ColSpec(Array(DataType.double), "probabilities"),
                        ColSpec(Array(DataType.string), "class_names"),
                        ColSpec(DataType.double, "ood_score", required=False),
                        ColSpec(DataType.boolean, "in_distribution", required=False),
                        ColSpec(Array(DataType.string), "prediction_set", required=False),
                        ColSpec(DataType.string, "error", required=False)]),
        params=ParamSchema([ParamSpec(COVERAGE_PARAM, DataType.double, DEFAULT_COVERAGE)]))


def input_items(model_input: Any) -> list[Any]:
    """The images of a request as a flat list, whatever container MLflow or the caller used."""
    if isinstance(model_input, pd.DataFrame):
        if COLUMN in model_input.columns:
            return _expand_string_lists(list(model_input[COLUMN]))
        if len(model_input.columns) == 1 and model_input.columns[0] in (0, "0"):
            return _expand_string_lists(list(model_input.iloc[:, 0]))
        raise MlflowException(f"expected a column named 'image'. Received columns: {list(model_input.columns)}",
                              INVALID_PARAMETER_VALUE)
    if isinstance(model_input, dict):
        if COLUMN not in model_input:
            raise MlflowException(f"expected a key 'image'. Received keys: {list(model_input)}",
                                  INVALID_PARAMETER_VALUE)
        return _as_items(model_input[COLUMN])
    return _as_items(model_input)


def _expand_string_lists(items: list[Any]) -> list[Any]:
    """MLflow turns {"inputs": {"image": ["b64", "b64"]}} into ONE row holding the list: a cell that is a flat
    list of strings (never an image) stands for that many images."""
    out: list[Any] = []
    for item in items:
        # Not np.ndim(item): on ragged pixel lists (a bad request) it raises instead of leaving them to check_array.
        flat = isinstance(item, (list, tuple)) or (isinstance(item, np.ndarray) and item.ndim == 1)
        if flat and len(item) and all(isinstance(v, (str, bytes)) for v in item):
            out.extend(item)
        else:
            out.append(item)
    return out


def _as_items(value: Any) -> list[Any]:
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        if value.ndim == 4:
            return list(value)  # a stack of same-size images
        if value.ndim == 3:
            return [value]  # one image
    if isinstance(value, (list, tuple, pd.Series, np.ndarray)):
        return list(value)
    return [value]


def paths_allowed() -> bool:
    """Whether request strings may name files here: only where the environment says "1" (`mtl-suite serve
    --allow-paths`); plain `mlflow models serve` sets nothing, and then a client cannot make the server read its
    files."""
    return os.environ.get(PATHS_ENV) == "1"


def read_file(path: str | Path) -> np.ndarray:
    """An image file as the (H, W, 3) uint8 array the model takes, read by the caller in its own process: how
    `mtl-suite predict` and `evaluate` hand files to a model that reads none itself. ImageError says why a file
    cannot be used (the caller names the file)."""
    try:
        return read_rgb(path)
    except BadImageError as exc:
        raise ImageError(exc.reason) from None


def to_image(item: Any, allow_paths: bool = False) -> np.ndarray:
    """One input value as an (H, W, 3) uint8 RGB array, or ImageError saying what was wrong with it. Images
    smaller than training accepts (data.images.MIN_SIDE) are refused here too."""
    image = _to_image(item, allow_paths)
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(too_small(width, height))
    return image


def _to_image(item: Any, allow_paths: bool) -> np.ndarray:
    if item is None or (isinstance(item, float) and np.isnan(item)):
        raise ImageError("empty entry; expected a base64 string of the file bytes or an (H, W, 3) uint8 array")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(item), "bytes")
    if isinstance(item, (str, os.PathLike)):
        return _from_string(os.fspath(item), allow_paths)
    if isinstance(item, (np.ndarray, list, tuple)):
        return check_array(item)
    raise ImageError(f"unsupported value of type {type(item).__name__}; expected a base64 string of the file "
                     f"bytes or an (H, W, 3) uint8 array")


def _from_string(text: str, allow_paths: bool) -> np.ndarray:
    text = text.strip()
    if not text:
        raise ImageError("empty string; expected base64 image bytes")
    if allow_paths and len(text) < 4096 and Path(text).is_file():
        try:
            return read_rgb(text)
        except BadImageError as exc:
            raise ImageError(str(exc)) from None
    payload = _DATA_URL.sub("", text, count=1)
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError) as exc:
        shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
        what = "not an existing image file and not" if allow_paths else "not"
        hint = "" if allow_paths or not _looks_like_path(text) else \
            " (file paths are turned off here: send the file's bytes as base64)"
        raise ImageError(f"{what} valid base64 ({exc}){hint}. Received: {shown!r}") from None
    return decode_bytes(raw, "base64")


def _looks_like_path(text: str) -> bool:
    return len(text) < 4096 and ("\\" in text or "." in Path(text).name or text.startswith(("/", "~", "./")))


def decode_bytes(raw: bytes, what: str) -> np.ndarray:
    """Decode in memory with training's decoder (data.images.decode_rgb), so limits and messages match; a request
    never leaves a file on the server."""
    if not raw:
        raise ImageError(f"empty {what} payload (0 bytes)")
    try:
        return decode_rgb(raw, what)
    except BadImageError as exc:
        raise ImageError(f"{what} payload ({len(raw)} bytes): {exc.reason}") from None


def check_array(value: Any) -> np.ndarray:
    """uint8 (H, W, 3); nested integer lists 0..255 (JSON cannot say uint8) are accepted too."""
    from_json = not isinstance(value, np.ndarray)
    try:
        array = np.asarray(value)
    except ValueError:
        raise ImageError("ragged nested lists; expected an (H, W, 3) array") from None
    if array.dtype == object:
        raise ImageError("ragged or mixed nested lists; expected an (H, W, 3) array of integers 0..255")
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"expected an RGB array of shape (H, W, 3). Received shape {array.shape}")
    height, width = array.shape[:2]
    if height < 1 or width < 1:
        raise ImageError(f"array has no pixels ({width}x{height})")
    if height * width > MAX_PIXELS:
        raise ImageError(f"image too large: {width}x{height} pixels, limit {MAX_PIXELS}")
    if array.dtype == np.uint8:
        return array
    if from_json and np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    expected = "integers 0..255" if from_json else "dtype uint8"
    raise ImageError(f"expected {expected} (raw RGB pixels). Received dtype {array.dtype}"
                     + (f" with values {array.min()}..{array.max()}" if array.size and array.dtype.kind in "iuf"
                        else ""))


def encode_file(path: str | Path) -> str:
    """A file's bytes as base64 text, the form a JSON request carries."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
