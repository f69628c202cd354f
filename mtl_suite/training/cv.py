"""k-fold cross-validation over a saved split, then a refit on all development data and one evaluation on the
outer test part. Each fold gets a freshly built model from `model_factory` (the same starting weights for every
fold), seeded by fold so that a rerun with the same seed reproduces every fold.

Resuming: folds finished by an earlier, interrupted attempt are passed in as `completed` and not trained again;
with `checkpoints`, every fold saves its fit after each epoch, so an interrupted fold goes on from its last
finished epoch. Either way the results equal an uninterrupted run's."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from pathlib import Path

import keras
import numpy as np

from mtl_suite.config import TrainConfig
from mtl_suite.data.pipeline import BatchAugment
from mtl_suite.data.splits import Split
from mtl_suite.interrupts import raise_if_interrupted
from mtl_suite.models.backbones import set_trainable_top
from mtl_suite.models.ensemble import fold_ensemble, with_colour, with_flips
from mtl_suite.training.checkpoint import FitCheckpoint, load_weights, save_weights
from mtl_suite.training.colour import fit_colour_classifier
from mtl_suite.training.fit import (
    ArrayData, CallbackFactory, activation_cache_for, feature_store_for, fit_classifier, predict_proba,
    trained_top_layers,
)
from mtl_suite.training.metrics import classification_metrics, summarise_folds
from mtl_suite.training.session import free_models, heap_frozen

ModelFactory = Callable[[], tuple[keras.Model, keras.Model]]  # -> (classifier, its backbone), freshly built
# A fold's trained model (as it predicts), its training images and its validation images -> more fold metrics (how
# the model holds up on its validation images changed: workflows/reliability.py:shift_probe)
FoldProbe = Callable[[keras.Model, ArrayData, ArrayData], dict[str, float]]


@dataclass
class FoldResult:
    """One finished fold: what the summary, the pooled out-of-fold figures and a resumed run need of it."""

    fold: str
    metrics: dict[str, float]
    history: dict[str, list[float]]
    index: np.ndarray  # the validated images (indices into the data)
    proba: np.ndarray  # (len(index), n_classes)
    weights: list[np.ndarray] | None = None  # the trained model's, kept for a fold ensemble (not in the JSON)

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
    members: list[list[np.ndarray]] = field(default_factory=list)  # each fold model's weights (fold ensemble only)


@dataclass
class TestResult:
    model: keras.Model
    backbone: keras.Model | None  # None for a fold ensemble
    metrics: dict[str, float]
    index: np.ndarray
    proba: np.ndarray
    history: dict[str, list[float]]


def cross_validate(data: ArrayData, split: Split, class_names: list[str], model_factory: ModelFactory,
                   cfg: TrainConfig, observer: FoldObserver | None = None, augment: BatchAugment | None = None,
                   verbose: int = 0, progress: Callable[[str], None] | None = None,
                   completed: dict[str, FoldResult] | None = None, checkpoints: Path | None = None,
                   probe: FoldProbe | None = None) -> CVResult:
    """With `cfg.ensemble` folds, every fold keeps its weights (CVResult.members), and with `checkpoints` saves
    them there, so a resumed run reuses a finished fold only when its weights are there too. `probe` adds metrics
    to every fold trained here."""
    observer = observer or SilentObserver()
    keep_weights = cfg.ensemble == "folds"
    completed = completed or {}
    results: list[FoldResult] = []
    with heap_frozen():  # each finished fold's full garbage collection then walks only what the folds created
        for fold, train_idx, val_idx in split.fold_indices():
            raise_if_interrupted()
            name = f"fold-{fold}"
            result = completed.get(name)
            if result is not None and keep_weights:
                weights = load_weights(_member_file(checkpoints, name)) if checkpoints is not None else None
                result = replace(result, weights=weights) if weights is not None else None
            if result is not None:
                if progress:
                    progress(f"{name}: finished by an earlier attempt, reused (accuracy "
                             f"{result.metrics['accuracy']:.3f})")
            else:
                if progress:
                    progress(f"{name}: training on {len(train_idx)} images, validating on {len(val_idx)}")
                member_file = _member_file(checkpoints, name) if keep_weights and checkpoints is not None else None
                result = _train_fold(name, data, train_idx, val_idx, class_names, model_factory, cfg, observer,
                                     augment, verbose, _checkpoint(checkpoints, name), cfg.seed + fold, member_file,
                                     probe)
                if progress:
                    progress(f"{name}: accuracy {result.metrics['accuracy']:.3f}, "
                             f"macro-F1 {result.metrics['f1_macro']:.3f}")
            results.append(result)
    return CVResult([r.metrics for r in results], summarise_folds([r.metrics for r in results]),
                    np.concatenate([r.index for r in results]), np.concatenate([r.proba for r in results]),
                    np.concatenate([np.full(len(r.index), k) for k, r in enumerate(results)]),
                    [r.history for r in results], [r.weights for r in results if r.weights is not None])


def fold_reusable(name: str, cfg: TrainConfig, checkpoints: Path | None) -> bool:
    """Whether a finished fold of an interrupted attempt can stand in this one: a fold ensemble needs the fold's
    weights as well as its metrics, and they are kept only with the run's checkpoints."""
    return cfg.ensemble != "folds" or (checkpoints is not None and _member_file(checkpoints, name).is_file())


def _checkpoint(folder: Path | None, name: str) -> FitCheckpoint | None:
    return FitCheckpoint(folder / name) if folder is not None else None


def _member_file(folder: Path, name: str) -> Path:
    """Where a fold ensemble keeps a finished fold's weights (outside the fold's epoch checkpoints, which go when the
    fold ends); the run's checkpoint folder is removed when the run finishes."""
    return folder / "members" / f"{name}.npz"


def _train_fold(name: str, data: ArrayData, train_idx: np.ndarray, val_idx: np.ndarray, class_names: list[str],
                model_factory: ModelFactory, cfg: TrainConfig, observer: FoldObserver, augment, verbose: int,
                checkpoint: FitCheckpoint | None, seed: int, member_file: Path | None = None,
                probe: FoldProbe | None = None) -> FoldResult:
    resumed = checkpoint.load() if checkpoint is not None else None
    callbacks = observer.fold_started(name, len(train_idx), len(val_idx), resumed.history if resumed else None)
    try:
        keras.utils.set_random_seed(seed)
        model, backbone = model_factory()
        val = _subset(data, val_idx)
        history = fit_classifier(model, backbone, training_part(data, train_idx, cfg, seed), val, cfg,
                                 len(class_names), callbacks, augment, verbose, checkpoint=checkpoint, seed=seed)
        predicting = final_form(model, cfg, data, train_idx)
        proba = predict_proba(predicting, val.images, cfg.batch_size, feature_store_for(cfg),
                              activation_cache_for(cfg))
        metrics = classification_metrics(val.labels, proba, class_names)
        if probe is not None:
            metrics.update(probe(predicting, _subset(data, train_idx), val))
        result = FoldResult(name, metrics, history, val_idx, proba,
                            model.get_weights() if cfg.ensemble == "folds" else None)
        if member_file is not None:  # before the store records the fold: a resume then finds both or neither
            save_weights(member_file, result.weights)
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
    raise_if_interrupted()
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
        model = final_form(model, cfg, data, train_idx)
        proba, metrics = _score_test(model, data, test_idx, class_names, cfg)
    except BaseException as exc:
        observer.fold_failed("final", exc)
        raise
    observer.fold_finished(FoldResult("final", metrics, history, test_idx, proba))
    return TestResult(model, backbone, metrics, test_idx, proba, history)


def ensemble_and_test(data: ArrayData, split: Split, class_names: list[str], model_factory: ModelFactory,
                      cfg: TrainConfig, cv: CVResult, observer: FoldObserver | None = None) -> TestResult:
    """In place of the refit (`cfg.ensemble` folds): the fold models of `cv`, their probabilities averaged in one
    graph (models/ensemble.py), scored once on the outer test images. `backbone` is None: an ensemble has no single
    backbone to start another stage from."""
    observer = observer or SilentObserver()
    test_idx = split.test_indices
    observer.fold_started("final", 0, len(test_idx))
    try:
        members = [_member(model_factory, weights, cfg) for weights in cv.members]
        model = final_form(fold_ensemble(members), cfg, data, split.development_indices)
        proba, metrics = _score_test(model, data, test_idx, class_names, cfg)
    except BaseException as exc:
        observer.fold_failed("final", exc)
        raise
    observer.fold_finished(FoldResult("final", metrics, {}, test_idx, proba))
    return TestResult(model, None, metrics, test_idx, proba, {})


def final_form(model: keras.Model, cfg: TrainConfig, data: ArrayData, train_idx: np.ndarray) -> keras.Model:
    """The model as it predicts: with `cfg.tta` flips, wrapped to average the image's four flips; with
    `cfg.colour_fusion` average, averaged with a colour classifier fit on the images at `train_idx` (those the
    network trained on, without augmented copies: the shortcut check's baseline on the same fold)."""
    if cfg.tta == "flips":
        model = with_flips(model)
    if cfg.colour_fusion == "average":
        model = with_colour(model, fit_colour_classifier(model, _subset(data, train_idx), cfg.stain, cfg.batch_size))
    return model


def _member(model_factory: ModelFactory, weights: list[np.ndarray], cfg: TrainConfig) -> keras.Model:
    """A fold's trained classifier again: built, its backbone's top made trainable as training left it (so the
    activation cache finds the same cut), its weights set."""
    model, backbone = model_factory()
    set_trainable_top(backbone, trained_top_layers(cfg))
    model.set_weights(weights)
    return model


def _score_test(model: keras.Model, data: ArrayData, test_idx: np.ndarray, class_names: list[str],
                cfg: TrainConfig) -> tuple[np.ndarray, dict[str, float]]:
    if not len(test_idx):
        return np.zeros((0, len(class_names))), {}
    test = _subset(data, test_idx)
    proba = predict_proba(model, test.images, cfg.batch_size, feature_store_for(cfg), activation_cache_for(cfg))
    return proba, classification_metrics(test.labels, proba, class_names)


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
