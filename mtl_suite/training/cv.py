"""k-fold cross-validation over a saved split, then a refit on all development data and one evaluation on the
outer test part. Each fold gets a freshly built model from `model_factory` (the same starting weights for every
fold), seeded by fold so that a rerun with the same seed reproduces every fold.

Resuming: folds finished by an earlier, interrupted attempt are passed in as `completed` and not trained again;
with `checkpoints`, every fold saves its fit after each epoch, so an interrupted fold goes on from its last
finished epoch. Either way the results equal an uninterrupted run's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from pathlib import Path

import keras
import numpy as np

from mtl_suite.config import TrainConfig
from mtl_suite.data.pipeline import BatchAugment
from mtl_suite.data.splits import Split
from mtl_suite.training.checkpoint import FitCheckpoint
from mtl_suite.training.fit import (
    ArrayData, CallbackFactory, activation_cache_for, feature_store_for, fit_classifier, predict_proba,
)
from mtl_suite.training.metrics import classification_metrics, summarise_folds
from mtl_suite.training.session import free_models, heap_frozen

ModelFactory = Callable[[], tuple[keras.Model, keras.Model]]  # -> (classifier, its backbone), freshly built


@dataclass
class FoldResult:
    """One finished fold: what the summary, the pooled out-of-fold figures and a resumed run need of it."""

    fold: str
    metrics: dict[str, float]
    history: dict[str, list[float]]
    index: np.ndarray  # the validated images (indices into the data)
    proba: np.ndarray  # (len(index), n_classes)

    def to_json(self) -> dict:
        return {"fold": self.fold, "metrics": self.metrics, "history": self.history,
                "index": self.index.tolist(), "proba": self.proba.astype("float64").tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "FoldResult":
        return cls(data["fold"], data["metrics"], data["history"], np.asarray(data["index"], dtype=np.int64),
                   np.asarray(data["proba"], dtype=np.float32))


class FoldObserver(Protocol):
    """What tracking needs to know; a no-op observer is fine for plain use. `resumed_history`: the epochs an
    interrupted attempt of this fold had finished (from its checkpoint), which training will not repeat."""

    def fold_started(self, fold: str, n_train: int, n_val: int,
                     resumed_history: dict[str, list[float]] | None = None) -> CallbackFactory | None: ...

    def fold_finished(self, result: FoldResult) -> None: ...

    def fold_failed(self, fold: str, error: BaseException) -> None: ...


class SilentObserver:
    def fold_started(self, fold, n_train, n_val, resumed_history=None):
        return None

    def fold_finished(self, result):
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
                   verbose: int = 0, progress: Callable[[str], None] | None = None,
                   completed: dict[str, FoldResult] | None = None, checkpoints: Path | None = None) -> CVResult:
    observer = observer or SilentObserver()
    completed = completed or {}
    results: list[FoldResult] = []
    with heap_frozen():  # each finished fold's full garbage collection then walks only what the folds created
        for fold, train_idx, val_idx in split.fold_indices():
            name = f"fold-{fold}"
            if name in completed:
                result = completed[name]
                if progress:
                    progress(f"{name}: finished by an earlier attempt, reused (accuracy "
                             f"{result.metrics['accuracy']:.3f})")
            else:
                if progress:
                    progress(f"{name}: training on {len(train_idx)} images, validating on {len(val_idx)}")
                result = _train_fold(name, data, train_idx, val_idx, class_names, model_factory, cfg, observer,
                                     augment, verbose, _checkpoint(checkpoints, name), cfg.seed + fold)
                if progress:
                    progress(f"{name}: accuracy {result.metrics['accuracy']:.3f}, "
                             f"macro-F1 {result.metrics['f1_macro']:.3f}")
            results.append(result)
    return CVResult([r.metrics for r in results], summarise_folds([r.metrics for r in results]),
                    np.concatenate([r.index for r in results]), np.concatenate([r.proba for r in results]),
                    np.concatenate([np.full(len(r.index), k) for k, r in enumerate(results)]),
                    [r.history for r in results])


def _checkpoint(folder: Path | None, name: str) -> FitCheckpoint | None:
    return FitCheckpoint(folder / name) if folder is not None else None


def _train_fold(name: str, data: ArrayData, train_idx: np.ndarray, val_idx: np.ndarray, class_names: list[str],
                model_factory: ModelFactory, cfg: TrainConfig, observer: FoldObserver, augment, verbose: int,
                checkpoint: FitCheckpoint | None, seed: int) -> FoldResult:
    resumed = checkpoint.load() if checkpoint is not None else None
    callbacks = observer.fold_started(name, len(train_idx), len(val_idx), resumed.history if resumed else None)
    try:
        keras.utils.set_random_seed(seed)
        model, backbone = model_factory()
        val = _subset(data, val_idx)
        history = fit_classifier(model, backbone, training_part(data, train_idx, cfg, seed), val, cfg,
                                 len(class_names), callbacks, augment, verbose, checkpoint=checkpoint, seed=seed)
        proba = predict_proba(model, val.images, cfg.batch_size, feature_store_for(cfg), activation_cache_for(cfg))
        result = FoldResult(name, classification_metrics(val.labels, proba, class_names), history, val_idx, proba)
    except BaseException as exc:
        observer.fold_failed(name, exc)
        raise
    observer.fold_finished(result)
    if checkpoint is not None:
        checkpoint.clear()  # the tracking store holds the fold now
    free_models()
    return result


def refit_and_test(data: ArrayData, split: Split, class_names: list[str], model_factory: ModelFactory,
                   cfg: TrainConfig, observer: FoldObserver | None = None, augment: BatchAugment | None = None,
                   verbose: int = 0, checkpoints: Path | None = None) -> TestResult:
    """Train on every development image (no validation part, so no early stopping: the same epoch budget as the
    folds) and score once on the outer test images."""
    observer = observer or SilentObserver()
    train_idx, test_idx = split.development_indices, split.test_indices
    checkpoint = _checkpoint(checkpoints, "final")
    resumed = checkpoint.load() if checkpoint is not None else None
    callbacks = observer.fold_started("final", len(train_idx), len(test_idx), resumed.history if resumed else None)
    try:
        keras.utils.set_random_seed(cfg.seed)
        model, backbone = model_factory()
        history = fit_classifier(model, backbone, training_part(data, train_idx, cfg, cfg.seed), None, cfg,
                                 len(class_names), callbacks, augment, verbose, checkpoint=checkpoint, seed=cfg.seed)
        test = _subset(data, test_idx)
        proba = (predict_proba(model, test.images, cfg.batch_size, feature_store_for(cfg), activation_cache_for(cfg))
                 if len(test_idx) else np.zeros((0, len(class_names))))
        metrics = classification_metrics(test.labels, proba, class_names) if len(test_idx) else {}
    except BaseException as exc:
        observer.fold_failed("final", exc)
        raise
    observer.fold_finished(FoldResult("final", metrics, history, test_idx, proba))
    return TestResult(model, backbone, metrics, test_idx, proba, history)


def training_part(data: ArrayData, train_idx: np.ndarray, cfg: TrainConfig, seed: int) -> ArrayData:
    """A fold's training images; with offline augmentation (the paper's), followed by a fixed, class-balanced
    augmented copy of them, drawn from `seed`. Only training images are copied: a validation image's copies in
    training would leak it."""
    train = _subset(data, train_idx)
    if cfg.augment_mode != "offline" or cfg.augment == "none" or not len(train):
        return train
    from mtl_suite.imaging.augment import balance_classes

    per_class = cfg.offline_per_class or int(np.bincount(train.labels).max())
    return ArrayData(*balance_classes(train.images, train.labels, per_class, cfg.augment, seed))


def _subset(data: ArrayData, index: np.ndarray) -> ArrayData:
    return ArrayData(data.images[index], data.labels[index])
