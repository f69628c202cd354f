"""Freeing a finished fold's TensorFlow state without losing Ctrl-C or `kill`."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import keras

DEFERRED = (signal.SIGINT, signal.SIGTERM)


def free_models() -> None:
    """`keras.backend.clear_session(free_memory=True)` with Ctrl-C and SIGTERM held until it is done.

    Its gc.collect runs many weakref callbacks (Keras and TensorFlow caches), and a KeyboardInterrupt raised inside
    one is printed as "Exception ignored" and dropped: the interrupted command carried on (seen: a tuning study
    that ran to its end after Ctrl-C). Held here, the signal is delivered again right after, outside the collector."""
    with signals_deferred():
        keras.backend.clear_session(free_memory=True)


@contextlib.contextmanager
def signals_deferred(signals: tuple[signal.Signals, ...] = DEFERRED) -> Iterator[None]:
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
