"""Locations of bundled assets, so that every command has an offline default."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
SAMPLE_ROOT = ASSETS / "sample"
SAMPLE_IMAGES = SAMPLE_ROOT / "original"
SAMPLE_SEGMENTED = SAMPLE_ROOT / "segmented"
MOBILENET_025_WEIGHTS = ASSETS / "mobilenet_2_5_224_tf_no_top.h5"
