"""Reading images from disk into RGB uint8 arrays, with one clear error per unusable file.

PIL is used for decoding because it tells a truncated JPEG from a good one (OpenCV silently returns half an
image), and it reads grayscale, palette, RGBA, CMYK and 16-bit TIFF, which are all converted to 8-bit RGB.
Only the formats we name are decoded (PIL's other plugins, e.g. EPS through Ghostscript, are never reached from a
user's file or a served request), headers are checked against a pixel budget before any pixel is allocated, and
images too small to show a cell are refused.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from mtl_suite.errors import BadImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
# Far above any microscope field we expect (ALL-IDB1 is 2592x1944 = 5 MP); a guard against decompression bombs.
MAX_PIXELS = 40_000_000
# Smallest side of an image used as model input (datasets, served requests): below it no cell can show (cell crops
# are written at 32 px or more), and a 1x1 file is a placeholder, not data. Masks and other reads have no minimum.
MIN_SIDE = 8
# By content, not suffix: a GIF or WebP renamed .png is refused, not decoded by a plugin we never meant to use.
FORMATS = ("JPEG", "PNG", "BMP", "TIFF")

ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_size(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header only; raises BadImageError for files that are not images."""
    with _open(Path(path), max_pixels) as image:
        return image.size


def image_header(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[str, str, int, int, bool]:
    """(format, mode, width, height, has_transparency) from the header only; BadImageError as for read_rgb."""
    with _open(Path(path), max_pixels) as image:
        transparent = image.mode in _ALPHA_MODES or "transparency" in image.info
        return image.format or "", image.mode, image.width, image.height, transparent


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def read_rgb(path: str | Path, max_pixels: int = MAX_PIXELS, min_side: int = 1) -> np.ndarray:
    """Decode a whole image to an (H, W, 3) uint8 array."""
    path = Path(path)
    with _open(path, max_pixels, min_side) as image:
        return _decoded(image, path)


def decode_rgb(raw: bytes, name: str, max_pixels: int = MAX_PIXELS, min_side: int = 1) -> np.ndarray:
    """read_rgb for a file's bytes held in memory (a served request's image): the same decoder, checks and
    messages, and nothing written to disk. `name` stands for the path in a BadImageError."""
    if not raw:
        raise BadImageError(name, "empty file (0 bytes)")
    with _opened(io.BytesIO(raw), name, max_pixels, min_side) as image:
        return _decoded(image, name)


def _decoded(image: Image.Image, name: str | Path) -> np.ndarray:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(name, f"truncated or corrupt image ({exc})") from None
    try:
        return to_rgb_array(image)
    except (ValueError, OSError) as exc:
        raise BadImageError(name, f"unsupported image mode {image.mode!r} ({exc})") from None


def read_resized(path: str | Path, size: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode and resize to size x size (aspect ratio is not kept, as in keras.utils.image_dataset_from_directory,
    so training and serving see the same geometry)."""
    return resize(read_rgb(path, max_pixels), size)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area averaging on an axis that shrinks (no aliasing), bilinear on one that grows.

    An image that shrinks on one axis and grows on the other (a wide cell crop) is resized one axis at a time, so
    each axis gets its own method; `pipeline.file_dataset` does the same in TF ops and gets the same pixels.
    """
    height, width = image.shape[:2]
    if height == size and width == size:
        return image
    if (height >= size) == (width >= size):
        method = cv2.INTER_AREA if height >= size else cv2.INTER_LINEAR
        return cv2.resize(image, (size, size), interpolation=method)
    image = cv2.resize(image, (size, height), interpolation=cv2.INTER_AREA if width > size else cv2.INTER_LINEAR)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if height > size else cv2.INTER_LINEAR)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert any PIL mode to 8-bit RGB; alpha is composited on white (the background of a smear)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def too_small(width: int, height: int, min_side: int = MIN_SIDE) -> str:
    return f"image too small: {width}x{height} pixels, expected at least {min_side}x{min_side}"


def _open(path: Path, max_pixels: int, min_side: int = 1) -> Image.Image:
    if not path.exists():
        raise BadImageError(path, "file not found")
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty file (0 bytes)")
    return _opened(path, path, max_pixels, min_side)


def _opened(source: Path | io.BytesIO, path: str | Path, max_pixels: int, min_side: int) -> Image.Image:
    """The header of `source` read and checked (format, pixel budget, size); `path` names it in errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source, formats=FORMATS)
    except UnidentifiedImageError:
        raise BadImageError(path, "not an image (unknown format; expected JPEG, PNG, BMP or TIFF)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own limit is far above ours; its message carries the pixel count the header claims.
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        received = f": {int(claimed.group(1))} pixels" if claimed else ""
        raise BadImageError(path, f"image too large{received}, limit {max_pixels}") from None
    except OSError as exc:
        raise BadImageError(path, f"cannot be read ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise BadImageError(path, f"image too large: {width}x{height} pixels, limit {max_pixels}")
    if width < 1 or height < 1:
        image.close()
        raise BadImageError(path, f"image has no pixels ({width}x{height})")
    if min(width, height) < min_side:
        image.close()
        raise BadImageError(path, too_small(width, height, min_side))
    return image
