"""What a final model carries besides its classifier, so that every answer says how far to trust it:

- the out-of-distribution detector (models/ood.py, fitted by training/ood.py) and its threshold: `ood_score` and
  `in_distribution` per image;
- the split-conformal calibration (training/conformal.py): a prediction set per image at a chosen coverage.

The flag never changes the class: a flagged image keeps what the classifier says, so accuracy, the share flagged and
the share of confident wrong calls can all be reported honestly side by side. (Reading a flagged field zoomed out,
as if taken at a higher magnification than the training lab's, was tried and left out: it lowered the chosen
model's accuracy on magnified validation images from 93.4% to 88.8%; benchmarks/RESULTS.md, "Right outside the lab".)

Saved as a folder (`reliability/` of a stage run, an artifact of the registered model): the detector as a Keras
file, everything else in reliability.json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import keras
import numpy as np

from mtl_suite.data.images import resize
from mtl_suite.training.conformal import DEFAULT_COVERAGE, ConformalCalibration

ARTIFACT = "reliability"
DETECTOR_FILE = "detector.keras"
INFO_FILE = "reliability.json"
BATCH = 64

Classify = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) uint8 -> (N, classes) probabilities


@dataclass(frozen=True)
class Readings:
    """Per image: class probabilities, and the OOD score and flag."""

    proba: np.ndarray
    ood_score: np.ndarray
    in_distribution: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        return ~self.in_distribution


@dataclass
class Reliability:
    detector: keras.Model
    threshold: float
    image_size: int
    calibration: ConformalCalibration | None  # None: the run had no held-out development images
    flag_rate: float
    heldout_flagged_share: float = math.nan
    info: dict = field(default_factory=dict)  # what else the fitting recorded (feature backbone, n, stain)

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """The detector's score per image; predict_on_batch, not predict: a served request is a few images, and
        predict's per-call set-up would cost more than the network."""
        pixels = np.asarray(pixels, dtype="float32")
        chunks = [np.asarray(self.detector.predict_on_batch(pixels[i:i + BATCH])) for i in range(0, len(pixels), BATCH)]
        return np.concatenate(chunks).astype(np.float64).reshape(-1) if chunks else np.zeros(0)

    def read(self, images: Sequence[np.ndarray], classify: Classify,
             plain_proba: np.ndarray | None = None) -> Readings:
        """`images` raw (any size; resized as in training) or already at the model's size. `plain_proba`: the
        classifier's probabilities when the caller has them (a stage run's test part)."""
        pixels = np.stack([resize(image, self.image_size) for image in images])
        scores = self.scores(pixels)
        proba = np.asarray(classify(pixels) if plain_proba is None else plain_proba, dtype=np.float64)
        return Readings(proba, scores, scores <= self.threshold)

    def sets(self, proba: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> np.ndarray | None:
        return None if self.calibration is None else self.calibration.sets(proba, coverage)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.detector.save(folder / DETECTOR_FILE)
        info = {**self.info, "threshold": self.threshold, "image_size": self.image_size, "flag_rate": self.flag_rate,
                "heldout_flagged_share": self.heldout_flagged_share,
                "conformal_scores": list(self.calibration.scores) if self.calibration else None}
        (folder / INFO_FILE).write_text(json.dumps(info, indent=1))
        return folder

    @classmethod
    def load(cls, folder: Path) -> "Reliability":
        import mtl_suite.models.serializable  # noqa: F401  registers the detector's layers for the safe-mode load

        info = json.loads((folder / INFO_FILE).read_text())
        scores = info.pop("conformal_scores")
        info.pop("zooms", None)  # written by the runs that tried zoomed-out readings (issue 33's candidates)
        return cls(keras.saving.load_model(folder / DETECTOR_FILE, safe_mode=True, compile=False),
                   float(info.pop("threshold")), int(info.pop("image_size")),
                   ConformalCalibration(tuple(scores)) if scores else None, float(info.pop("flag_rate")),
                   float(info.pop("heldout_flagged_share")), info)
