"""Ctrl-C and `kill` (SIGTERM) unwind a command as KeyboardInterrupt, so its open MLflow runs close as KILLED, and
the interrupt is never lost.

Python runs a signal handler between two bytecodes of the main thread, wherever it is. When that is inside a
finalizer (a `__del__` or a weakref callback, which a garbage collection runs at any allocation, and TensorFlow's
objects have many), the KeyboardInterrupt raised there is printed as "Exception ignored" and dropped, and the
command carries on to its end: a `kill` once left a run FINISHED. So the handler also records the signal, and
training asks again at points where an exception is safe (`raise_if_interrupted`: after every epoch and before every
fold), where a dropped interrupt is raised again."""

from __future__ import annotations

import signal
from typing import Any

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []  # signals handled by `_interrupt` in this command, in order


def unwind_on_interrupts() -> None:
    """Install the handler for Ctrl-C and SIGTERM (at the start of each command: a signal an earlier command of the
    same process handled is forgotten)."""
    _received.clear()
    for signum in INTERRUPTS:
        signal.signal(signum, _interrupt)


def _interrupt(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt when a signal was handled since the command started. Only reached after a dropped
    interrupt: a delivered one unwinds past every caller of this function."""
    if _received:
        raise KeyboardInterrupt(f"{signal.Signals(_received[0]).name} (received earlier, raised again here: the "
                                "first KeyboardInterrupt was raised inside a finalizer and dropped)")
