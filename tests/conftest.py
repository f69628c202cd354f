"""Shared fixtures: small image trees built in tmp dirs, the bad-input corpus, the CLI runner, ../shared/data."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

import mtl_suite  # noqa: F401  (first: sets TensorFlow's environment before a test module imports it)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The read-only real data beside the project (see ../shared/data/README.md); absent on a fresh clone.
SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
ARIA_ORIGINAL = SHARED_DATA / "aria-all" / "original"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test (and every CLI process it starts) caches under a tmp dir, never in ~/.cache/mtl-suite."""
    import os

    previous = os.environ.get("MTL_SUITE_CACHE")
    os.environ["MTL_SUITE_CACHE"] = str(tmp_path_factory.mktemp("mtl-suite-cache"))
    yield Path(os.environ["MTL_SUITE_CACHE"])
    if previous is None:
        os.environ.pop("MTL_SUITE_CACHE", None)
    else:
        os.environ["MTL_SUITE_CACHE"] = previous


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says why (tests must pass on a fresh clone without it)."""
    if not ARIA_ORIGINAL.is_dir():
        pytest.skip(f"real data not present at {ARIA_ORIGINAL} (only beside the development checkout)")
    return SHARED_DATA


# --- images ------------------------------------------------------------------------------------------------------

def noise_rgb(size: tuple[int, int] = (40, 30), seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 noise; a different seed gives different bytes, so different content hashes."""
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def solid_rgb(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> np.ndarray:
    width, height = size
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (height, width, 3)).copy()


def write_image(path: Path, array: np.ndarray | None = None, *, seed: int = 0, size: tuple[int, int] = (40, 30),
                mode: str | None = None, **save_kwargs) -> Path:
    """Write an image (format from the suffix); noise from `seed` unless `array` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = noise_rgb(size, seed)
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        save_kwargs.setdefault("quality", 95)
    image.save(path, **save_kwargs)
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return write_image


def build_tree(root: Path, counts: dict[str, int], suffix: str = ".png", size: tuple[int, int] = (40, 30),
               seed: int = 0) -> Path:
    """Folder-per-class tree with `counts[class]` distinct noise images per class."""
    n = seed
    for label, count in counts.items():
        for i in range(count):
            n += 1
            write_image(root / label / f"{label}_{i:03d}{suffix}", seed=n, size=size)
    return root


@pytest.fixture
def make_tree() -> Callable[..., Path]:
    return build_tree


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """Two classes, six distinct PNGs each."""
    return build_tree(tmp_path / "data", {"normal": 6, "blast": 6})


# --- the bad-input corpus (issue 2) ------------------------------------------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims `width` x `height` pixels: a decompression bomb that costs
    nothing to write and is rejected before any pixel is allocated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise_rgb(size, seed)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_bad_file(path: Path, kind: str) -> Path:
    """One unusable image file of the given kind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zero-byte":
        path.write_bytes(b"")
    elif kind == "truncated-jpeg":
        data = jpeg_bytes(seed=99)
        path.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "text-as-jpg":
        path.write_text("this is not an image\n", encoding="utf-8")
    elif kind == "bomb":
        path.write_bytes(png_header(8000, 6000))  # 48 MP: over mtl_suite's 40 MP limit, under PIL's own
    elif kind == "huge-bomb":
        path.write_bytes(png_header(100_000, 100_000))  # 10 GP: PIL itself refuses it
    else:
        raise ValueError(kind)
    return path


@pytest.fixture
def write_bad() -> Callable[[Path, str], Path]:
    return write_bad_file


@pytest.fixture
def runner():
    from typer.testing import CliRunner

    return CliRunner()


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def tiny_recipe(stage: str = "classical", *, members: str = "", image_size: int = 32, folds: int = 2,
                cell_size: int | None = None) -> str:
    """A recipe file for the tiny test backbone (no ImageNet weights, one warm-up epoch, no fine-tuning): the
    `recipe:` section, with `members` as YAML (e.g. "[{}, {train.seed: 1}]") when it is an ensemble."""
    ensemble = f"\n  members: {members}" if members else ""
    cells = f"\n  cell_size: {cell_size}" if cell_size else ""
    return (f"recipe:\n  stage: {stage}\n  task: multiclass{ensemble}\n"
            f"data:\n  image_size: {image_size}{cells}\n  folds: {folds}\n"
            "train:\n  backbone: tiny\n  weights: none\n  warmup_epochs: 1\n  finetune_epochs: 0\n")
