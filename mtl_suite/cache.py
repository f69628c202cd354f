"""The suite's on-disk cache: where it lives, what is in it, and how to empty it.

Everything under the root can be rebuilt from the inputs, so clearing it only costs time. Clearing removes only the
sections the suite itself writes (never the whole root: $MTL_SUITE_CACHE may point at a folder that holds other
things too).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl_suite.errors import UserError
from mtl_suite.io_utils import atomic_path

logger = logging.getLogger(__name__)

# section folder -> what it holds (for `mtl-suite cache info`)
SECTIONS = {
    "features": "backbone features of frozen warm-up phases, keyed by weights and image digests",
    "activations": "activations at a cut inside the backbone, one file per image, for fine-tuning its top",
    "cells": "single-cell crops cut from the smears' development images (stage 2)",
    "policies": "augmentation policies at tuned strengths (albumentations YAML)",
    "images": "decoded and resized image arrays, keyed by the images' digests and the size",
    "checkpoints": "epoch checkpoints of unfinished folds (deleted when their run finishes)",
}
DEFAULT_FEATURE_CACHE_MB = 2048
DEFAULT_IMAGE_CACHE_MB = 2048
DEFAULT_ACTIVATION_CACHE_MB = 16384  # Xception's exit flow at 299 px: about 1.4 MB an image in float32


def default_cache_root() -> Path:
    return Path(os.environ.get("MTL_SUITE_CACHE", Path.home() / ".cache" / "mtl-suite"))


def image_store() -> ArrayStore:
    """Decoded images: $MTL_SUITE_CACHE/images, limit $MTL_SUITE_IMAGE_CACHE_MB."""
    return ArrayStore(default_cache_root() / "images", image_cache_limit_bytes())


def feature_cache_limit_bytes() -> int:
    """$MTL_SUITE_FEATURE_CACHE_MB (default 2048); 0 keeps features in memory only (nothing written)."""
    return _limit_bytes("MTL_SUITE_FEATURE_CACHE_MB", DEFAULT_FEATURE_CACHE_MB)


def activation_cache_limit_bytes() -> int:
    """$MTL_SUITE_ACTIVATION_CACHE_MB (default 16384); 0: activations are computed for each use, never written."""
    return _limit_bytes("MTL_SUITE_ACTIVATION_CACHE_MB", DEFAULT_ACTIVATION_CACHE_MB)


def image_cache_limit_bytes() -> int:
    """$MTL_SUITE_IMAGE_CACHE_MB (default 2048); 0: decoded images are never written to disk."""
    return _limit_bytes("MTL_SUITE_IMAGE_CACHE_MB", DEFAULT_IMAGE_CACHE_MB)


def _limit_bytes(variable: str, default_mb: int) -> int:
    text = os.environ.get(variable, str(default_mb))
    try:
        megabytes = float(text)
    except ValueError:
        raise UserError(f"${variable} must be a number of megabytes. Received: {text!r}") from None
    if megabytes < 0:
        raise UserError(f"${variable} must be 0 or more. Received: {text!r}")
    return int(megabytes * 2**20)


@dataclass(frozen=True)
class SectionUsage:
    name: str
    path: Path
    files: int
    bytes: int
    description: str


def usage(root: Path | None = None) -> list[SectionUsage]:
    root = root or default_cache_root()
    out = []
    for name, description in SECTIONS.items():
        files = [p for p in (root / name).rglob("*") if p.is_file()] if (root / name).is_dir() else []
        out.append(SectionUsage(name, root / name, len(files), sum(_size(p) for p in files), description))
    return out


def clear(sections: list[str], root: Path | None = None) -> tuple[int, int]:
    """Remove the named sections' folders; returns (files, bytes) removed."""
    root = root or default_cache_root()
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise UserError(f"unknown cache section {unknown[0]!r}. Expected one of: {', '.join(SECTIONS)}, all")
    files = total = 0
    for section in usage(root):
        if section.name in sections and section.path.is_dir():
            files, total = files + section.files, total + section.bytes
            shutil.rmtree(section.path, ignore_errors=True)  # another process may be removing entries too
    return files, total


class ArrayStore:
    """Arrays in `root` as `<key>.npy`, at most `max_bytes` in all; 0 bytes: never written, always a miss."""

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        try:
            array = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (ValueError, OSError, EOFError):  # unreadable (disk trouble, foreign file): recompute it
            logger.warning("cache entry %s is unreadable; recomputing it", path)
            path.unlink(missing_ok=True)
            return None
        _touch(path)  # eviction goes by last use
        return array

    def save(self, key: str, array: np.ndarray, evict: bool = True) -> None:
        """`evict=False` for many small entries in a row: listing the folder after each would cost quadratic time;
        the caller evicts once at the end."""
        if array.nbytes > self.max_bytes:
            return  # would evict everything and still not fit
        with atomic_path(self.path(key)) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
        if evict:
            self.evict(keep=self.path(key))

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, last use) of every entry, least recently used first."""
        out = []
        for path in self.root.glob("*.npy") if self.root.is_dir() else []:
            try:
                stat = path.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            out.append((path, stat.st_size, stat.st_mtime))
        return sorted(out, key=lambda entry: entry[2])

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used entries until the total fits the limit; returns how many went."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        return removed


def _touch(path: Path) -> None:
    try:
        os.utime(path, (time.time(), time.time()))
    except OSError:  # read-only cache or removed meanwhile: the entry just ages as if unused
        pass


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed by a concurrent eviction between listing and stat
        return 0
