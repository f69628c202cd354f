"""The folds and epochs levels of the command's progress display (mtl_suite/progress.py): a fold observer that
wraps another one (MLflow's nested runs, a tuning trial's reports) and adds a Keras callback per fold. Plain Keras;
the display itself is silent unless a command opened one."""

from __future__ import annotations

import contextlib
from typing import Any

import keras

from mtl_suite import progress
from mtl_suite.training.cv import CallbackFactory, FoldObserver, FoldResult

FINAL = "final"  # the refit on all development data: the last part of a stage run


class EpochProgress(keras.callbacks.Callback):
    def __init__(self, display: progress.Display, level: progress.Level):
        super().__init__()
        self.display, self.level = display, level

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.display.advance(self.level)


class FoldProgress:
    """`folds` parts (cross-validation folds, plus the final refit when `last` is "final"): the level opens with
    the first fold and closes after the last one, or when a fold fails; `already` parts were finished by an
    interrupted attempt and are not trained again."""

    def __init__(self, inner: FoldObserver, name: str, folds: int, epochs: int, already: int = 0,
                 last: str | None = FINAL):
        self.inner, self.name, self.folds, self.epochs, self.already, self.last = (
            inner, name, folds, epochs, already, last)
        self.display = progress.current()
        self.stack = contextlib.ExitStack()
        self.folds_level: progress.Level | None = None
        self.epochs_stack: contextlib.ExitStack | None = None

    def fold_started(self, fold: str, n_train: int, n_val: int, resumed_history=None) -> CallbackFactory | None:
        if self.folds_level is None:
            self.folds_level = self.stack.enter_context(self.display.level(self.name, self.folds))
            self.folds_level.done = self.folds_level.reused = min(self.already, self.folds)
        self.epochs_stack = contextlib.ExitStack()
        done = len((resumed_history or {}).get("loss", []))
        level = self.epochs_stack.enter_context(self.display.level("epochs", max(0, self.epochs - done)))
        inner = self.inner.fold_started(fold, n_train, n_val, resumed_history)

        def callbacks(phase: str, first_epoch: int) -> list[keras.callbacks.Callback]:
            return [*(inner(phase, first_epoch) if inner else []), EpochProgress(self.display, level)]

        return callbacks

    def fold_finished(self, result: FoldResult) -> None:
        try:
            self.inner.fold_finished(result)  # may stop the trial (a pruner)
        except BaseException:
            self.close()
            raise
        self._close_epochs()
        if self.folds_level is not None:
            accuracy = result.metrics.get("accuracy")
            self.display.advance(self.folds_level, f"{result.fold} accuracy {accuracy:.3f}"
                                 if accuracy is not None else result.fold)
        if result.fold == self.last:
            self.close()

    def fold_failed(self, fold: str, error: BaseException) -> None:
        self.inner.fold_failed(fold, error)
        self.close()

    def close(self) -> None:
        self._close_epochs()
        self.stack.close()
        self.folds_level = None

    def _close_epochs(self) -> None:
        if self.epochs_stack is not None:
            self.epochs_stack.close()
            self.epochs_stack = None

    def __getattr__(self, name: str) -> Any:  # anything else the wrapped observer offers
        return getattr(self.inner, name)
