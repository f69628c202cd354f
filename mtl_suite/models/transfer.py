"""Weight transfer between stages: W1 -> W2 -> W3.

A backbone's weights are saved as a NumPy archive keyed by each layer's structural position and class, and loaded
into a freshly built backbone only when every key and shape matches. Position keys are used rather than Keras
layer names because some applications (InceptionV3) name layers from a process-wide counter, so the same
architecture built twice has different names; the names are stored too, for error messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import keras
import numpy as np

from mtl_suite.errors import UserError
from mtl_suite.io_utils import atomic_path

_META = "__meta__"


def _walk(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    from mtl_suite.models.stain import StainControl

    # The stain-control layer is a data option without weights: left out of the positions, so an archive fits a
    # backbone with or without it (a stage may control stain where its parent stage did not).
    layers = [layer for layer in model.layers if not isinstance(layer, StainControl)]
    for i, layer in enumerate(layers):
        path = f"{prefix}{i:04d}"
        if isinstance(layer, keras.Model):
            yield from _walk(layer, path + "/")
        elif layer.weights:
            yield f"{path}:{type(layer).__name__}", layer


def backbone_state(backbone: keras.Model) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """({key/index: array}, {key: layer name})."""
    arrays, names = {}, {}
    for key, layer in _walk(backbone):
        names[key] = layer.name
        for j, weight in enumerate(layer.get_weights()):
            arrays[f"{key}/{j}"] = weight
    return arrays, names


def save_backbone(backbone: keras.Model, path: str | Path, metadata: dict) -> Path:
    arrays, names = backbone_state(backbone)
    return _write(path, arrays, {**metadata, "layer_names": names})


def _write(path: str | Path, arrays: dict[str, np.ndarray], metadata: dict) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays, **{_META: np.array(json.dumps(metadata))})
    return Path(path)


def _read(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files if k != _META}, json.loads(str(archive[_META]))


def rewrite_metadata(source: str | Path, target: str | Path, extra: dict) -> Path:
    """Same weights, metadata updated (stage 1 without fine-tuning passes W0 on as W1 with its lineage)."""
    arrays, meta = _read(source)
    return _write(target, arrays, {**meta, **extra})


def read_backbone_metadata(path: str | Path) -> dict:
    with np.load(path, allow_pickle=False) as archive:
        return json.loads(str(archive[_META]))


def load_backbone(backbone: keras.Model, path: str | Path) -> dict:
    """Copy saved weights into `backbone`, asserting that every layer and shape matches. Returns the metadata."""
    saved, meta = _read(path)
    copy_state(saved, meta.get("layer_names", {}), backbone, source=str(path))
    return meta


def transfer_backbone(source: keras.Model, target: keras.Model) -> None:
    arrays, names = backbone_state(source)
    copy_state(arrays, names, target, source=source.name)


def copy_state(arrays: dict[str, np.ndarray], names: dict[str, str], target: keras.Model, source: str) -> None:
    target_layers = dict(_walk(target))
    saved_layers = sorted({k.rsplit("/", 1)[0] for k in arrays})
    missing = sorted(set(target_layers) - set(saved_layers))
    extra = sorted(set(saved_layers) - set(target_layers))
    if missing or extra:
        key = (missing or extra)[0]
        where = (f"layer {target_layers[key].name!r} ({key}) of the target has no saved weights" if missing
                 else f"saved layer {names.get(key, key)!r} ({key}) has no counterpart in the target")
        raise UserError(f"weights from {source} do not fit this backbone: {where}. "
                        f"Was it saved from another backbone?")
    for key, layer in target_layers.items():
        current = layer.get_weights()
        new = [arrays[f"{key}/{j}"] for j in range(len(current))]
        for j, (old, value) in enumerate(zip(current, new)):
            if old.shape != value.shape:
                raise UserError(
                    f"weights from {source} do not fit this backbone: layer {layer.name!r} weight {j} has shape "
                    f"{value.shape}, expected {old.shape}"
                )
        layer.set_weights(new)
