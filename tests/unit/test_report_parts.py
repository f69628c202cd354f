"""Calibration, the colour shortcut baseline, Grad-CAM and the HTML renderer on small fixed inputs."""

import base64
import re

import numpy as np
import pytest

from mtl_suite.analysis import report as rp
from mtl_suite.analysis.calibration import reliability


def test_ece_by_hand():
    y = np.array([0, 1, 1, 0])
    proba = np.array([[0.95, 0.05], [0.15, 0.85], [0.65, 0.35], [0.25, 0.75]])
    # confidences 0.95, 0.85, 0.65, 0.75 in bins 9, 8, 6, 7; correct 1, 1, 0, 0
    rel = reliability(y, proba, 10)
    assert rel.ece == pytest.approx((0.05 + 0.15 + 0.65 + 0.75) / 4)
    assert rel.count.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    # two predictions in one bin: accuracy 0.5, confidence 0.94 -> gap 0.44, weight 2/2
    rel2 = reliability(np.array([0, 0]), np.array([[0.92, 0.08], [0.04, 0.96]]), 10)
    assert rel2.ece == pytest.approx(0.44)
    # a single sigmoid column is read as P(class 1)
    assert reliability(np.array([1]), np.array([[0.9]])).ece == pytest.approx(0.1)


def test_shortcut_separates_colours(tmp_path):
    from PIL import Image

    from mtl_suite.analysis.shortcut import features, shortcut_scores

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for i in range(24):
        label = i % 2
        base = np.array([200, 80, 80]) if label else np.array([80, 80, 200])
        pixels = np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        path = tmp_path / f"{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
        labels.append(label)
    x, y = features(paths), np.array(labels)
    fold = np.array([i % 3 for i in range(18)])
    s = shortcut_scores(x[:18], y[:18], fold, x[18:], y[18:])
    assert s.cv_accuracy == 1.0 and s.test_accuracy == 1.0
    # labels unrelated to colour: near chance, far from perfect
    shuffled = rng.permutation(y)
    s2 = shortcut_scores(x[:18], shuffled[:18], fold, x[18:], shuffled[18:])
    assert s2.cv_accuracy < 0.9


@pytest.mark.parametrize("n_classes", [2, 3])
def test_gradcam_replays_the_model(n_classes):
    from mtl_suite.analysis.gradcam import GradCam
    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.heads import build_classifier

    backbone, _ = build_backbone("tiny", 64, "none")
    model = build_classifier(backbone, "dense_dropout", n_classes)
    images = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    cam = GradCam(model)
    assert cam.feature_name == "tiny_relu2" and cam.feature_size == (8, 8)
    heat, proba = cam.heatmaps(images)
    direct = model.predict(images, verbose=0)
    if n_classes == 2:
        direct = np.concatenate([1 - direct, direct], axis=1)
    np.testing.assert_allclose(proba, direct, rtol=1e-4, atol=1e-5)
    assert heat.shape == (3, 64, 64)
    assert heat.min() >= 0 and heat.max() <= 1
    assert heat.reshape(3, -1).max(axis=1).max() > 0.9  # normalised to a peak of 1 before bilinear resizing


def test_html_embeds_every_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = tmp_path / "fig.png"
    plt.plot([0, 1])
    plt.savefig(png)
    plt.close()
    blocks = [rp.Heading("T", 1), rp.Para("a `code` & <b>"), rp.Table(("a", "b"), ((1, 0.5),)),
              rp.Figure(png, "caption"), rp.Bullets(("x",)), rp.Code("cmd")]
    page = rp.to_html(blocks, "t")
    sources = re.findall(r'<img[^>]+src="data:image/png;base64,([^"]+)"', page)
    assert len(sources) == 1 and base64.b64decode(sources[0]) == png.read_bytes()
    assert "&lt;b&gt;" in page and "<code>code</code>" in page and "http" not in page
    md = rp.to_markdown(blocks, tmp_path)
    assert "![caption](fig.png)" in md and "| 1 | 0.5000 |" in md
