"""Calibration, the report's colour shortcut section, Grad-CAM and the HTML renderer on small fixed inputs."""

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


def _run_data(tmp_path, metrics, tags, with_images: bool):
    """A RunData of a 2-class run on 24 colour-coded images (16 development in 2 folds, 8 test)."""
    from types import SimpleNamespace

    import pandas as pd
    from PIL import Image

    from mtl_suite.analysis.report_sections import RunData

    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        label = ("red", "blue")[i % 2]
        path = tmp_path / f"{i}.png"
        if with_images:
            base = (200, 80, 80) if label == "red" else (80, 80, 200)
            Image.fromarray(np.clip(base + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)).save(path)
        rows.append({"path": str(path), "label": label, "role": "test" if i >= 16 else f"fold-{(i // 2) % 2}"})
    frame = pd.DataFrame(rows)
    oof = frame[frame["role"] != "test"][["path", "label"]]
    test = frame[frame["role"] == "test"][["path", "label"]]
    run = SimpleNamespace(data=SimpleNamespace(metrics=metrics, tags={"backbone": "tiny", "task": "binary",
                                                                      "stage": "stage3", **tags}, params={}),
                          info=SimpleNamespace(run_id="r" * 32))
    return RunData(run, ["blue", "red"], 32, oof, test, {"rows": rows}, 0)


def test_shortcut_section_shows_logged_baselines_and_recomputes_for_older_runs(tmp_path):
    from mtl_suite.analysis.report_sections import shortcut_section

    logged = {"cv/accuracy_mean": 0.9, "test/accuracy": 0.875, "robustness/stain_shift_accuracy": 0.8,
              "robustness/shortcut_stain_shift_accuracy": 0.4, "shortcut/best/cv_accuracy": 0.99}
    for variant, cv, test in (("hist8", 0.95, 0.9), ("hist32", 0.99, 0.97)):
        logged.update({f"shortcut/{variant}/cv_accuracy": cv, f"shortcut/{variant}/test_accuracy": test})
    blocks = shortcut_section([_run_data(tmp_path / "a", logged, {"shortcut/best_variant": "hist32"}, False)])
    main, variants = [b for b in blocks if isinstance(b, rp.Table)]
    assert main.rows[0][1:4] == ("99.00 / 90.00", "97.00 / 87.50", "40.00 / 80.00")
    assert main.rows[0][4].startswith("hist32 (") and main.rows[0][5] == "logged by the stage run"
    assert {r[1] for r in variants.rows} == {"hist8", "hist32"}

    (tmp_path / "b").mkdir()
    older = _run_data(tmp_path / "b", {"cv/accuracy_mean": 0.5, "test/accuracy": 0.5}, {}, True)
    main = [b for b in shortcut_section([older]) if isinstance(b, rp.Table)][0]
    assert main.rows[0][1] == "100.00 / 50.00" and main.rows[0][2] == "100.00 / 50.00"
    assert main.rows[0][5] == "recomputed here from 24 images"
