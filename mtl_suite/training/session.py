"""Freeing a finished fold's TensorFlow state quickly, and training that never loses Ctrl-C or `kill`."""

from __future__ import annotations

import contextlib
import gc
import signal
import threading
from collections.abc import Iterator

import keras

from mtl_suite.interrupts import INTERRUPTS, raise_if_interrupted


def free_models() -> None:
    """`keras.backend.clear_session(free_memory=True)` with Ctrl-C and SIGTERM held until it is done.

    Its gc.collect runs many weakref callbacks (Keras and TensorFlow caches), and a KeyboardInterrupt raised inside
    one is printed as "Exception ignored" and dropped: the interrupted command carried on (seen: a tuning study
    that ran to its end after Ctrl-C). Held here, the signal is delivered again right after, outside the collector."""
    with signals_deferred():
        keras.backend.clear_session(free_memory=True)


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """Keep the objects alive on entry (TensorFlow, MLflow and Optuna modules, the loaded images) out of the garbage
    collector's walks until exit (`gc.freeze`), so that `free_models` after each fold only walks what the folds
    created: its full collection took 0.4-0.9 s per fold on the 2-core reference machine otherwise and 0.1 s with it,
    against 3-7 s for a whole small tuning fold. Frozen objects are never garbage collected while frozen, which is why this is a block and not
    a process-wide switch. On exit everything is handed back to the collector (also what an inner block froze)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def signals_deferred(signals: tuple[signal.Signals, ...] = INTERRUPTS) -> Iterator[None]:
    """Record `signals` while the block runs; afterwards restore the handlers and raise each received signal again,
    so the usual handler acts on it (KeyboardInterrupt, the CLI's SIGTERM unwinding, or the default action)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread; a worker thread leaves them alone
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda number, frame: received.append(number)) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


class InterruptCheck(keras.callbacks.Callback):
    """Raises, after each epoch, an interrupt that reached the process but was dropped inside a finalizer
    (mtl_suite/interrupts.py), so a `kill` during training ends the run as KILLED instead of letting it finish."""

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        raise_if_interrupted()
