"""Fold ensembles and test-time flips (models/ensemble.py): one Keras graph that averages its members, saved and
loaded in safe mode like any classifier, and scored member by member through the activation cache with the same
probabilities as the whole graph."""

from __future__ import annotations

from dataclasses import replace

import keras
import numpy as np
import pytest

from mtl_suite.config import TrainConfig, keyed_settings, load_config
from mtl_suite.errors import UserError
from mtl_suite.models.backbones import build_backbone, set_trainable_top
from mtl_suite.models.ensemble import FLIP_VIEWS, flipped, fold_ensemble, prediction_parts, with_flips
from mtl_suite.models.heads import build_classifier
from mtl_suite.training.activations import ActivationStore
from mtl_suite.training.fit import activation_cache_for, predict_proba

SIZE = 32


def classifier(seed: int, unfreeze: int = 1) -> keras.Model:
    """A tiny classifier with random weights that differ by seed; its top `unfreeze` layers trainable, as a
    fine-tuned fold model is."""
    keras.utils.set_random_seed(seed)
    backbone, _ = build_backbone("tiny", SIZE, "none")
    model = build_classifier(backbone, "dense_dropout", 3, (8,), 0.0)
    set_trainable_top(backbone, unfreeze)
    return model


def images(n: int = 6) -> np.ndarray:
    # asymmetric content, so that a flip changes what the network sees
    return np.random.default_rng(0).integers(0, 255, (n, SIZE, SIZE, 3)).astype(np.uint8)


def test_an_ensemble_with_flips_averages_its_members_and_loads_in_safe_mode(tmp_path):
    members = [classifier(seed) for seed in (1, 2, 3)]
    x = images().astype("float32")
    each = [member.predict(x, verbose=0) for member in members]
    assert not np.allclose(each[0], each[1])  # the members differ, so the mean is a real test

    ensemble = fold_ensemble(members)
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), np.mean(each, axis=0), rtol=1e-5, atol=1e-6)
    wrapped = with_flips(ensemble)
    by_view = [ensemble.predict(flipped(x, axes), verbose=0) for axes in FLIP_VIEWS]
    assert not np.allclose(by_view[0], by_view[1])
    expected = np.mean(by_view, axis=0)
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)

    path = tmp_path / "model.keras"
    wrapped.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-6)
    assert [axes for axes, _ in prediction_parts(loaded)] == list(FLIP_VIEWS)
    inner = prediction_parts(loaded)[0][1]
    assert [member.name for _, member in prediction_parts(inner)] == ["fold_0", "fold_1", "fold_2"]
    assert prediction_parts(members[0]) is None  # a plain classifier is not taken apart


def test_members_are_scored_through_the_cache_with_the_graphs_probabilities(tmp_path):
    """predict_proba takes the ensemble apart: every member's top runs on cached activations, and the frozen bottom
    the members share runs once per image and flip, not once per member."""
    members = [classifier(4), classifier(4)]  # fold models: the same start, so the same frozen bottom ...
    for variable in members[1].trainable_weights:  # ... and their own trainable top
        variable.assign(variable + np.random.default_rng(1).normal(0, 0.3, variable.shape).astype("float32"))
    model = with_flips(fold_ensemble(members))
    x = images()
    whole = model.predict(x.astype("float32"), verbose=0)
    cfg = TrainConfig(backbone="tiny", finetune_epochs=1, unfreeze_layers=1, batch_size=4)
    store = ActivationStore(tmp_path / "activations", 2**30)

    model.predict = lambda *args, **kwargs: pytest.fail("ran the whole graph instead of the members' tops")
    scored = predict_proba(model, x, 4, activation_cache=activation_cache_for(cfg, store))
    np.testing.assert_allclose(scored, whole, rtol=1e-4, atol=1e-5)
    assert len(store.entries()) == len(x) * len(FLIP_VIEWS)


def test_re_stained_images_are_scored_chunk_by_chunk_with_the_graphs_probabilities(monkeypatch):
    """The robustness check scores an ensemble a chunk at a time (a throw-away store per chunk bounds the disk it
    takes); chunks of 4 over 6 images, so the last one is partial."""
    from mtl_suite.workflows import stage_checks

    model = with_flips(fold_ensemble([classifier(5), classifier(6)]))
    x = images()
    whole = model.predict(x.astype("float32"), verbose=0)
    monkeypatch.setattr(stage_checks, "SHIFTED_CHUNK", 4)
    cfg = TrainConfig(backbone="tiny", finetune_epochs=1, unfreeze_layers=1, batch_size=4)
    np.testing.assert_allclose(stage_checks._shifted_predictions(model, x, cfg), whole, rtol=1e-4, atol=1e-5)


def test_ensemble_and_tta_are_validated_and_stay_out_of_keys_when_unset():
    with pytest.raises(UserError, match="'train.ensemble' must be one of none, folds. Received: 'bag'"):
        load_config(overrides={"train.ensemble": "bag"})
    with pytest.raises(UserError, match="at least 2 folds for a fold ensemble"):
        load_config(overrides={"train.ensemble": "folds", "data.folds": 1})
    default = keyed_settings(load_config())
    assert "train.ensemble" not in default and "train.tta" not in default  # keys made before them still match
    assert keyed_settings(load_config(overrides={"train.tta": "flips"}))["train.tta"] == "flips"


def test_a_resumed_fold_ensemble_reuses_finished_folds_only_with_their_weights(tmp_path):
    """A fold the tracking store has finished is reused when its weights were kept in the run's checkpoint folder
    (same members as an uninterrupted run), and trained again when they were not."""
    from mtl_suite.data.manifest import Entry
    from mtl_suite.data.splits import Split
    from mtl_suite.training.cv import FoldResult, SilentObserver, cross_validate, fold_reusable
    from mtl_suite.training.fit import ArrayData

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 12)
    pixels = rng.integers(0, 100, (24, SIZE, SIZE, 3)).astype(np.uint8)
    pixels[labels == 1] += 100
    entries = tuple(Entry(f"{i}.png", str(label), "x", "g", SIZE, SIZE) for i, label in enumerate(labels))
    split = Split(entries, tuple(int(i % 2) for i in range(24)), 2, 0.0, 0, "digest")
    cfg = TrainConfig(backbone="tiny", weights="none", warmup_epochs=1, finetune_epochs=1, unfreeze_layers=2,
                      batch_size=8, early_stopping_patience=0, ensemble="folds", activation_cut="none")

    def factory():
        backbone, _ = build_backbone("tiny", SIZE, "none")
        return build_classifier(backbone, "dense_dropout", 2, (8,), 0.1), backbone

    class Trained(SilentObserver):
        def __init__(self):
            self.folds = []

        def fold_started(self, fold, n_train, n_val, resumed_history=None):
            self.folds.append(fold)

    data, checkpoints = ArrayData(pixels, labels), tmp_path / "checkpoints"
    whole = cross_validate(data, split, ["0", "1"], factory, cfg, checkpoints=checkpoints)
    assert len(whole.members) == 2 and (checkpoints / "members" / "fold-0.npz").is_file()
    # what a resumed run gets from the store for fold 0: its results, not its model
    fold_0 = whole.oof_fold == 0
    stored = FoldResult("fold-0", whole.fold_metrics[0], whole.histories[0], whole.oof_index[fold_0],
                        whole.oof_proba[fold_0])
    from_store = {"fold-0": FoldResult.from_json(stored.to_json())}

    observer = Trained()
    resumed = cross_validate(data, split, ["0", "1"], factory, cfg, observer, completed=from_store,
                             checkpoints=checkpoints)
    assert observer.folds == ["fold-1"]
    for ours, theirs in zip(resumed.members[0], whole.members[0]):
        np.testing.assert_array_equal(ours, theirs)

    assert fold_reusable("fold-0", cfg, checkpoints) and fold_reusable("fold-0", replace(cfg, ensemble="none"), None)
    (checkpoints / "members" / "fold-0.npz").unlink()
    assert not fold_reusable("fold-0", cfg, checkpoints)  # so a resumed run drops the stored fold-0 run (below)
    observer = Trained()
    cross_validate(data, split, ["0", "1"], factory, cfg, observer, completed=from_store, checkpoints=checkpoints)
    assert observer.folds == ["fold-0", "fold-1"]


def test_adopting_an_interrupted_run_drops_the_finished_folds_that_will_be_trained_again(tmp_path):
    """A finished fold that cannot be reused (a fold ensemble's fold whose weights were not kept) is trained again
    under the new run, so its old run goes: one run per fold, never two fold-0 runs under one stage run."""
    import mlflow

    from mtl_suite.tracking import resume
    from mtl_suite.training.cv import FoldResult

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("adopt")
    old = client.create_run(experiment)
    for fold in ("fold-0", "fold-1"):
        child = client.create_run(experiment, tags={"mlflow.parentRunId": old.info.run_id, "fold": fold})
        result = FoldResult(fold, {"accuracy": 0.5}, {"loss": [1.0]}, np.array([0]), np.array([[0.5, 0.5]]))
        client.log_dict(child.info.run_id, result.to_json(), resume.FOLD_RESULT)
        client.set_terminated(child.info.run_id, "FINISHED")
    new = client.create_run(experiment)
    said = []
    folds = resume.adopt(client.get_run(old.info.run_id), new.info.run_id, said.append,
                         reusable=lambda fold: fold == "fold-1")
    assert list(folds) == ["fold-1"] and "1 finished fold(s) reused (fold-1)" in said[0]
    under_new = mlflow.search_runs([experiment], f"tags.mlflow.parentRunId = '{new.info.run_id}'",
                                   output_format="list")
    assert [run.data.tags["fold"] for run in under_new] == ["fold-1"]
    left = mlflow.search_runs([experiment], f"tags.mlflow.parentRunId = '{old.info.run_id}'", output_format="list")
    assert left == []  # fold-0's run is deleted, not left behind under the old attempt
