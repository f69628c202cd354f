"""Fine-tuning the top of a backbone on cached activations.

The suite fine-tunes only the top `unfreeze_layers` weighted layers, with batch norm in inference mode and (without
online augmentation) the same images every epoch: everything below the lowest trainable layer is then a fixed
function of the image. So the network is cut at a point below that layer where a single tensor flows (a block
boundary: Xception's `add_N`, InceptionV3's `mixedN`, InceptionResNetV2's `block8_N_ac`, any layer of a chain like
MobileNet), the activations at the cut are computed once per image and kept, and the layers above the cut train as
their own model. That model is built from the classifier's own layer objects, so its training lands in the
classifier, which is what gets logged, registered and served.

Activations are kept per image, keyed by the content of everything they depend on (the weights and architecture
below the cut, the cut, the image bytes, the storage dtype, Keras and its backend), in the `activations` section of
the cache: computed once per image across folds, refits, arms and commands, and read back from disk (the OS page
cache keeps them in RAM when it can)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from mtl_suite.cache import ArrayStore, activation_cache_limit_bytes, default_cache_root
from mtl_suite.config import ACTIVATION_DTYPES, TrainConfig
from mtl_suite.errors import UserError
from mtl_suite.models.backbones import base_model
from mtl_suite.models.precision import dtype_policy_scope
from mtl_suite.training.features import CHUNK, backbone_digest

FORMAT = "activations-v1"  # bump when the meaning of a stored array changes
AUTO, NONE = "auto", "none"


@dataclass(frozen=True)
class Cut:
    layer: str  # the base network's layer whose output is cached (Keras numbers unnamed layers per process)
    index: int  # its position in the base network: stable across processes, so the cache key uses it
    shape: tuple[int, ...]  # one image's activation
    lower: keras.Model  # raw image -> activation: the classifier's frozen bottom
    top: keras.Model  # activation -> the classifier's output: its own layers above the cut
    pooled: keras.Model  # activation -> the backbone's pooled features (what the frozen warm-up trains on)


def lowest_trainable(base: keras.Model) -> int | None:
    """Index in `base.layers` of the lowest layer that trains (None: the base is frozen)."""
    trainable = [i for i, layer in enumerate(base.layers) if layer.trainable and layer.weights]
    return min(trainable) if trainable else None


def find_cut(classifier: keras.Model, backbone: keras.Model, requested: str = AUTO,
             storage_dtype: str = "float32") -> Cut | None:
    """The cut for the backbone's current trainable layers: `auto`, the highest single-tensor point below the
    lowest trainable layer; a layer name, checked; `none`, or a frozen base, or no such point: None."""
    base = base_model(backbone)
    lowest = lowest_trainable(base)
    if requested == NONE or lowest is None:
        return None
    if requested == AUTO:
        for index in range(lowest - 1, 0, -1):  # index 0 is the base's input: nothing to save there
            upper = _upper(base, index)
            if upper is not None:
                return _cut(classifier, backbone, base, index, upper, storage_dtype)
        return None
    return _named_cut(classifier, backbone, base, requested, lowest, storage_dtype)


def _named_cut(classifier, backbone, base, name: str, lowest: int, storage_dtype: str) -> Cut:
    names = [layer.name for layer in base.layers]
    if name not in names:
        raise UserError(f"--activation-cut {name!r} is not a layer of {backbone.name}'s base network; use auto, "
                        "none, or a layer name from model.summary()")
    index = names.index(name)
    if index >= lowest:
        raise UserError(f"--activation-cut {name}: trainable layer {names[lowest]} is at or below it (the cut must "
                        f"lie below every trainable layer); unfreeze fewer layers or cut lower, or use auto")
    upper = _upper(base, index)
    if upper is None:
        raise UserError(f"--activation-cut {name}: the network above it also reads earlier tensors (a skip "
                        "connection crosses it); cut at a block boundary, or use auto")
    return _cut(classifier, backbone, base, index, upper, storage_dtype)


def _upper(base: keras.Model, index: int) -> keras.Model | None:
    """The base network above layer `index`, if its output is the only tensor the layers above read."""
    try:
        return keras.Model(base.layers[index].output, base.output, name="upper")
    except ValueError:  # Keras: the outputs are not connected to that input alone
        return None


def _cut(classifier, backbone, base, index: int, upper: keras.Model, storage_dtype: str) -> Cut:
    if storage_dtype not in ACTIVATION_DTYPES:
        raise UserError(f"activation storage dtype {storage_dtype!r}: expected one of {', '.join(ACTIVATION_DTYPES)}")
    layer = base.layers[index]
    below = keras.Model(base.input, layer.output, name="below")
    x = image = keras.Input(backbone.input_shape[1:], name="image", dtype="float32")
    for before_base in backbone.layers[1:backbone.layers.index(base)]:  # normalisation and whatever else precedes
        x = before_base(x)
    lower = keras.Model(image, below(x), name="lower")
    with dtype_policy_scope(classifier.dtype_policy.name):  # the same policy: compile() scales the loss alike
        x = inputs = keras.Input(layer.output.shape[1:], name="activations", dtype=storage_dtype)
        x = features = backbone.get_layer("gap")(upper(x, training=False))  # batch norm in inference mode
        layers = classifier.layers
        for head_layer in layers[layers.index(backbone) + 1:]:
            x = head_layer(x)
        top = keras.Model(inputs, x, name="top")
    return Cut(layer.name, index, tuple(layer.output.shape[1:]), lower, top,
               keras.Model(inputs, features, name="pooled"))


@dataclass(frozen=True)
class ActivationCache:
    """Where activations are kept and how the cut is chosen: what prediction needs to use the cut as training did.
    `unfreeze_layers`: the fine-tuning phase's, whose cut the frozen warm-up uses too (its features are then the
    layers above the cut run on cached activations: the bottom of the network runs once per image)."""

    store: ActivationStore | None
    cut: str = AUTO
    dtype: str = "float32"
    unfreeze_layers: int = 0


def planned_cut(classifier: keras.Model, backbone: keras.Model, cache: ActivationCache | None) -> Cut | None:
    """The fine-tuning phase's cut, found while the backbone is still frozen (it is left frozen)."""
    from mtl_suite.models.backbones import set_trainable_top

    if cache is None or cache.unfreeze_layers <= 0 or backbone.trainable_weights:
        return None
    set_trainable_top(backbone, cache.unfreeze_layers)
    try:
        return find_cut(classifier, backbone, cache.cut, cache.dtype)
    finally:
        set_trainable_top(backbone, 0)


def features_through_cut(cut: Cut, images: np.ndarray, cache: ActivationCache, batch_size: int) -> np.ndarray:
    """The backbone's pooled features of `images`, from their cached activations and the layers above the cut.

    CHUNK images at a time: the warm-up needs only the pooled features, and holding the activations of a whole
    stage at once (1.2 GB for Xception at 224 px), plus the copy TensorFlow makes of an array it predicts on, was
    the largest part of a stage's peak memory (measured with memray, benchmarks/RESULTS.md)."""
    keys, parts, wrote = activation_keys(cut, images, cache.store, cache.dtype), [], False
    for start in range(0, len(images), CHUNK):
        activations, written = _activations(cut, images[start:start + CHUNK], keys[start:start + CHUNK],
                                            cache.store, cache.dtype, batch_size)
        parts.append(np.asarray(cut.pooled.predict(activations, batch_size=batch_size, verbose=0), dtype="float32"))
        wrote |= written
    if wrote:
        cache.store.evict()
    return np.concatenate(parts) if parts else np.zeros((0, cut.pooled.output_shape[-1]), "float32")


class ActivationStore(ArrayStore):
    """The `activations` section of the cache: one file per image and cut."""

    @classmethod
    def default(cls) -> ActivationStore:
        """$MTL_SUITE_CACHE/activations, limit $MTL_SUITE_ACTIVATION_CACHE_MB."""
        return cls(default_cache_root() / "activations", activation_cache_limit_bytes())


def cut_key(cut: Cut, storage_dtype: str) -> str:
    parts = [FORMAT, keras.__version__, keras.backend.backend(), cut.lower.dtype_policy.name, str(cut.index),
             storage_dtype, str(cut.lower.input_shape[1:3]), backbone_digest(cut.lower)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def image_digests(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(np.ascontiguousarray(image).data).hexdigest()[:32] for image in images]


def activation_keys(cut: Cut, images: np.ndarray, store: ActivationStore | None, storage_dtype: str) -> list[str]:
    """The store's key of each image's activations ([] when nothing is stored). Hashes the weights below the cut:
    once per call."""
    if store is None or store.max_bytes <= 0:
        return []
    prefix = cut_key(cut, storage_dtype)
    return [f"{prefix}-{digest}" for digest in image_digests(images)]


def cut_activations(cut: Cut, images: np.ndarray, store: ActivationStore | None, storage_dtype: str,
                    batch_size: int = 48, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, *cut.shape) activations of `images` (raw pixels) in `storage_dtype`: read from `store`, the missing ones
    computed once and written there."""
    need = len(images) * int(np.prod(cut.shape)) * np.dtype(storage_dtype).itemsize
    _check_memory(need, cut, storage_dtype)
    keys = activation_keys(cut, images, store, storage_dtype)
    out, wrote = _activations(cut, images, keys, store, storage_dtype, batch_size, progress)
    if wrote:
        store.evict()
    return out


def _activations(cut: Cut, images: np.ndarray, keys: list[str], store: ActivationStore | None, storage_dtype: str,
                 batch_size: int, progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, bool]:
    """cut_activations given the images' keys, and whether it wrote to the store (the caller evicts, once)."""
    out = np.empty((len(images), *cut.shape), dtype=storage_dtype)
    usable = bool(keys)
    missing = []
    for row, key in enumerate(keys):
        cached = store.load(key)
        if cached is not None and cached.shape == cut.shape and cached.dtype == out.dtype:
            out[row] = cached
        else:
            missing.append(row)
    if not usable:
        missing = list(range(len(images)))
    for start in range(0, len(missing), CHUNK):
        rows = missing[start:start + CHUNK]
        out[rows] = np.asarray(cut.lower.predict(images[rows], batch_size=batch_size, verbose=0)).astype(storage_dtype)
        for row in rows if usable else []:
            store.save(keys[row], out[row], evict=False)
        if progress:
            progress(start + len(rows), len(missing))
    return out, usable and bool(missing)


def _check_memory(need: int, cut: Cut, storage_dtype: str) -> None:
    """Refuse, with advice, an array that would not fit in memory: better than the kernel's out-of-memory kill."""
    available = _available_memory()
    if available is not None and need > 0.8 * available:
        raise UserError(
            f"activations at cut {cut.layer} {cut.shape} for these images need {need / 2**30:.1f} GiB "
            f"({storage_dtype}); {available / 2**30:.1f} GiB of memory is available. Store them as float16 "
            "(--activation-dtype float16), cut higher (fewer --unfreeze-layers), use a smaller --image-size, "
            "or train without the cache (--activation-cut none)")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def describe_finetuning(backbone_name: str, image_size: int, cfg: TrainConfig, online_augment: bool) -> dict[str, str]:
    """What the fine-tuning phase runs through, for a run's tags: `finetune_path` (activations, images or none)
    and the cut. The cut depends only on the architecture and the trainable layers, so a model with random
    weights answers it."""
    from mtl_suite.models.backbones import build_backbone, set_trainable_top
    from mtl_suite.models.heads import build_classifier

    if cfg.finetune_epochs <= 0 or cfg.unfreeze_layers <= 0:
        return {"finetune_path": "none"}
    if online_augment:
        return {"finetune_path": "images", "finetune_path_why": "online augmentation: new images every epoch"}
    backbone, _ = build_backbone(backbone_name, image_size, "none")
    set_trainable_top(backbone, cfg.unfreeze_layers)
    cut = find_cut(build_classifier(backbone, "gap_softmax", 2), backbone, cfg.activation_cut, cfg.activation_dtype)
    if cut is None:
        return {"finetune_path": "images", "finetune_path_why": f"activation_cut {cfg.activation_cut}: no cut"}
    return {"finetune_path": "activations", "activation_cut": cut.layer, "activation_cut_index": str(cut.index),
            "activation_shape": "x".join(map(str, cut.shape)), "activation_dtype": cfg.activation_dtype}
