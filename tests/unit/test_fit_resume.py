"""Epoch checkpoints: a fit interrupted at any batch and resumed from its checkpoint ends with exactly the weights
and history of an uninterrupted fit (same seed), on the cached-feature warm-up, the augmented path, through early
stopping and across the phase boundary."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from mtl_suite.config import TrainConfig
from mtl_suite.models.backbones import build_backbone
from mtl_suite.models.heads import build_classifier
from mtl_suite.training.checkpoint import FitCheckpoint, derived_seed
from mtl_suite.training.features import FeatureStore
from mtl_suite.training.fit import ArrayData, fit_classifier

SIZE = 32


def toy_data(n_classes: int, n: int = 40) -> tuple[ArrayData, ArrayData]:
    """Learnable (brightness per class), imbalanced images and a validation part."""
    rng = np.random.default_rng(0)
    labels = np.array([i % n_classes if i % 4 else 0 for i in range(n)])
    images = (rng.integers(0, 120, (n, SIZE, SIZE, 3)) + labels[:, None, None, None] * 60).astype(np.uint8)
    return ArrayData(images[:-12], labels[:-12]), ArrayData(images[-12:], labels[-12:])


class KillAtBatch(keras.callbacks.Callback):
    """Stands in for SIGKILL: stops the process's fit in the middle of an epoch (after `batch` training batches)."""

    def __init__(self, counter: dict, batch: int):
        super().__init__()
        self.counter, self.batch = counter, batch

    def on_train_batch_end(self, batch, logs=None):
        self.counter["batches"] += 1
        if self.counter["batches"] == self.batch:
            raise KeyboardInterrupt("killed")


def fit(cfg: TrainConfig, store: FeatureStore, checkpoint=None, kill_at: int | None = None, augment=None):
    train, val = toy_data(3)
    keras.utils.set_random_seed(cfg.seed)  # what cross-validation does before building a fold's model
    backbone, _ = build_backbone("tiny", SIZE, "none")
    model = build_classifier(backbone, "dense_dropout", 3, (16,), 0.5)
    counter = {"batches": 0}
    factory = (lambda phase, first_epoch: [KillAtBatch(counter, kill_at)]) if kill_at else None
    history = fit_classifier(model, backbone, train, val, cfg, 3, factory, augment=augment, feature_store=store,
                             checkpoint=checkpoint, seed=cfg.seed + 1)
    return history, model.get_weights()


def flip(batch, rng):
    return np.where(rng.random(len(batch))[:, None, None, None] < 0.5, batch[:, :, ::-1], batch)


# 28 training images in batches of 8: 4 batches per epoch. Kill points: mid warm-up (batch 10) and in fine-tuning
# (two batches before the end, after early stopping ended the warm-up); the augmented path in its first epochs.
# With train.execution "auto" both phases are long enough to be traced (24 warm-up steps on cached features,
# 12 fine-tuning steps); "eager" runs both eagerly.
@pytest.mark.slow
@pytest.mark.parametrize(("augment", "kills", "execution"), [(None, ("mid-warmup", "finetune"), "auto"),
                                                             (flip, ("early",), "auto"),
                                                             (None, ("mid-warmup", "finetune"), "eager")],
                         ids=["cached-warmup", "augmented", "eager"])
def test_resumed_fit_equals_uninterrupted(tmp_path, augment, kills, execution):
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=6, finetune_epochs=3, unfreeze_layers=2,
                      batch_size=8, learning_rate=0.3, early_stopping_patience=1, class_weights=True, seed=5,
                      execution=execution)
    store = FeatureStore(tmp_path / "features", 2**30)
    reference_history, reference_weights = fit(cfg, store, augment=augment)
    assert len(reference_history["loss"]) < 9, "early stopping should fire: the test would not cover its state"
    points = {"early": 6, "mid-warmup": 10, "finetune": 4 * len(reference_history["loss"]) - 2}
    for kill_at in (points[kill] for kill in kills):
        checkpoint = FitCheckpoint(tmp_path / f"checkpoint-{kill_at}")
        with pytest.raises(KeyboardInterrupt):
            fit(cfg, store, checkpoint, kill_at=kill_at, augment=augment)
        history, weights = fit(cfg, store, checkpoint, augment=augment)
        assert history == reference_history, kill_at
        for got, want in zip(weights, reference_weights, strict=True):
            np.testing.assert_array_equal(got, want)


def test_checkpoint_is_written_after_each_epoch_and_survives_a_reload(tmp_path):
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=2, finetune_epochs=0, batch_size=8, seed=1,
                      early_stopping_patience=0)
    checkpoint = FitCheckpoint(tmp_path / "c")
    history, weights = fit(cfg, FeatureStore(tmp_path / "f", 2**30), checkpoint)
    state = checkpoint.load()
    assert state.phase_finished and state.phase_epochs_done == 2 and state.history == history
    assert [w.shape for w in state.model_weights] and state.optimizer_variables
    checkpoint.clear()
    assert checkpoint.load() is None and not checkpoint.folder.exists()


def test_derived_seed_is_stable_and_distinct():
    assert derived_seed(42, "warmup", 3) == derived_seed(42, "warmup", 3)
    assert len({derived_seed(42, phase, epoch) for phase in ("warmup", "finetune") for epoch in range(50)}) == 100
    assert 0 <= derived_seed("x") < 2**31


def test_data_order_depends_only_on_seed_and_epoch():
    from mtl_suite.data.pipeline import training_batches

    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    labels = np.arange(10)

    def epochs(first):
        dataset, steps = training_batches(images, labels, 4, seed=9, first_epoch=first, epochs=3)
        assert steps == 3
        batches = [y.numpy().tolist() for _, y in dataset]
        return [sum(batches[i:i + steps], []) for i in range(0, len(batches), steps)]

    whole = epochs(0)
    assert all(sorted(order) == list(range(10)) for order in whole)
    assert whole[0] != whole[1]
    assert epochs(1) == whole[1:]  # a fit resumed at epoch 1 sees the same batches
