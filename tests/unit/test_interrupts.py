"""Ctrl-C and SIGTERM are never lost: one whose KeyboardInterrupt Python drops (raised inside a finalizer) is raised
again at training's next check, so a killed fit stops after the epoch it was in instead of running to its end."""

from __future__ import annotations

import os
import signal
import sys

import keras
import numpy as np
import pytest

from mtl_suite.config import TrainConfig
from mtl_suite.interrupts import INTERRUPTS, raise_if_interrupted, unwind_on_interrupts
from mtl_suite.models.backbones import build_backbone
from mtl_suite.models.heads import build_classifier
from mtl_suite.training.fit import ArrayData, fit_classifier


@pytest.fixture
def handlers(monkeypatch):
    """The suite's handlers installed as a command installs them; the runner's put back afterwards; unraisable
    exceptions (what Python does with an exception raised in a finalizer) collected instead of printed."""
    before = {signum: signal.getsignal(signum) for signum in INTERRUPTS}
    dropped: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda report: dropped.append(report.exc_value))
    unwind_on_interrupts()
    yield dropped
    unwind_on_interrupts()  # forgets this test's signals, as the next command would
    for signum, handler in before.items():
        signal.signal(signum, handler)


class KilledWhileFinalized:
    """Receives SIGTERM while Python runs its finalizer, as when a garbage collection runs TensorFlow's."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # bytecodes after the kill: the handler runs here, inside the finalizer
            pass


def test_an_interrupt_dropped_in_a_finalizer_is_raised_at_the_next_check(handlers):
    KilledWhileFinalized()  # finalized at once: no reference is kept
    assert [type(error) for error in handlers] == [KeyboardInterrupt]  # Python dropped it...
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        raise_if_interrupted()  # ...and the check raises it again


def test_a_new_command_forgets_the_signals_of_an_earlier_one(handlers):
    KilledWhileFinalized()
    unwind_on_interrupts()
    raise_if_interrupted()  # nothing to raise


def test_ctrl_c_unwinds_as_keyboard_interrupt(handlers):
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass


class KillInsideAFinalizerAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch, self.epochs_ended = epoch, 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_ended += 1
        if epoch == self.epoch:
            KilledWhileFinalized()


def test_a_fit_whose_interrupt_was_dropped_stops_at_the_end_of_that_epoch(handlers):
    rng = np.random.default_rng(0)
    train = ArrayData(rng.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8), np.arange(16) % 2)
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=5, finetune_epochs=0, batch_size=8,
                      execution="eager")
    backbone, _ = build_backbone("tiny", 32, "none")
    model = build_classifier(backbone, "dense_dropout", 2, (8,), 0.0)
    kill = KillInsideAFinalizerAfterEpoch(epoch=1)
    with pytest.raises(KeyboardInterrupt, match="raised again"):
        fit_classifier(model, backbone, train, None, cfg, 2, lambda phase, first_epoch: [kill])
    assert handlers and kill.epochs_ended == 2  # epochs 0 and 1 of 5: the check ran right after the kill
