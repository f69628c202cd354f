"""The suite's on-disk cache: where it lives, what is in it, and how to empty it.

Everything under the root can be rebuilt from the inputs, so clearing it only costs time. Clearing removes only the
sections the suite itself writes (never the whole root: $MTL_SUITE_CACHE may point at a folder that holds other
things too).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mtl_suite.errors import UserError

# section folder -> what it holds (for `mtl-suite cache info`)
SECTIONS = {
    "features": "backbone features of frozen warm-up phases, keyed by weights and image digests",
    "cells": "single-cell crops cut from the smears' development images (stage 2)",
    "policies": "augmentation policies at tuned strengths (albumentations YAML)",
}
DEFAULT_FEATURE_CACHE_MB = 2048


def default_cache_root() -> Path:
    return Path(os.environ.get("MTL_SUITE_CACHE", Path.home() / ".cache" / "mtl-suite"))


def feature_cache_limit_bytes() -> int:
    """$MTL_SUITE_FEATURE_CACHE_MB (default 2048); 0 keeps features in memory only (nothing written)."""
    text = os.environ.get("MTL_SUITE_FEATURE_CACHE_MB", str(DEFAULT_FEATURE_CACHE_MB))
    try:
        megabytes = float(text)
    except ValueError:
        raise UserError(f"$MTL_SUITE_FEATURE_CACHE_MB must be a number of megabytes. Received: {text!r}") from None
    if megabytes < 0:
        raise UserError(f"$MTL_SUITE_FEATURE_CACHE_MB must be 0 or more. Received: {text!r}")
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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed by a concurrent eviction between listing and stat
        return 0
