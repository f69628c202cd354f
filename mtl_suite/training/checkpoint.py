"""Epoch checkpoints inside one fit, so a fold killed mid-training (SIGKILL, power loss) resumes from its last
finished epoch, and resumes to exactly the weights an uninterrupted fit would have reached.

Keras's BackupAndRestore saves weights and optimizer but not what else decides the next epochs: the early-stopping
state (best value, patience count, best weights) and the random state (data order, dropout masks). Here:
- the data order and augmentation of epoch e depend only on (seed, e) (pipeline.training_batches);
- `EpochSeeding` resets every dropout seed generator at the start of each epoch from (seed, phase, epoch, layer);
- `EpochCheckpoint` saves, after each epoch, the training model's weights, the optimizer's variables, the
  early-stopping state and the history so far, in one file written atomically and flushed to disk (a crash leaves
  the last one). The one before it is kept: a checkpoint that cannot be read (cut by a disk or file system fault,
  a bad copy) is discarded with a warning and the fit resumes from the epoch before, so only that epoch is redone.

Plain Keras and NumPy: no tracking here; the caller chooses the folder and deletes it when the fold is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from mtl_suite.io_utils import atomic_path
from mtl_suite.training.keras_private import flatten_layers, seed_generators

CHECKPOINT_FILE = "checkpoint.npz"
PREVIOUS_FILE = "checkpoint.previous.npz"  # the epoch before: what a fit resumes from if the last one is unreadable
FORMAT = 1
# What np.load and the reads below raise on a cut or damaged file (a cut zip has no central directory; a damaged
# member fails its CRC; a cut member reads short).
UNREADABLE = (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError)  # ValueError: bad JSON too

logger = logging.getLogger(__name__)


def derived_seed(*parts: int | str) -> int:
    """A 31-bit seed from any mix of ints and names, stable across processes (unlike hash())."""
    digest = hashlib.sha256("|".join(str(part) for part in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") >> 1


@dataclass
class FitState:
    """Where a fit stood after its last finished epoch."""

    phase_index: int
    phase_epochs_done: int  # epochs of this phase finished
    phase_finished: bool  # the phase ended (all epochs, or early stopping) after that epoch
    history: dict[str, list[float]]  # the whole fit's history so far, all phases
    model_weights: list[np.ndarray]  # the training model's weights after that epoch
    optimizer_variables: list[np.ndarray] = field(default_factory=list)
    early_stopping: dict | None = None  # wait / best / best_epoch / stopped_epoch
    best_weights: list[np.ndarray] | None = None

    def final_weights(self, restore_best: bool) -> list[np.ndarray]:
        """The weights the phase ends with: early stopping's best epoch when it restores them, as Keras does at
        the end of training."""
        return self.best_weights if restore_best and self.best_weights is not None else self.model_weights


class FitCheckpoint:
    """One fit's checkpoint file in `folder`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / CHECKPOINT_FILE
        self.previous = self.folder / PREVIOUS_FILE

    def load(self) -> FitState | None:
        """The last epoch's state; the one before it when the last cannot be read (then that epoch is redone);
        None when there is none (the fit starts from its first epoch)."""
        for path in (self.path, self.previous):
            if not path.is_file():
                continue
            try:
                return self._read(path)
            except UNREADABLE as exc:
                fallback = "the epoch before it" if path == self.path and self.previous.is_file() else "the start"
                logger.warning("epoch checkpoint %s is unreadable (%s: %s); discarded, resuming from %s",
                               path, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "",
                               fallback)
                path.unlink(missing_ok=True)
        return None

    def _read(self, path: Path) -> FitState | None:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            if meta.get("format") != FORMAT:
                return None  # written by another version: start the fit again rather than guess
            arrays = {key: archive[key] for key in archive.files if key != "meta"}
        return FitState(
            phase_index=meta["phase_index"], phase_epochs_done=meta["phase_epochs_done"],
            phase_finished=meta["phase_finished"], history=meta["history"],
            model_weights=_unpack(arrays, "w"), optimizer_variables=_unpack(arrays, "o"),
            early_stopping=meta["early_stopping"],
            best_weights=_unpack(arrays, "b") if meta["has_best_weights"] else None,
        )

    def save(self, state: FitState) -> None:
        meta = {"format": FORMAT, "phase_index": state.phase_index, "phase_epochs_done": state.phase_epochs_done,
                "phase_finished": state.phase_finished, "history": state.history,
                "early_stopping": state.early_stopping, "has_best_weights": state.best_weights is not None}
        arrays = {**_pack(state.model_weights, "w"), **_pack(state.optimizer_variables, "o"),
                  **_pack(state.best_weights or [], "b")}
        if self.path.is_file():  # the last epoch becomes the fallback (a crash before the write below leaves it)
            os.replace(self.path, self.previous)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def save_weights(path: Path, weights: list[np.ndarray]) -> None:
    """A model's weights alone, written atomically (a fold ensemble's finished members, until its run ends)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **_pack(weights, "w"))


def load_weights(path: Path) -> list[np.ndarray] | None:
    """What save_weights wrote; None when it is missing or unreadable (the caller trains the model again)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return _unpack({key: archive[key] for key in archive.files}, "w")
    except UNREADABLE:  # FileNotFoundError is an OSError
        return None


def _pack(arrays: list[np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}{i}": np.asarray(a) for i, a in enumerate(arrays)}


def _unpack(arrays: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    count = sum(1 for key in arrays if key.startswith(prefix) and key[len(prefix):].isdigit())
    return [arrays[f"{prefix}{i}"] for i in range(count)]


def optimizer_variables(model: keras.Model) -> list[np.ndarray]:
    optimizer = model.optimizer
    return [np.array(v.numpy()) for v in optimizer.variables] if optimizer is not None and optimizer.built else []


def restore_training_state(model: keras.Model, state: FitState) -> None:
    """Weights and optimizer state of a compiled model, as they were after the checkpointed epoch."""
    model.set_weights(state.model_weights)
    if state.optimizer_variables:
        model.optimizer.build(model.trainable_variables)
        variables = model.optimizer.variables
        if len(variables) != len(state.optimizer_variables):
            raise ValueError(f"checkpoint has {len(state.optimizer_variables)} optimizer variables, the model "
                             f"{len(variables)}: not the same training setup")
        for variable, value in zip(variables, state.optimizer_variables):
            variable.assign(value)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's EarlyStopping whose state survives a restart: `restored` is put back after on_train_begin resets it."""

    def __init__(self, *args, restored: FitState | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.restored = restored

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.restored is not None and self.restored.early_stopping is not None:
            saved = self.restored.early_stopping
            self.wait, self.best, self.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
            self.stopped_epoch = saved["stopped_epoch"]
            self.best_weights = self.restored.best_weights

    def state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch),
                "stopped_epoch": int(self.stopped_epoch)}


class EpochSeeding(keras.callbacks.Callback):
    """Resets every seed generator of the training model (dropout) at the start of each epoch from (seed, phase,
    epoch, layer name), so an epoch's random draws do not depend on the epochs before it in this process. Layer
    names, not positions: a head-only model and the whole classifier share the head's layers and get the same
    draws."""

    def __init__(self, seed: int, phase: str):
        super().__init__()
        self.seed, self.phase = seed, phase

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        for layer in flatten_layers(self.model):
            for k, generator in enumerate(seed_generators(layer)):
                value = derived_seed(self.seed, self.phase, epoch, layer.name, k)
                generator.state.assign(np.array([value, 0], dtype=generator.state.dtype))


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves the fit's state after every epoch. Must come after early stopping in the callback list, so that it
    records early stopping's decision of this epoch."""

    def __init__(self, checkpoint: FitCheckpoint, phase_index: int, total_epochs: int,
                 history_before: dict[str, list[float]], early_stopping: ResumableEarlyStopping | None):
        super().__init__()
        self.checkpoint, self.phase_index, self.total_epochs = checkpoint, phase_index, total_epochs
        self.history = {key: list(values) for key, values in history_before.items()}
        self.early_stopping = early_stopping

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        stopping = self.early_stopping
        self.checkpoint.save(FitState(
            phase_index=self.phase_index, phase_epochs_done=epoch + 1,
            phase_finished=bool(self.model.stop_training) or epoch + 1 >= self.total_epochs,
            history=self.history, model_weights=self.model.get_weights(),
            optimizer_variables=optimizer_variables(self.model),
            early_stopping=stopping.state() if stopping is not None else None,
            best_weights=stopping.best_weights if stopping is not None else None,
        ))
