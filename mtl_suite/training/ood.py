"""Fitting the out-of-distribution detector (models/ood.py) on a run's development images, and its threshold on
images it did not fit on.

Feature space: the bundled ImageNet MobileNet (alpha 0.25; 256 pooled features at 224 px), frozen, behind the run's
own stain control, not the classifier's fine-tuned features. Being frozen, a detector fitted on k - 1 folds scores the k-th
fold exactly as the final detector will score a new image: the threshold comes from truly held-out scores, for every
kind of final model alike (a refit, which has no held-out development images, a fold ensemble, colour fusion, an
ensemble of runs). It is bundled (offline, 2 MB), and costs about a thirtieth of an Xception pass per image.

Score: the squared Mahalanobis distance to the nearest class mean under the classes' shared covariance, shrunk by
Ledoit-Wolf (scikit-learn's covariance estimator: 256 features from a few hundred to a few thousand images need
shrinkage, and scikit-learn is in the suite already; pyod and alibi-detect would add dependencies for the same
computation). The threshold is the held-out scores' conformal quantile, so that on average at most `flag_rate` of
new images like the development ones are flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import keras
import numpy as np

from mtl_suite.models.backbones import build_backbone
from mtl_suite.models.ood import detector_model
from mtl_suite.paths import MOBILENET_025_WEIGHTS
from mtl_suite.training.features import predict_in_chunks

FEATURE_BACKBONE = "mobilenet_025"
# The detector reads every image at the size its ImageNet weights were made for, whatever the classifier's input
# size: at 64 px (the tests' models) MobileNet's features cannot tell a smear from noise.
FEATURE_SIZE = 224
FLAG_RATE = 0.015  # the share of in-distribution images flagged, aimed at on held-out development images
BATCH = 64


@dataclass
class FittedDetector:
    model: keras.Model  # raw pixels (N, S, S, 3) -> (N,) score
    threshold: float  # a score above it is flagged
    heldout_scores: np.ndarray  # each development image's score from the detector fitted without its fold
    flag_rate: float

    @property
    def heldout_flagged_share(self) -> float:
        return float((self.heldout_scores > self.threshold).mean())


def feature_model(image_size: int, stain: str = "none") -> keras.Model:
    """Raw pixels at `image_size` -> [resized to FEATURE_SIZE] -> [stain control] -> ImageNet MobileNet-0.25 pooled
    features (256)."""
    features, _ = build_backbone(FEATURE_BACKBONE, FEATURE_SIZE, weights=str(MOBILENET_025_WEIGHTS), stain=stain)
    if image_size == FEATURE_SIZE:
        return features
    inputs = keras.Input((image_size, image_size, 3), name="image")
    resized = keras.layers.Resizing(FEATURE_SIZE, FEATURE_SIZE, antialias=image_size > FEATURE_SIZE,
                                    name="to_feature_size")(inputs)
    return keras.Model(inputs, features(resized), name="ood_features")


def fit_detector(images: np.ndarray, labels: np.ndarray, folds: Iterable[tuple[np.ndarray, np.ndarray]],
                 stain: str = "none", flag_rate: float = FLAG_RATE) -> FittedDetector:
    """`images` the development images at the model's size, `folds` (train, held-out) index pairs into them. Every
    image should be held out by exactly one fold (a one-fold split holds out its validation part only)."""
    extractor = feature_model(images.shape[1], stain)
    features = np.asarray(predict_in_chunks(extractor, images.astype("float32"), BATCH), dtype=np.float64)
    labels = np.asarray(labels)
    held_out = np.full(len(images), np.nan)
    for train, val in folds:
        held_out[val] = mahalanobis_scores(*fit_gaussians(features[train], labels[train]), features[val])
    scored = held_out[~np.isnan(held_out)]
    if not len(scored):
        raise ValueError("no held-out development images to set the detector's threshold on")
    means, precision = fit_gaussians(features, labels)
    return FittedDetector(detector_model(extractor, means, precision), conformal_threshold(scored, flag_rate),
                          scored, flag_rate)


def fit_gaussians(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class means ((C, D)) and the precision of the class-centred features, Ledoit-Wolf shrunk ((D, D))."""
    from sklearn.covariance import LedoitWolf

    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    return means, LedoitWolf().fit(centred).precision_


def mahalanobis_scores(means: np.ndarray, precision: np.ndarray, features: np.ndarray) -> np.ndarray:
    """What models/ood.py's layer computes, in float64 numpy: min over classes of the squared distance."""
    return np.min([np.einsum("ij,jk,ik->i", features - m, precision, features - m) for m in means], axis=0)


def conformal_threshold(scores: np.ndarray, flag_rate: float) -> float:
    """The ceil((n + 1)(1 - flag_rate))-th smallest held-out score (the largest when n is too small to promise
    `flag_rate`): a new exchangeable image exceeds it with probability at most `flag_rate`."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    rank = min(math.ceil((len(ordered) + 1) * (1.0 - flag_rate)), len(ordered))
    return float(ordered[rank - 1])
