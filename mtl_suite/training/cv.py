"""k-fold cross-validation over a saved split, then a refit on all development data and one evaluation on the
outer test part. Each fold gets a freshly built model from `model_factory` (the same starting weights for every
fold), seeded by fold so that a rerun with the same seed reproduces every fold."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import keras
import numpy as np

from mtl_suite.config import TrainConfig
from mtl_suite.data.pipeline import BatchAugment
from mtl_suite.data.splits import Split
from mtl_suite.training.fit import ArrayData, CallbackFactory, fit_classifier, predict_proba
from mtl_suite.training.metrics import classification_metrics, summarise_folds

ModelFactory = Callable[[], tuple[keras.Model, keras.Model]]  # -> (classifier, its backbone), freshly built


class FoldObserver(Protocol):
    """What tracking needs to know; a no-op observer is fine for plain use."""

    def fold_started(self, fold: str, n_train: int, n_val: int) -> CallbackFactory | None: ...

    def fold_finished(self, fold: str, metrics: dict[str, float], history: dict[str, list[float]]) -> None: ...

    def fold_failed(self, fold: str, error: BaseException) -> None: ...


class SilentObserver:
    def fold_started(self, fold, n_train, n_val):
        return None

    def fold_finished(self, fold, metrics, history):
        pass

    def fold_failed(self, fold, error):
        pass


@dataclass
class CVResult:
    fold_metrics: list[dict[str, float]]
    summary: dict[str, float]  # '<metric>_mean' / '<metric>_std'
    oof_index: np.ndarray  # indices into the data that were validated
    oof_proba: np.ndarray  # (len(oof_index), n_classes)
    oof_fold: np.ndarray
    histories: list[dict[str, list[float]]] = field(default_factory=list)


@dataclass
class TestResult:
    model: keras.Model
    backbone: keras.Model
    metrics: dict[str, float]
    index: np.ndarray
    proba: np.ndarray
    history: dict[str, list[float]]


def cross_validate(data: ArrayData, split: Split, class_names: list[str], model_factory: ModelFactory,
                   cfg: TrainConfig, observer: FoldObserver | None = None, augment: BatchAugment | None = None,
                   verbose: int = 0, progress: Callable[[str], None] | None = None) -> CVResult:
    observer = observer or SilentObserver()
    fold_metrics, histories, oof_index, oof_proba, oof_fold = [], [], [], [], []
    for fold, train_idx, val_idx in split.fold_indices():
        name = f"fold-{fold}"
        if progress:
            progress(f"{name}: training on {len(train_idx)} images, validating on {len(val_idx)}")
        callbacks = observer.fold_started(name, len(train_idx), len(val_idx))
        try:
            keras.utils.set_random_seed(cfg.seed + fold)
            model, backbone = model_factory()
            val = _subset(data, val_idx)
            history = fit_classifier(model, backbone, _subset(data, train_idx), val, cfg, len(class_names),
                                     callbacks, augment, verbose)
            proba = predict_proba(model, val.images, cfg.batch_size)
            metrics = classification_metrics(val.labels, proba, class_names)
        except BaseException as exc:
            observer.fold_failed(name, exc)
            raise
        observer.fold_finished(name, metrics, history)
        if progress:
            progress(f"{name}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['f1_macro']:.3f}")
        fold_metrics.append(metrics)
        histories.append(history)
        oof_index.append(val_idx)
        oof_proba.append(proba)
        oof_fold.append(np.full(len(val_idx), fold))
        keras.backend.clear_session(free_memory=True)
    return CVResult(fold_metrics, summarise_folds(fold_metrics), np.concatenate(oof_index),
                    np.concatenate(oof_proba), np.concatenate(oof_fold), histories)


def refit_and_test(data: ArrayData, split: Split, class_names: list[str], model_factory: ModelFactory,
                   cfg: TrainConfig, observer: FoldObserver | None = None, augment: BatchAugment | None = None,
                   verbose: int = 0) -> TestResult:
    """Train on every development image (no validation part, so no early stopping: the same epoch budget as the
    folds) and score once on the outer test images."""
    observer = observer or SilentObserver()
    train_idx, test_idx = split.development_indices, split.test_indices
    callbacks = observer.fold_started("final", len(train_idx), len(test_idx))
    try:
        keras.utils.set_random_seed(cfg.seed)
        model, backbone = model_factory()
        history = fit_classifier(model, backbone, _subset(data, train_idx), None, cfg, len(class_names),
                                 callbacks, augment, verbose)
        test = _subset(data, test_idx)
        proba = predict_proba(model, test.images, cfg.batch_size) if len(test_idx) else np.zeros((0, len(class_names)))
        metrics = classification_metrics(test.labels, proba, class_names) if len(test_idx) else {}
    except BaseException as exc:
        observer.fold_failed("final", exc)
        raise
    observer.fold_finished("final", metrics, history)
    return TestResult(model, backbone, metrics, test_idx, proba, history)


def _subset(data: ArrayData, index: np.ndarray) -> ArrayData:
    return ArrayData(data.images[index], data.labels[index])
