"""Numeric precision of the models: float32, or mixed (16-bit compute, float32 weights and outputs).

`mixed` picks float16 on a GPU (tensor cores on every CUDA GPU from compute capability 7.0; Keras adds loss
scaling) and bfloat16 elsewhere (no loss scaling needed; fast only on CPUs with AVX512-BF16/AMX and on TPUs, so on
an ordinary CPU keep float32, the default). The policy is set only while a model is built: Keras stores it in every
layer, and the process-wide default stays float32 for whatever is built next.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras

from mtl_suite.config import PRECISIONS
from mtl_suite.errors import UserError


def policy_name(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}. Expected one of: {', '.join(PRECISIONS)}")
    if precision == "mixed":
        return "mixed_float16" if gpu_available() else "mixed_bfloat16"
    return precision


def gpu_available() -> bool:
    backend = keras.backend.backend()  # the suite runs on TensorFlow; Keras code also runs on JAX and torch
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(device.platform == "gpu" for device in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def precision_scope(precision: str) -> contextlib.AbstractContextManager[str]:
    """Build models inside this block to give them `precision`'s dtype policy; yields the policy name."""
    return dtype_policy_scope(policy_name(precision))


@contextlib.contextmanager
def dtype_policy_scope(name: str) -> Iterator[str]:
    """Any Keras dtype policy (e.g. an existing model's) as the default while the block builds layers."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield name
    finally:
        keras.config.set_dtype_policy(previous)
