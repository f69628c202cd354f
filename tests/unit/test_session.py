"""Ctrl-C and SIGTERM during the session clean-up between folds are held, then delivered, never dropped; the heap
freeze that speeds that clean-up up is undone when its block ends."""

from __future__ import annotations

import gc
import os
import signal
import weakref

import pytest

from mtl_suite.training.session import free_models, heap_frozen, signals_deferred


def test_ctrl_c_inside_the_block_is_raised_after_it():
    reached_end = False
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever the runner set
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                reached_end = True  # not raised in here, where a gc weakref callback would have swallowed it
        assert reached_end
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sigterm_goes_to_the_handler_that_was_installed():
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda number, frame: seen.append(number))
    try:
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_free_models_without_a_signal_changes_no_handler():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    free_models()
    assert {s: signal.getsignal(s) for s in before} == before


def test_the_heap_is_frozen_only_inside_the_block():
    class Node:
        pass

    assert gc.get_freeze_count() == 0
    with pytest.raises(RuntimeError):
        with heap_frozen():
            assert gc.get_freeze_count() > 0
            cycle = Node()
            cycle.self = cycle
            gone = weakref.ref(cycle)
            del cycle
            gc.collect()
            assert gone() is None, "garbage made inside the block is still collected"
            raise RuntimeError("a failed fold")
    assert gc.get_freeze_count() == 0, "an error inside must still hand everything back to the collector"
