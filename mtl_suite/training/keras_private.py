"""The one module that touches Keras's private names. Resumable epochs (checkpoint.py) reseed every dropout seed
generator of a model, and Keras lists neither a model's nested layers nor a layer's seed generators publicly.
Private names may change in any release, so pyproject.toml and conda.yaml cap Keras below its next minor version,
and `missing_attributes()` (run by tests/unit/test_private_api.py) names each one an upgrade dropped. Every other
module goes through the functions here."""

from __future__ import annotations

import keras


def flatten_layers(model: keras.Layer) -> list[keras.Layer]:
    """Every layer inside the model, nested ones included, the model itself excluded (`Layer._flatten_layers`)."""
    return model._flatten_layers(include_self=False)


def seed_generators(layer: keras.Layer) -> list[keras.random.SeedGenerator]:
    """The layer's own seed generators (`Layer._seed_generators`; dropout has one), [] for a layer without any."""
    return getattr(layer, "_seed_generators", [])


def missing_attributes() -> list[str]:
    """Every private name above that the installed Keras lacks (or that no longer finds a nested dropout's seed
    generator), checked on a tiny real model; [] when all are there."""
    dropout = keras.layers.Dropout(0.5)
    inner = keras.Sequential([keras.Input((2,)), dropout])
    model = keras.Sequential([keras.Input((2,)), inner])
    missing = [f"keras.layers.Layer.{name}" for name, obj in (("_flatten_layers", model), ("_seed_generators", dropout))
               if not hasattr(obj, name)]
    if missing:
        return missing
    try:
        found = dropout in flatten_layers(model) and bool(seed_generators(dropout))
    except TypeError as error:  # a changed signature
        return [f"keras.layers.Layer._flatten_layers(include_self=False): {error}"]
    return [] if found else ["keras.layers.Layer._flatten_layers / _seed_generators no longer reach a nested Dropout's "
                             "seed generator"]
