"""Datasets: layouts on disk, the manifest, grouped splits (and groups from file names), input pipelines."""

from __future__ import annotations

from pathlib import Path

from mtl_suite.paths import SAMPLE_IMAGES, SAMPLE_SEGMENTED


def resolve_data_path(path: str | Path | None) -> Path:
    """The user's path, or the bundled sample so that every command runs offline on a fresh clone."""
    return Path(path) if path is not None else SAMPLE_IMAGES


def default_masks_for(path: str | Path | None) -> Path | None:
    """The bundled sample comes with the dataset authors' segmentations; other data has none unless given."""
    return SAMPLE_SEGMENTED if path is None else None
