"""A final model's reliability parts: split-conformal sets (training/conformal.py) equal MAPIE's and reach their
coverage; the OOD detector (models/ood.py, training/ood.py) is one safe-mode Keras graph that computes the numpy
distance, flags about the held-out share it was set for, and flags a blank image, a magnified field and another
lab's smears."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_suite.config import DataConfig
from mtl_suite.data.images import resize
from mtl_suite.errors import UserError
from mtl_suite.imaging.augment import magnified
from mtl_suite.tasks import smear_task
from mtl_suite.training.conformal import ConformalCalibration, set_metrics
from mtl_suite.training.ood import (conformal_threshold, feature_model, fit_detector, fit_gaussians,
                                    mahalanobis_scores)
from mtl_suite.training.reliability import Reliability

SIZE = 96


def probabilities(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable (probabilities, labels): a softmax with the true class's logit raised."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += 2.0
    proba = np.exp(logits)
    return proba / proba.sum(axis=1, keepdims=True), labels


def test_conformal_sets_equal_mapies_lac_sets():
    from mapie import classification as mapie  # a dev dependency: the reference implementation
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Given(ClassifierMixin, BaseEstimator):  # a prefit classifier whose probabilities are its input
        def fit(self, x, y):
            self.classes_ = np.arange(x.shape[1])
            return self

        def predict_proba(self, x):
            return np.asarray(x)

        def predict(self, x):
            return np.asarray(x).argmax(axis=1)

    calibration, labels = probabilities(300, 4, seed=0)
    new, _ = probabilities(200, 4, seed=1)
    ours = ConformalCalibration.from_probabilities(calibration, labels)
    for coverage in (0.8, 0.9, 0.95):
        theirs = mapie.SplitConformalClassifier(Given().fit(calibration, labels), confidence_level=coverage,
                                                conformity_score="lac", prefit=True)
        theirs.conformalize(calibration, labels)
        np.testing.assert_array_equal(ours.sets(new, coverage), theirs.predict_set(new)[1][:, :, 0])


def test_conformal_sets_reach_their_coverage_on_exchangeable_images():
    calibration, labels = probabilities(2000, 4, seed=2)
    new, new_labels = probabilities(20000, 4, seed=3)
    ours = ConformalCalibration.from_probabilities(calibration, labels)
    for coverage in (0.9, 0.95, 0.99):
        got = set_metrics(ours.sets(new, coverage), new_labels)["coverage"]
        assert coverage - 0.01 <= got <= coverage + 0.01 + 1 / 2001, (coverage, got)
    # smaller coverage, smaller sets; a set can only lose classes
    assert (ours.sets(new, 0.9) <= ours.sets(new, 0.99)).all()


def test_too_few_calibration_images_give_every_class():
    ours = ConformalCalibration.from_probabilities(np.full((5, 3), 1 / 3), np.arange(5) % 3)
    assert ours.quantile(0.99) == np.inf and ours.sets(np.eye(3), 0.99).all()
    with pytest.raises(UserError, match="between 0 and 1"):
        ours.quantile(1.0)


def test_the_threshold_is_the_conformal_rank_of_the_held_out_scores():
    scores = np.arange(1, 201, dtype=float)  # 200 held-out scores 1..200
    assert conformal_threshold(scores, 0.015) == 198.0  # ceil(201 * 0.985) = 198
    assert conformal_threshold(scores[:10], 0.015) == 10.0  # too few to promise 1.5%: the largest


@pytest.fixture(scope="module")
def sample():
    """The bundled sample at SIZE px, its development images' folds as positions into them."""
    task = smear_task(DataConfig(image_size=SIZE, folds=3), "multiclass", None)
    development = task.split.development_indices
    position = np.full(len(task.split.entries), -1)
    position[development] = np.arange(len(development))
    folds = [(position[train], position[val]) for _, train, val in task.split.fold_indices()]
    return task, development, folds


@pytest.fixture(scope="module")
def fitted(sample):
    task, development, folds = sample
    return fit_detector(task.data.images[development], task.data.labels[development], folds)


def test_the_detector_graph_computes_the_numpy_distance_and_loads_in_safe_mode(sample, fitted, tmp_path):
    task, development, _ = sample
    images, labels = task.data.images[development], task.data.labels[development]
    features = np.asarray(feature_model(SIZE).predict(images.astype("float32"), verbose=0), dtype=np.float64)
    expected = mahalanobis_scores(*fit_gaussians(features, labels), features)
    got = np.asarray(fitted.model.predict(images.astype("float32"), verbose=0))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    reliability = Reliability(fitted.model, fitted.threshold, SIZE, None, fitted.flag_rate)
    loaded = Reliability.load(reliability.save(tmp_path / "reliability"))
    np.testing.assert_allclose(loaded.scores(images), got, rtol=1e-5)
    assert loaded.threshold == fitted.threshold and loaded.calibration is None


def test_held_out_images_are_flagged_at_about_the_rate_set_and_far_off_images_always(sample, fitted):
    task, _, _ = sample
    assert fitted.heldout_flagged_share <= 0.05  # at most ceil((n + 1) * 0.985) - 1 of n held-out images exceed it
    reliability = Reliability(fitted.model, fitted.threshold, SIZE, None, fitted.flag_rate)
    test_images = task.data.images[task.split.test_indices]
    assert np.mean(reliability.scores(test_images) > fitted.threshold) <= 0.1  # the outer test part: in-lab
    blank = np.stack([np.full((SIZE, SIZE, 3), level, dtype=np.uint8) for level in (128, 255)])
    assert (reliability.scores(blank) > fitted.threshold).all()
    four_times = np.stack([magnified(image, 4.0) for image in test_images])
    assert np.mean(reliability.scores(four_times) > fitted.threshold) >= 0.5


def test_read_flags_the_images_as_given_and_keeps_the_classifiers_answers(sample, fitted):
    task, _, _ = sample
    reliability = Reliability(fitted.model, fitted.threshold, SIZE, None, fitted.flag_rate)
    shown = [np.full((240, 320, 3), 200, np.uint8)] + list(task.data.images[task.split.test_indices][:4])
    answers = np.tile([0.7, 0.1, 0.1, 0.1], (len(shown), 1))
    readings = reliability.read(shown, lambda pixels: answers[:len(pixels)])
    expected = reliability.scores(np.stack([resize(image, SIZE) for image in shown]))
    np.testing.assert_allclose(readings.ood_score, expected, rtol=1e-5)
    np.testing.assert_array_equal(readings.in_distribution, expected <= fitted.threshold)
    assert readings.flagged[0]  # the uniform field
    np.testing.assert_array_equal(readings.proba, answers)  # a flag never changes the answer


@pytest.mark.slow
def test_another_labs_smears_are_flagged_and_the_training_labs_are_not(shared_data):
    """The real data, at the size the shipped recipe reads (224 px): a detector fitted on aria-all development
    images (a quarter of them, stratified, for time) flags every one of 30 BCCD fields (another lab, another
    magnification) as given, and few of the aria-all images it never saw."""
    from mtl_suite.data.images import read_rgb
    from mtl_suite.data.splits import make_split
    from mtl_suite.tasks import smear_manifest

    from sklearn.model_selection import StratifiedKFold

    manifest = smear_manifest(DataConfig(path=str(shared_data / "aria-all" / "original")))
    split = make_split(manifest, folds=4, test_fraction=0.2, seed=42)
    fit_rows, unseen_rows = split.indices(0), split.test_indices[::4]
    labels = np.array([manifest.classes.index(split.entries[i].label) for i in fit_rows])
    images = np.stack([resize(read_rgb(split.entries[i].path), 224) for i in fit_rows])
    folds = StratifiedKFold(4, shuffle=True, random_state=0).split(images, labels)
    fitted = fit_detector(images, labels, folds)
    reliability = Reliability(fitted.model, fitted.threshold, 224, None, fitted.flag_rate)
    unseen = np.stack([resize(read_rgb(split.entries[i].path), 224) for i in unseen_rows])
    bccd = sorted((shared_data / "bccd" / "JPEGImages").glob("*.jpg"))[::12]
    other_lab = reliability.read([read_rgb(path) for path in bccd], lambda pixels: np.zeros((len(pixels), 4)))
    assert len(bccd) >= 30 and other_lab.flagged.all()
    assert np.mean(reliability.scores(unseen) > fitted.threshold) <= 0.05
