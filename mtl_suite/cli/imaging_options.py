"""Options and file helpers shared by the imaging commands (preprocess, segment, augment)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Iterator

import cv2
import numpy as np
import typer

from mtl_suite.data.images import is_image_file
from mtl_suite.errors import UserError
from mtl_suite.cli.common import choice
from mtl_suite.imaging.roi import OFFSET_MODES, RoiParams
from mtl_suite.io_utils import atomic_path

Red = Annotated[int, typer.Option("--red", help="ROI red offset (paper: 88).")]
Green = Annotated[int, typer.Option("--green", help="ROI green offset (paper: 41).")]
Blue = Annotated[int, typer.Option("--blue", help="ROI blue offset (paper: 20).")]
Threshold = Annotated[int, typer.Option("--threshold", help="ROI threshold t; WBC = monochrome value below t.")]
OffsetMode = Annotated[choice(OFFSET_MODES), typer.Option("--offset-mode", help="subtract: offsets darken (finds cells); add: the "
                                                                "paper's literal wording (finds none on real data).")]


def roi_params(red: int, green: int, blue: int, threshold: int, mode: str) -> RoiParams:
    return RoiParams(red, green, blue, threshold, mode)


def image_files(path: Path) -> Iterator[Path]:
    """A single image, or every image under a folder (recursively, sorted)."""
    if not path.exists():
        raise UserError(f"path not found: {path}")
    if path.is_file():
        if not is_image_file(path):
            raise UserError(f"{path}: not an image (expected .jpg, .png, .bmp or .tif)")
        yield path
        return
    found = False
    for candidate in sorted(path.rglob("*")):
        if is_image_file(candidate):
            found = True
            yield candidate
    if not found:
        raise UserError(f"no images under {path} (expected .jpg, .png, .bmp or .tif files)")


def relative_name(path: Path, root: Path) -> Path:
    return Path(path.name) if root.is_file() else path.relative_to(root)


def write_png(path: Path, image: np.ndarray) -> None:
    """An RGB or single-channel uint8 image as PNG, written atomically (a killed command leaves no half file)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", bgr)
    with atomic_path(path) as tmp:
        tmp.write_bytes(encoded.tobytes())
