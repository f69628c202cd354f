"""Backbone features of a frozen phase, computed once and kept on disk.

While the backbone is frozen and the images are not augmented, its output for an image is the same in every epoch,
fold refit and tuning trial; only the head learns. So the features are computed once and the head trains on them.

An entry is keyed by the content of everything the features depend on: the backbone's architecture and dtype policy,
every weight value (batch-norm statistics included), the image array (bytes, shape, dtype, hence the image size) and
the Keras version. Any change gives another key, so a stale entry is never read; old entries age out under the size
limit (least recently used first). Entries are written under a temporary name and renamed, so concurrent tuning
workers and crashes never leave half a file under a real key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import keras
import numpy as np

from mtl_suite.cache import ArrayStore, default_cache_root, feature_cache_limit_bytes

FORMAT = "features-v1"  # bump when the meaning of a stored array changes


class FeatureStore(ArrayStore):
    """The feature section of the cache."""

    @classmethod
    def default(cls) -> FeatureStore:
        """$MTL_SUITE_CACHE/features (else ~/.cache/mtl-suite/features), limit $MTL_SUITE_FEATURE_CACHE_MB."""
        return cls(default_cache_root() / "features", feature_cache_limit_bytes())


def array_digest(array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{array.dtype.str}|{array.shape}|".encode())
    digest.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return digest.hexdigest()


def backbone_digest(backbone: keras.Model) -> str:
    """Architecture (layer classes and configs without names, which Keras numbers per process) and every weight
    value, in order."""
    digest = hashlib.sha256()
    for layer in _leaf_layers(backbone):
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
        digest.update(f"{type(layer).__name__}|{json.dumps(config, sort_keys=True, default=str)}\n".encode())
    for variable in backbone.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable))
        digest.update(f"{value.dtype.str}|{value.shape}|".encode())
        digest.update(memoryview(value).cast("B"))
    return digest.hexdigest()


def _leaf_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def feature_key(backbone: keras.Model, images: np.ndarray) -> str:
    parts = [FORMAT, keras.__version__, keras.backend.backend(), backbone.dtype_policy.name,
             str(images.shape[1:3]), backbone_digest(backbone), array_digest(images)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def backbone_features(backbone: keras.Model, images: np.ndarray, store: FeatureStore | None = None,
                      batch_size: int = 48,
                      compute: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """(N, feature_dim) float32 features of `images` (raw pixels), from `store` when it has them. float32 holds a
    mixed-precision backbone's float16/bfloat16 output exactly, so the head sees the same numbers either way.
    `compute`: another way to the same features (through cached activations, training/activations.py)."""
    if compute is None:
        compute = lambda part: _compute(backbone, part, batch_size)  # noqa: E731
    if store is None or store.max_bytes <= 0:
        return compute(images)
    key = feature_key(backbone, images)
    cached = store.load(key)
    if cached is not None and cached.shape[0] == len(images):
        return cached
    features = compute(images)
    store.save(key, features)
    return features


def _compute(backbone: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    if len(images) == 0:
        return np.zeros((0, backbone.output_shape[-1]), "float32")
    return np.asarray(predict_in_chunks(backbone, images, batch_size), dtype="float32")


CHUNK = 128  # images per predict or extraction call: bounds the memory of one call and paces progress lines


def predict_in_chunks(model: keras.Model, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """model.predict, CHUNK inputs per call: Keras copies a numpy input whole into TensorFlow (twice while
    it slices it, and the process keeps the memory), so one call on 548 test images' Xception activations would
    hold 0.6 GB more than its chunks do."""
    if len(inputs) <= CHUNK:
        return model.predict(inputs, batch_size=batch_size, verbose=0)
    return np.concatenate([model.predict(inputs[start:start + CHUNK], batch_size=batch_size, verbose=0)
                           for start in range(0, len(inputs), CHUNK)])
