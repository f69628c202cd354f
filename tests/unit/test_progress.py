"""The progress display: nested levels (pairs/trials/stages, folds, epochs) with the time left for the whole job;
plain lines off a terminal, rich's live display on one, nothing with --quiet; the fold observer that feeds it closes
its levels however a fold ends."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mtl_suite import progress
from mtl_suite.training.cv import FoldResult


def test_quiet_is_silent_and_leaves_no_display_behind():
    stream = io.StringIO()
    with progress.display(quiet=True, stream=stream) as display:
        assert progress.current() is display and not display.live
        with display.level("trials", 2) as trials:
            display.advance(trials)
    assert stream.getvalue() == ""
    assert type(progress.current()) is progress.Display and progress.current() is not display


def test_plain_lines_name_every_level_and_the_time_left(monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    stream = io.StringIO()
    with progress.display(stream=stream, live=False) as display:
        with display.level("pairs", 2) as pairs:
            with display.level("stage3 folds", 4) as folds:
                with display.level("epochs", 3) as epochs:
                    display.advance(epochs)  # the innermost level prints nothing: Keras prints epochs
                display.advance(folds, "fold-0 accuracy 0.500")
            display.advance(pairs, "pair 0")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    # 10 s for an eighth of the job (a quarter of the first of two pairs): 70 s to go
    assert lines[0] == "progress: pairs 0/2 · stage3 folds 1/4 (fold-0 accuracy 0.500); 10s elapsed, about 1m10s left"
    assert lines[1].startswith("progress: pairs 1/2 (pair 0); ")


def test_the_time_left_counts_the_current_part_by_its_own_progress(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    display = progress.Display()
    with display.level("trials", 4) as trials:
        display.advance(trials)
        with display.level("folds", 2) as folds:
            display.advance(folds)
            now[0] = 60.0  # 1.5 of 4 trials done after a minute: 100 s to go
            assert display.eta_text() == "1m00s elapsed, about 1m40s left"


def test_parts_found_done_count_for_the_bars_but_not_for_the_time_left(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    display = progress.Display()
    with display.level("stages", 3) as stages:
        display.advance(stages, "member 1", reused=True)  # a finished run found in the store: no time spent
        with display.level("folds", 2) as folds:
            display.advance(folds)
            now[0] = 60.0  # half of the first of two members trained now in a minute: 3 min to go, not 1
            assert stages.fraction() == pytest.approx(0.5)
            assert display.eta_text() == "1m00s elapsed, about 3m00s left"


def test_a_level_left_open_by_an_error_is_closed_with_its_parent():
    display = progress.Display()
    with display.level("trials", 1):
        inner = display.level("folds", 3)
        inner.__enter__()  # a trial stopped by a pruner before its observer closed the level
    assert display.levels == []


def test_the_live_display_draws_and_ends_cleanly():
    stream = io.StringIO()
    with progress.display(stream=stream, live=True) as display:
        assert display.live
        with display.level("stages", 1) as stages:
            with display.level("stage3 folds", 2) as folds:
                display.advance(folds)
            display.advance(stages, "stage3")
    text = stream.getvalue()
    assert "stages" in text and "1/1" in text


class Inner:
    def __init__(self, prune_on: str | None = None):
        self.events: list[str] = []
        self.prune_on = prune_on

    def fold_started(self, fold, n_train, n_val, resumed_history=None):
        self.events.append(f"start {fold}")
        return lambda phase, first_epoch: ["mlflow-logger"]

    def fold_finished(self, result):
        self.events.append(f"finish {result.fold}")
        if result.fold == self.prune_on:
            raise RuntimeError("pruned")

    def fold_failed(self, fold, error):
        self.events.append(f"failed {fold}")


def _result(fold: str) -> FoldResult:
    return FoldResult(fold, {"accuracy": 0.5}, {}, np.zeros(1, np.int64), np.zeros((1, 2), np.float32))


def test_fold_progress_adds_an_epoch_callback_and_closes_after_the_last_fold():
    from mtl_suite.training.progress import EpochProgress, FoldProgress

    stream = io.StringIO()
    with progress.display(stream=stream, live=False) as display:
        inner = Inner()
        observer = FoldProgress(inner, "stage3 folds", 3, epochs=2, already=1)
        factory = observer.fold_started("fold-1", 10, 5)
        callbacks = factory("warmup", 0)
        assert callbacks[0] == "mlflow-logger" and isinstance(callbacks[1], EpochProgress)
        assert [lv.name for lv in display.levels] == ["stage3 folds", "epochs"]
        callbacks[1].on_epoch_end(0)
        assert display.levels[1].done == 1
        observer.fold_finished(_result("fold-1"))
        assert display.levels[0].done == 2  # one finished by an earlier attempt, one now
        assert display.levels[0].reused == 1  # ... and the earlier one does not shorten the time left
        observer.fold_started("final", 20, 5)
        observer.fold_finished(_result("final"))
        assert display.levels == []
    assert inner.events == ["start fold-1", "finish fold-1", "start final", "finish final"]
    assert "stage3 folds 2/3 (fold-1 accuracy 0.500)" in stream.getvalue()


def test_fold_progress_closes_when_a_fold_fails_or_is_pruned():
    from mtl_suite.training.progress import FoldProgress

    display = progress.Display()
    progress._current, previous = display, progress._current
    try:
        failing = FoldProgress(Inner(), "trial 0 folds", 2, epochs=1, last="fold-1")
        failing.fold_started("fold-0", 10, 5)
        failing.fold_failed("fold-0", KeyboardInterrupt())
        assert display.levels == []
        pruned = FoldProgress(Inner(prune_on="fold-0"), "trial 1 folds", 2, epochs=1, last="fold-1")
        pruned.fold_started("fold-0", 10, 5)
        with pytest.raises(RuntimeError, match="pruned"):
            pruned.fold_finished(_result("fold-0"))
        assert display.levels == []
    finally:
        progress._current = previous
