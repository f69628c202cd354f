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


def test_gradcam_explains_the_first_network_of_an_averaging_model():
    """Fold ensemble, flips and colour fusion wrap the network: Grad-CAM reads the first one (fold 0, unflipped, the
    CNN half) and says it explains a part."""
    from mtl_suite.analysis.gradcam import GradCam
    from mtl_suite.models.backbones import build_backbone
    from mtl_suite.models.colour import colour_classifier
    from mtl_suite.models.ensemble import fold_ensemble, with_colour, with_flips
    from mtl_suite.models.heads import build_classifier

    members = [build_classifier(build_backbone("tiny", 64, "none")[0], "dense_dropout", 3) for _ in range(2)]
    colour = colour_classifier((64, 64, 3), "none", np.zeros((124, 3)), np.zeros(3), single_sigmoid=False)
    model = with_colour(with_flips(fold_ensemble(members)), colour)
    cam = GradCam(model)
    assert cam.partial and cam.model is members[0] and not GradCam(members[1]).partial
    heat, _ = cam.heatmaps(np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32"))
    assert heat.shape == (2, 64, 64)


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
    main, variants = [b for b in blocks if isinstance(b, rp.Table)]  # no as_binary metrics: no third table
    assert main.rows[0][1:4] == ("99.00 / 90.00", "97.00 / 87.50", "40.00 / 80.00")
    assert main.rows[0][4].startswith("hist32 (") and main.rows[0][5] == "logged by the stage run"
    assert {r[1] for r in variants.rows} == {"hist8", "hist32"}

    read_binary = {**logged, "cv/as_binary/accuracy_mean": 0.95, "test/as_binary/accuracy": 0.9,
                   "test/as_binary/sensitivity": 1.0, "test/as_binary/specificity": 0.5,
                   "shortcut/best/as_binary/cv_accuracy": 0.97, "shortcut/best/as_binary/test_accuracy": 0.98}
    tables = [b for b in shortcut_section([_run_data(tmp_path / "a", read_binary, {}, False)])
              if isinstance(b, rp.Table)]
    assert tables[2].rows[0][1:] == ("97.00 / 95.00", "98.00 / 90.00", "100.00 / 50.00")

    (tmp_path / "b").mkdir()
    older = _run_data(tmp_path / "b", {"cv/accuracy_mean": 0.5, "test/accuracy": 0.5}, {}, True)
    main = [b for b in shortcut_section([older]) if isinstance(b, rp.Table)][0]
    assert main.rows[0][1] == "100.00 / 50.00" and main.rows[0][2] == "100.00 / 50.00"
    assert main.rows[0][5] == "recomputed here from 24 images"


def _predicted(frame, right: list[bool]):
    """`frame` (path, label over blue/red) with one-hot p_ columns: the true class where `right`, else the other."""
    frame = frame.copy()
    truth = (frame["label"] == "red").to_numpy()
    called_red = [t if ok else not t for t, ok in zip(truth, right)]
    frame["p_red"] = np.array(called_red, dtype=float)
    frame["p_blue"] = 1.0 - frame["p_red"]
    return frame


def test_confusion_and_rate_tables_on_both_parts(tmp_path):
    from mtl_suite.analysis import report_sections as sections

    rd = _run_data(tmp_path, {}, {}, False)
    rd.oof = _predicted(rd.oof, [True] * 16)
    # test rows alternate red, blue (i = 16..23): one red called blue, one blue called red
    rd.test = _predicted(rd.test, [False, True, True, True, True, False, True, True])
    blocks = sections.confusion_tables([rd], sections.TEST_PART)
    assert blocks[0].text == "Table IV: confusion matrices (outer test part)"
    matrix = blocks[1]
    assert matrix.rows == (("blue", "3 (75.0%)", "1 (25.0%)"), ("red", "1 (25.0%)", "3 (75.0%)"))
    assert "0.750 (6/8; 95% CI" in matrix.caption
    rates = [b for b in sections.rate_tables([rd]) if isinstance(b, rp.Table)][0]
    assert rates.header[1:] == ("CV n", "CV sensitivity (%)", "CV specificity (%)", "test n",
                                "test sensitivity (%)", "test specificity (%)")
    assert rates.rows[0] == ("blue", 8, "100.00", "100.00", 4, "75.00", "75.00")
    # a run without test predictions: the test part comes from its logged metrics, without counts
    rd.test = None
    rd.run.data.metrics.update({"test/sensitivity/red": 0.5, "test/specificity/red": 0.25})
    rates = [b for b in sections.rate_tables([rd]) if isinstance(b, rp.Table)][0]
    assert rates.rows[1][4:] == ("n/a", "50.00", "25.00")


def _stage_run(stage: str, task: str, metrics: dict, params: dict | None = None, image_size: str = "32",
               tags: dict | None = None):
    from types import SimpleNamespace

    tags = {"stage": stage, "backbone": "tiny", "task": task, "image_size": image_size, **(tags or {})}
    return SimpleNamespace(data=SimpleNamespace(metrics=metrics, tags=tags, params=params or {}),
                           info=SimpleNamespace(run_id=f"{stage}-run".ljust(32, "0")))


def test_test_part_table_shows_n_interval_specificity_and_earlier_looks():
    from mtl_suite.analysis import report_sections as sections

    logged = {"test/accuracy": 0.75, "test/n": 8.0, "test/accuracy_ci_low": 0.409, "test/accuracy_ci_high": 0.929,
              "test/majority_class_accuracy": 0.5, "test/precision": 0.75, "test/recall": 0.75, "test/f1": 0.75,
              "test/specificity": 0.75}
    older = {"test/accuracy": 0.5}  # a run from before n, interval and specificity were logged
    looked = {"test_part_earlier_configurations": "27"}  # the ledger's count, recorded by the run
    groups = {("stage3", "tiny", "binary"): [_stage_run("stage3", "binary", logged, tags=looked)],
              ("classical", "tiny", "binary"): [_stage_run("classical", "binary", older)],
              ("stage3", "tiny", "multiclass"): [_stage_run("stage3", "multiclass", logged)]}
    table = [b for b in sections.test_metric_table(groups, "binary", "T") if isinstance(b, rp.Table)][0]
    assert table.header[2:5] == ("n", "accuracy [95% CI] (%)", "majority class (%)")
    assert table.header[-3:-1] == ("specificity (%)", "earlier configurations")
    classical, mtl = table.rows
    assert mtl[2:9] == (8, "75.00 [40.90, 92.90]", "50.00", "75.00", "75.00", "75.00", "75.00")
    assert mtl[-2] == "27"
    assert classical[2:5] == ("n/a", "50.00", "n/a") and classical[-3:-1] == ("n/a", "n/a")
    multiclass = [b for b in sections.test_metric_table(groups, "multiclass", "T") if isinstance(b, rp.Table)][0]
    assert multiclass.header[-3] == "specificity (macro) (%)"


def test_table_one_reads_the_params_each_run_logged():
    from mtl_suite.analysis import report_sections as sections
    from mtl_suite.config import ExperimentConfig, TrainConfig
    from mtl_suite.tracking.runs import config_params

    params = config_params(ExperimentConfig(train=TrainConfig(backbone="tiny", warmup_epochs=4, finetune_epochs=2,
                                                                learning_rate=0.002, dense_units=(64, 32),
                                                                augment="paper", stain="gray")))
    groups = {("stage3", "tiny", "binary"): [_stage_run("stage3", "binary", {}, params)],
              ("stage2", "tiny", "binary"): [_stage_run("stage2", "binary", {}, params, "64")],
              ("stage1", "tiny", "imagenet"): [_stage_run("stage1", "imagenet", {}, params)]}
    table = [b for b in sections.hyperparameter_table(groups) if isinstance(b, rp.Table)][0]
    assert [row[1] for row in table.rows] == ["stage 2 (2 transfers)", "MTL (3 transfers)"]  # stage 1 trained nothing
    row = dict(zip(table.header, table.rows[1]))
    assert row["image size (px)"] == "32" and row["optimiser"] == "Adam"
    assert row["warm-up / fine-tune epochs"] == "4 / 2"
    assert row["learning rate: warm-up / fine-tune"] == "0.002 / 0.0001"
    assert row["dense units"] == "64,32" and row["augmentation / mode"] == "paper / online"
    assert row["stain control"] == "gray" and row["batch size"] == "48"
    assert dict(zip(table.header, table.rows[0]))["image size (px)"] == "64"


def test_data_section_states_the_label_substitution(tmp_path):
    from mtl_suite.analysis import report_sections as sections

    rd = _run_data(tmp_path, {}, {}, False)
    other = [b.text for b in sections.data_section([rd]) if isinstance(b, rp.Para)]
    assert other and "data's own classes (blue, red)" in other[-1] and "FAB" in other[-1]
    for row in rd.split["rows"]:
        row["label"] = {"red": "Early", "blue": "Benign"}[row["label"]]
    aria = [b.text for b in sections.data_section([rd]) if isinstance(b, rp.Para)][-1]
    assert "Aria" in aria and "not the paper's FAB classes Normal, L1, L2, L3" in aria and "ALL-IDB" in aria


def test_report_header_names_the_report_code_and_each_runs_code(tmp_path):
    """`mtl-suite report`: its own commit and the commits its runs recorded; an old run's "unknown" said plainly."""
    from types import SimpleNamespace

    from mtl_suite.analysis import report_sections as sections

    sha = "0123456789abcdef" * 2 + "01234567"

    def run(commit):
        return SimpleNamespace(data=SimpleNamespace(tags={"git_commit": commit} if commit is not None else {}))

    runs = [run(sha), run(sha), run("unknown"), run(None)]
    blocks = sections.report_header("cmp", "sqlite://", runs, tmp_path, None, (), "not a git checkout: mtl-suite 0.1.0")
    bullets = next(b for b in blocks if isinstance(b, rp.Bullets)).items
    assert ("code: this report not a git checkout: mtl-suite 0.1.0; the runs' code: git 0123456789ab (2 runs), "
            "not recorded by the run (2 runs)") in bullets
    assert not any("git unknown" in item for item in bullets)
