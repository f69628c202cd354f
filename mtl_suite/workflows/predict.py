"""`mtl-suite predict`'s work, in-process: image files and folders in, one row per file out (class, probabilities,
out-of-distribution flag, prediction set, or why the file could not be used). The CLI renders the rows
(cli/registry.py); benchmarks and tests call these directly."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from mtl_suite.data.images import is_image_file
from mtl_suite.errors import UserError
from mtl_suite.serving.pyfunc import COLUMN, COVERAGE_PARAM, OUTPUT_COLUMNS, ImageError, read_file, to_image
from mtl_suite.tracking.reachability import check_tracking_uri
from mtl_suite.tracking.setup import resolve_tracking_uri
from mtl_suite.training.conformal import DEFAULT_COVERAGE


def collect_images(inputs: list[Path]) -> list[Path]:
    """Files as given (a bad one gets an error row), folders expanded to their image files, sorted."""
    files: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if is_image_file(p))
            if not found:
                raise UserError(f"{item}: folder has no image files (.jpg, .jpeg, .png, .bmp, .tif, .tiff)")
            files.extend(found)
        elif item.exists():
            files.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    return files


def load_pyfunc(model_uri: str, tracking_uri: str | None, say: Callable[[str], None] = lambda message: None):
    """A registered or logged model (any URI MLflow loads) as the suite's pyfunc; a model that cannot be loaded is
    one line naming the URI."""
    if model_uri.startswith(("models:/", "runs:/")):  # a local folder needs no store
        check_tracking_uri(resolve_tracking_uri(tracking_uri))
    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    say(f"loading {model_uri}")
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        hint = " (run `mtl-suite promote` first)" if model_uri.startswith("models:/") else ""
        raise UserError(f"cannot load model {model_uri}{hint}: {str(exc).splitlines()[0][:300]}") from None


def predict_files(pyfunc, files: list[Path], batch_size: int = 32, coverage: float = DEFAULT_COVERAGE,
                  progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Predict in batches (`progress` gets the count done). The files are read here and sent as arrays: the model
    reads no files itself (a served one must not), so no setting has to let it. A file that cannot be read or used
    gets an error row."""
    parts = []
    for start in range(0, len(files), batch_size):
        chunk = [str(p) for p in files[start:start + batch_size]]
        part = _predict_chunk(pyfunc, chunk, coverage)
        part.insert(0, "file", chunk)
        parts.append(part)
        if progress:
            progress(min(start + batch_size, len(files)))
    frame = pd.concat(parts, ignore_index=True)
    # the row's position within its batch means nothing here: the file column names the image
    frame["error"] = pd.Series([re.sub(r"^image \d+: ", "", e) if isinstance(e, str) else None
                                for e in frame["error"]], dtype=object)
    return frame


def _predict_chunk(pyfunc, paths: list[str], coverage: float):
    """The model's rows for the files that can be read, in place; an error row for each one that cannot."""
    rows = [dict.fromkeys(OUTPUT_COLUMNS) for _ in paths]
    images = {}
    for i, path in enumerate(paths):
        try:
            images[i] = read_file(path)
        except ImageError as exc:
            rows[i]["error"] = str(exc)
    if images:
        for i, row in zip(images, _model_rows(pyfunc, list(images.values()), coverage)):
            rows[i] = row
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in OUTPUT_COLUMNS})


def _model_rows(pyfunc, images: list, coverage: float) -> list[dict]:
    """One row per image; a batch in which no image is usable (the model refuses it whole) still names each one's
    reason."""
    try:
        frame = pyfunc.predict(pd.DataFrame({COLUMN: pd.Series(images, dtype=object)}),
                               params={COVERAGE_PARAM: coverage})
    except MlflowException:
        return [{**dict.fromkeys(OUTPUT_COLUMNS), "error": _reason(image)} for image in images]
    return frame.to_dict("records")


def _reason(image) -> str:
    try:
        to_image(image)
    except ImageError as exc:
        return str(exc)
    return "could not be classified"
