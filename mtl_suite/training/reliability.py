"""What a final model carries besides its classifier, so that every answer says how far to trust it:

- the out-of-distribution detector (models/ood.py, fitted by training/ood.py) and its threshold: `ood_score` and
  `in_distribution` per image;
- the split-conformal calibration (training/conformal.py): a prediction set per image at a chosen coverage;
- the readings it may use (imaging/readings.py): an image that the detector flags is also read zoomed out (a field
  taken at a higher magnification than the training lab's), and when a zoomed-out reading looks like the training
  images (its score under the threshold), the model answers from the one that looks most like them. Unflagged
  images are always read plainly, as in training.

The flag and the score are the image's as given (its plain reading): a reading never clears a flag, and the flag
never changes the class (a flagged image keeps what the classifier says about its reading), so accuracy, the share
flagged and the share of confident wrong calls can all be reported honestly side by side.

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

from mtl_suite.imaging.readings import PLAIN, ZOOMS, reading
from mtl_suite.training.conformal import DEFAULT_COVERAGE, ConformalCalibration

ARTIFACT = "reliability"
DETECTOR_FILE = "detector.keras"
INFO_FILE = "reliability.json"
BATCH = 64

Classify = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) uint8 -> (N, classes) probabilities


@dataclass(frozen=True)
class Readings:
    """Per image: class probabilities, the OOD score and flag of the image as given, and the zoom it was read at
    (1: plainly)."""

    proba: np.ndarray
    ood_score: np.ndarray
    in_distribution: np.ndarray
    zoom: np.ndarray

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
    zooms: tuple[float, ...] = ZOOMS
    info: dict = field(default_factory=dict)  # what else the fitting recorded (feature backbone, n, stain)

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """The detector's score per image; predict_on_batch, not predict: a served request is a few images, and
        predict's per-call set-up would cost more than the network."""
        pixels = np.asarray(pixels, dtype="float32")
        chunks = [np.asarray(self.detector.predict_on_batch(pixels[i:i + BATCH])) for i in range(0, len(pixels), BATCH)]
        return np.concatenate(chunks).astype(np.float64).reshape(-1) if chunks else np.zeros(0)

    def read(self, images: Sequence[np.ndarray], classify: Classify,
             plain_proba: np.ndarray | None = None) -> Readings:
        """`images` raw (any size) or already at the model's size. `plain_proba`: the classifier's probabilities of
        the plain readings when the caller has them (a stage run's test part); then only re-read images are
        classified here."""
        plain = np.stack([reading(image, self.image_size) for image in images])
        scores = self.scores(plain)
        flagged = np.flatnonzero(scores > self.threshold)  # only these are read zoomed out: the rest as in training
        zoom, pixels = self._zoomed_readings([images[i] for i in flagged])
        proba = np.asarray(classify(plain) if plain_proba is None else plain_proba, dtype=np.float64).copy()
        chosen = flagged[zoom != PLAIN]
        if len(chosen):
            proba[chosen] = classify(pixels[zoom != PLAIN])
        zooms = np.full(len(images), PLAIN)
        zooms[flagged] = zoom
        return Readings(proba, scores, scores <= self.threshold, zooms)

    def _zoomed_readings(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Per image, the zoom whose reading scores lowest if that score is under the threshold (else PLAIN), and
        that reading's pixels."""
        zoom = np.full(len(images), PLAIN)
        pixels = np.zeros((len(images), self.image_size, self.image_size, 3), dtype=np.uint8)
        best = np.full(len(images), self.threshold)
        for candidate in self.zooms if images else ():
            zoomed = np.stack([reading(image, self.image_size, candidate) for image in images])
            scores = self.scores(zoomed)
            better = scores <= best
            pixels[better], best[better], zoom[better] = zoomed[better], scores[better], candidate
        return zoom, pixels

    def sets(self, proba: np.ndarray, coverage: float = DEFAULT_COVERAGE) -> np.ndarray | None:
        return None if self.calibration is None else self.calibration.sets(proba, coverage)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.detector.save(folder / DETECTOR_FILE)
        info = {**self.info, "threshold": self.threshold, "image_size": self.image_size, "flag_rate": self.flag_rate,
                "heldout_flagged_share": self.heldout_flagged_share, "zooms": list(self.zooms),
                "conformal_scores": list(self.calibration.scores) if self.calibration else None}
        (folder / INFO_FILE).write_text(json.dumps(info, indent=1))
        return folder

    @classmethod
    def load(cls, folder: Path) -> "Reliability":
        import mtl_suite.models.serializable  # noqa: F401  registers the detector's layers for the safe-mode load

        info = json.loads((folder / INFO_FILE).read_text())
        scores = info.pop("conformal_scores")
        return cls(keras.saving.load_model(folder / DETECTOR_FILE, safe_mode=True, compile=False),
                   float(info.pop("threshold")), int(info.pop("image_size")),
                   ConformalCalibration(tuple(scores)) if scores else None, float(info.pop("flag_rate")),
                   float(info.pop("heldout_flagged_share")), tuple(info.pop("zooms")), info)
