"""A torn epoch checkpoint (a file cut mid-write by a disk or file-system fault, or damaged later) is discarded with
a warning and the fit resumes from the epoch before it: only that epoch is redone, and the fit still ends exactly
as an uninterrupted one."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from mtl_suite.config import TrainConfig
from mtl_suite.models.backbones import build_backbone
from mtl_suite.models.heads import build_classifier
from mtl_suite.training.checkpoint import CHECKPOINT_FILE, PREVIOUS_FILE, FitCheckpoint, FitState
from mtl_suite.training.features import FeatureStore
from mtl_suite.training.fit import ArrayData, fit_classifier

SIZE = 32
LOGGER = "mtl_suite.training.checkpoint"


def state(epochs_done: int) -> FitState:
    rng = np.random.default_rng(epochs_done)
    return FitState(phase_index=0, phase_epochs_done=epochs_done, phase_finished=False,
                    history={"loss": [1.0 / (e + 1) for e in range(epochs_done)]},
                    model_weights=[rng.random((64, 32)).astype("float32"), rng.random(32).astype("float32")],
                    optimizer_variables=[np.array(epochs_done, "int64")])


def cut(path, fraction: float = 0.5) -> None:
    """What a write interrupted by a fault leaves: the first part of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def flip_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the weights (an uncompressed zip member): its CRC no longer matches
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [cut, flip_byte], ids=["cut-mid-write", "flipped-byte"])
def test_an_unreadable_last_checkpoint_falls_back_to_the_epoch_before(tmp_path, caplog, damage):
    checkpoint = FitCheckpoint(tmp_path / "c")
    checkpoint.save(state(1))
    checkpoint.save(state(2))
    assert (tmp_path / "c" / PREVIOUS_FILE).is_file()
    damage(tmp_path / "c" / CHECKPOINT_FILE)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = checkpoint.load()
    assert loaded.phase_epochs_done == 1 and loaded.history == state(1).history
    np.testing.assert_array_equal(loaded.model_weights[0], state(1).model_weights[0])
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "is unreadable" in warning and CHECKPOINT_FILE in warning and "resuming from the epoch before" in warning
    assert not (tmp_path / "c" / CHECKPOINT_FILE).exists()  # discarded: the next save starts clean


def test_with_both_unreadable_the_fit_starts_over(tmp_path, caplog):
    checkpoint = FitCheckpoint(tmp_path / "c")
    checkpoint.save(state(1))
    checkpoint.save(state(2))
    cut(tmp_path / "c" / CHECKPOINT_FILE)
    cut(tmp_path / "c" / PREVIOUS_FILE, 0.9)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert checkpoint.load() is None
    assert sum("is unreadable" in r.getMessage() for r in caplog.records) == 2
    assert "resuming from the start" in caplog.records[-1].getMessage()
    only = FitCheckpoint(tmp_path / "d")
    only.save(state(1))
    cut(only.path)
    assert only.load() is None  # the first epoch's checkpoint has nothing before it


class EpochLog(keras.callbacks.Callback):
    def __init__(self, epochs: list[int], kill_at_batch: int | None = None):
        super().__init__()
        self.epochs, self.kill_at_batch, self.batches = epochs, kill_at_batch, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == self.kill_at_batch:
            raise KeyboardInterrupt("killed")  # stands in for SIGKILL mid-epoch


def fit(cfg: TrainConfig, tmp_path, checkpoint=None, kill_at_batch=None) -> tuple[dict, list, list[int]]:
    rng = np.random.default_rng(0)
    labels = np.array([i % 3 for i in range(40)])
    images = (rng.integers(0, 120, (40, SIZE, SIZE, 3)) + labels[:, None, None, None] * 60).astype(np.uint8)
    keras.utils.set_random_seed(cfg.seed)
    backbone, _ = build_backbone("tiny", SIZE, "none")
    model = build_classifier(backbone, "dense_dropout", 3, (16,), 0.5)
    epochs: list[int] = []
    callback = EpochLog(epochs, kill_at_batch)
    history = fit_classifier(model, backbone, ArrayData(images[:-12], labels[:-12]),
                             ArrayData(images[-12:], labels[-12:]), cfg, 3, lambda phase, first: [callback],
                             feature_store=FeatureStore(tmp_path / "features", 2**30), checkpoint=checkpoint,
                             seed=cfg.seed + 1)
    return history, model.get_weights(), epochs


def test_a_fit_resumed_over_a_torn_checkpoint_redoes_only_that_epoch(tmp_path, caplog):
    """28 images in batches of 8: 4 batches an epoch. Killed in the 4th epoch (after 3 were checkpointed), the last
    checkpoint cut mid-write: the resumed fit warns, redoes the 3rd epoch and the 4th, and ends with the weights and
    history of the uninterrupted fit."""
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=4, finetune_epochs=0, batch_size=8,
                      learning_rate=0.05, early_stopping_patience=0, seed=3)
    reference_history, reference_weights, reference_epochs = fit(cfg, tmp_path)
    assert reference_epochs == [0, 1, 2, 3]
    checkpoint = FitCheckpoint(tmp_path / "checkpoint")
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path, checkpoint, kill_at_batch=3 * 4 + 2)
    cut(checkpoint.path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        history, weights, epochs = fit(cfg, tmp_path, checkpoint)
    assert any("is unreadable" in r.getMessage() for r in caplog.records)
    assert epochs == [2, 3]  # the torn epoch (index 2) and the one the kill interrupted
    assert history == reference_history
    for got, want in zip(weights, reference_weights, strict=True):
        np.testing.assert_array_equal(got, want)
