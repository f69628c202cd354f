"""train.execution: short training phases run eagerly (no tracing), long ones as traced graphs, and either way the
fit gives the same results."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from mtl_suite.config import TrainConfig
from mtl_suite.models.backbones import build_backbone
from mtl_suite.models.heads import build_classifier
from mtl_suite.training import fit as fit_module
from mtl_suite.training.features import FeatureStore
from mtl_suite.training.fit import EAGER_STEP_LIMITS, ArrayData, compile_for, fit_classifier, runs_eagerly

SIZE = 32


def test_auto_runs_a_phase_eagerly_up_to_the_step_limit():
    auto = TrainConfig()
    for on_features, limit in ((True, EAGER_STEP_LIMITS["features"]), (False, EAGER_STEP_LIMITS["images"])):
        assert runs_eagerly(auto, 1, on_features) and runs_eagerly(auto, limit, on_features)
        assert not runs_eagerly(auto, limit + 1, on_features)
    assert EAGER_STEP_LIMITS["features"] > EAGER_STEP_LIMITS["images"], "a head step is the cheap one to run eagerly"
    assert not runs_eagerly(dataclasses.replace(auto, jit_compile=True), 1), "XLA asked for: compile, even if short"
    assert not runs_eagerly(dataclasses.replace(auto, execution="graph"), 1)
    assert runs_eagerly(dataclasses.replace(auto, execution="eager"), 1000)


def record_compiled_modes(monkeypatch) -> list[tuple[str, str]]:
    """(model name, execution) of every model fit_classifier compiles, in order: "head" is the head trained on
    cached features, "top" the layers above the activation cut, "classifier" the whole network. Wraps the real
    compile_for; nothing else changes."""
    seen: list[tuple[str, str]] = []
    real = fit_module.compile_for

    def recording(model, *args, **kwargs):
        real(model, *args, **kwargs)
        seen.append((model.name, "eager" if model.run_eagerly else "graph"))

    monkeypatch.setattr(fit_module, "compile_for", recording)
    return seen


def fit(execution: str, tmp_path, monkeypatch, warmup_epochs: int = 3, feature_cache: bool = True):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 3
    images = (rng.integers(0, 120, (40, SIZE, SIZE, 3)) + labels[:, None, None, None] * 60).astype(np.uint8)
    train, val = ArrayData(images[:28], labels[:28]), ArrayData(images[28:], labels[28:])
    # 28 images in batches of 8: 4 steps per epoch; the fine-tuning is 8 steps (at the limit for training through
    # the backbone), the warm-up 12 (on cached features: eager under auto) or 16 (on images: traced under auto)
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=warmup_epochs, finetune_epochs=2,
                      unfreeze_layers=2, batch_size=8, learning_rate=0.1, seed=3, execution=execution,
                      feature_cache=feature_cache)
    keras.utils.set_random_seed(cfg.seed)
    backbone, _ = build_backbone("tiny", SIZE, "none")
    model = build_classifier(backbone, "dense_dropout", 3, (16,), 0.5)  # dropout: same draws in both modes
    with monkeypatch.context() as patch:
        seen = record_compiled_modes(patch)
        history = fit_classifier(model, backbone, train, val, cfg, 3,
                                 feature_store=FeatureStore(tmp_path / "features", 2**30))
    return history, model.get_weights(), seen


@pytest.mark.parametrize(("warmup_epochs", "feature_cache"), [(3, True), (4, False)],
                         ids=["cached-12-step-warmup", "uncached-16-step-warmup"])
def test_eager_and_graph_fits_give_the_same_results(tmp_path, monkeypatch, warmup_epochs, feature_cache):
    graph_history, graph_weights, graph_modes = fit("graph", tmp_path, monkeypatch, warmup_epochs, feature_cache)
    eager_history, eager_weights, eager_modes = fit("eager", tmp_path, monkeypatch, warmup_epochs, feature_cache)
    auto_history, auto_weights, auto_modes = fit("auto", tmp_path, monkeypatch, warmup_epochs, feature_cache)
    warmup_model = "head" if feature_cache else "classifier"
    # (warm-up, fine-tuning): under auto the 12-step warm-up on features runs eagerly, the 16-step one on images is
    # traced, and the 8-step fine-tuning (at the limit through the backbone) runs eagerly
    auto_warmup = "eager" if feature_cache else "graph"
    finetune_model = "top"  # the layers above the cut, on cached activations (training/activations.py)
    assert graph_modes == [(warmup_model, "graph"), (finetune_model, "graph")]
    assert eager_modes == [(warmup_model, "eager"), (finetune_model, "eager")]
    assert auto_modes == [(warmup_model, auto_warmup), (finetune_model, "eager")]
    for history, weights in ((eager_history, eager_weights), (auto_history, auto_weights)):
        assert history.keys() == graph_history.keys()
        for key in graph_history:
            np.testing.assert_allclose(history[key], graph_history[key], rtol=1e-4, atol=1e-5, err_msg=key)
        for got, want in zip(weights, graph_weights, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_model_trained_eagerly_is_not_saved_as_eager(tmp_path):
    """Serving loads the saved model: its predictions must run through a traced graph, whatever training did."""
    backbone, _ = build_backbone("tiny", SIZE, "none")
    model = build_classifier(backbone, "dense_dropout", 3, (16,), 0.5)
    compile_for(model, 3, 1e-3, 0.9, 4, run_eagerly=True)
    assert model.run_eagerly
    model.optimizer.build(model.trainable_variables)  # as after training: saved with its state
    model.save(tmp_path / "model.keras")
    assert not keras.models.load_model(tmp_path / "model.keras").run_eagerly
