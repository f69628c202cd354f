"""CTL vs MTL statistics against values computed by hand (see the comments) on fixed inputs."""

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as sps

from mtl_suite.analysis import compare as c

CTL = [0.80, 0.82, 0.78, 0.85, 0.80]
MTL = [0.83, 0.84, 0.80, 0.86, 0.84]
# d = MTL - CTL = [0.03, 0.02, 0.02, 0.01, 0.04]: mean 0.024, squared deviations sum 520e-6, var 130e-6
MEAN_D, VAR_D = 0.024, 130e-6


def test_paired_t_by_hand():
    t = MEAN_D / math.sqrt(VAR_D / 5)  # 4.70679
    res = c.paired_t_test(CTL, MTL)
    assert res.statistic == pytest.approx(4.706787, rel=1e-5)
    assert res.statistic == pytest.approx(t)
    assert res.df == 4
    assert res.p_value == pytest.approx(2 * sps.t.sf(t, 4))
    assert 0.005 < res.p_value < 0.01


def test_nadeau_bengio_corrected_t_by_hand():
    # n_test / n_train = 0.25: t = 0.024 / sqrt((1/5 + 0.25) * 130e-6) = 0.024 / sqrt(58.5e-6) = 3.13788
    res = c.corrected_resampled_t_test(CTL, MTL, 0.25)
    assert res.statistic == pytest.approx(3.137858, rel=1e-5)
    assert res.df == 4
    assert res.p_value == pytest.approx(2 * sps.t.sf(3.137858, 4), rel=1e-4)
    # the correction always shrinks t relative to the plain paired test
    assert res.statistic < c.paired_t_test(CTL, MTL).statistic
    # ratio 0 gives back the plain paired t-test
    assert c.corrected_resampled_t_test(CTL, MTL, 0.0).statistic == pytest.approx(4.706787, rel=1e-5)


def test_welch_by_hand():
    # var(CTL) = 28e-4 / 4 = 7e-4, var(MTL) = 1920e-6 / 4 = 4.8e-4; se^2 = (7e-4 + 4.8e-4) / 5 = 2.36e-4
    # t = 0.024 / sqrt(2.36e-4) = 1.562268; df = (2.36e-4)^2 / (((1.4e-4)^2 + (0.96e-4)^2) / 4) = 7.73126
    res = c.welch_t_test(CTL, MTL)
    assert res.statistic == pytest.approx(1.562268, rel=1e-5)
    assert res.df == pytest.approx(7.731263, rel=1e-5)


def test_pooled_t_by_hand():
    # pooled variance ((n1 - 1) s1^2 + (n2 - 1) s2^2) / (n1 + n2 - 2) = (4 * 7e-4 + 4 * 4.8e-4) / 8 = 5.9e-4;
    # t = 0.024 / sqrt(5.9e-4 * (1/5 + 1/5)) = 1.562268 (equal n: same t as Welch, different df)
    a, b = np.asarray(CTL), np.asarray(MTL)
    n1, n2 = len(a), len(b)
    sp2 = ((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2)
    t = (b.mean() - a.mean()) / math.sqrt(sp2 * (1 / n1 + 1 / n2))
    res = c.pooled_t_test(CTL, MTL)
    assert sp2 == pytest.approx(5.9e-4)
    assert res.statistic == pytest.approx(t) and res.statistic == pytest.approx(1.562268, rel=1e-5)
    assert res.df == 2 * 5 - 2
    assert res.p_value == pytest.approx(2 * sps.t.sf(t, 8))
    assert res.p_value == pytest.approx(sps.ttest_ind(MTL, CTL, equal_var=True).pvalue)
    assert c.compare_arms(CTL, MTL, 0.25).pooled == res
    # unequal variances and a paper-sized run count: df = 2n - 2 = 18 for 10 runs per arm
    rng = np.random.default_rng(0)
    ten = c.pooled_t_test(rng.normal(0.9, 0.01, 10), rng.normal(0.9, 0.03, 10))
    assert ten.df == 18


def test_error_rate_reduction_by_hand():
    # err_CTL = 1 - 0.954 = 0.046, err_MTL = 1 - 0.961 = 0.039: (0.046 - 0.039) / 0.046 = 0.152174
    assert c.error_rate_reduction(0.954, 0.961) == pytest.approx(0.152174, rel=1e-5)
    assert c.error_rate_reduction(0.961, 0.954) == pytest.approx(-0.007 / 0.039)  # MTL worse: negative
    assert math.isnan(c.error_rate_reduction(1.0, 0.9))  # CTL made no errors
    result = c.compare_arms(CTL, MTL, 0.25)  # err 0.19 -> 0.166
    assert result.error_reduction == pytest.approx((0.19 - 0.166) / 0.19)


def test_error_line_says_which_way():
    from mtl_suite.analysis.comparison_report import error_line

    assert error_line(c.compare_arms([0.95, 0.958], [0.96, 0.962], 0.25)) == (
        "MTL cuts the test error from 4.6% to 3.9% (15% fewer errors).")
    worse = error_line(c.compare_arms([0.96, 0.962], [0.95, 0.958], 0.25))
    assert worse == "MTL is worse: it raises the test error from 3.9% to 4.6% (18% more errors)."
    perfect = replace(c.compare_arms(CTL, MTL, 0.25), ctl=c.ArmSummary(5, 1.0, 0.0), error_reduction=math.nan)
    assert error_line(perfect) == "CTL made no test errors on accuracy; MTL's test error is 16.6%."


def test_paper_numbers_are_inconsistent():
    from mtl_suite.analysis.comparison_report import paper_sentence

    check = c.paper_check()
    assert (check.t, check.p, check.df) == (c.PAPER_POOLED_T, c.PAPER_P, c.PAPER_DF) == (0.853, 0.0001, 18)
    assert 0.35 < check.p_for_t < 0.45
    assert check.p_for_t == pytest.approx(2 * sps.t.sf(0.853, 18))
    assert 2 * sps.t.sf(check.t_for_p, 18) == pytest.approx(0.0001)
    assert 4.5 < check.t_for_p < 5.5
    text = paper_sentence(check)
    assert "t = 0.853, p = 0.0001" in text and "df = 18" in text and "inconsistent" in text
    assert f"p = {check.p_for_t:.3f}" in text and f"|t| = {check.t_for_p:.2f}" in text


def test_effect_size_and_intervals_by_hand():
    result = c.compare_arms(CTL, MTL, 0.25, "accuracy")
    assert result.cohens_d == pytest.approx(MEAN_D / math.sqrt(VAR_D))  # 2.10494
    assert result.cohens_d == pytest.approx(2.104940, rel=1e-5)
    t_crit = 2.7764451  # t(0.975, 4)
    half = t_crit * math.sqrt(VAR_D / 5)  # 0.0141572
    assert result.ci95 == pytest.approx((MEAN_D - half, MEAN_D + half), rel=1e-5)
    half_c = t_crit * math.sqrt(0.45 * VAR_D)  # 0.0212356
    assert result.ci95_corrected == pytest.approx((MEAN_D - half_c, MEAN_D + half_c), rel=1e-5)
    assert result.ctl.mean == pytest.approx(0.81) and result.mtl.mean == pytest.approx(0.834)
    assert result.ctl.std == pytest.approx(math.sqrt(7e-4)) and result.mtl.std == pytest.approx(math.sqrt(4.8e-4))
    assert result.mean_difference == pytest.approx(MEAN_D)
    assert result.n_pairs == 5


def test_verdict_says_beat_only_when_corrected_test_is_significant():
    beat = c.compare_arms(CTL, MTL, 0.25)
    assert beat.corrected.p_value < 0.05
    assert beat.verdict.startswith("MTL beat CTL")
    # a larger ratio makes the same differences non-significant: the verdict must say MTL did not beat CTL
    weak = c.compare_arms(CTL, MTL, 2.0)
    assert weak.corrected.p_value >= 0.05 and weak.paired.p_value < 0.05
    assert weak.verdict.startswith("MTL did not beat CTL") and "significantly" in weak.verdict
    worse = c.compare_arms(MTL, CTL, 0.25)  # arms swapped: MTL is worse
    assert worse.mean_difference < 0
    assert worse.verdict.startswith("MTL did not beat CTL") and "CTL was better" in worse.verdict
    tie = c.compare_arms([0.8, 0.9], [0.8, 0.9], 0.25)
    assert tie.verdict.startswith("MTL did not beat CTL")


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        c.compare_arms([0.8], [0.9], 0.25)
    with pytest.raises(ValueError, match="equally long"):
        c.compare_arms([0.8, 0.9], [0.9], 0.25)


def test_as_dict_is_json_ready():
    import json

    json.dumps(c.compare_arms(CTL, MTL, 0.25).as_dict())


def test_report_lists_excluded_pairs_beside_used_ones(tmp_path):
    """A failed pair appears in Table V and under 'Failed or excluded pairs'; the statistics use the others."""
    from mtl_suite.config import load_config
    from mtl_suite.analysis.comparison_report import render_report, table_v
    from mtl_suite.catalog import CompareRequest, Pair

    pairs = [Pair(i, 42 + i, 42 + i) for i in range(3)]
    for p, (a, b) in zip(pairs[:2], [(0.80, 0.83), (0.82, 0.84)]):
        p.metrics = {"ctl": {"accuracy": a, "f1_macro": a}, "mtl": {"accuracy": b, "f1_macro": b}}
    pairs[0].checks = {"ctl": {"colour_accuracy": 0.90, "stain_shift_accuracy": 0.70,
                               "colour_stain_shift_accuracy": 0.40}, "mtl": {"stain_shift_accuracy": 0.75}}
    pairs[1].checks = {"ctl": {"colour_accuracy": 0.86}}  # no stain-shift metrics: an older run
    pairs[0].class_names = ("Benign", "Early", "Pre", "Pro")
    pairs[0].seconds, pairs[1].seconds = {"ctl": 120.0, "mtl": 300.0}, {"ctl": 180.0, "mtl": 420.0}
    pairs[2].excluded = "MTL stage3 failed: RuntimeError: boom"
    comparisons = {m: c.compare_arms([0.80, 0.82], [0.83, 0.84], 0.25, m) for m in ("accuracy", "f1_macro")}
    request = CompareRequest(config=load_config(None, {}), task="binary", runs=3, command="mtl-suite compare x")
    text = render_report(request, pairs, comparisons, 0.25, table_v(pairs), "plot.png", "run1", "sqlite://", "1",
                         dataset_digests=["ab" * 32], commit="0123456789abcdef" * 2 + "01234567")
    assert "- run 3 (seed 44): MTL stage3 failed: RuntimeError: boom" in text
    assert "| 3 | 44 | n/a | n/a | n/a | n/a | n/a | n/a | excluded: MTL stage3 failed" in text
    assert "| 1 | 42 | 80.00 | 83.00 | 3.00 | 90.00 | 80.00 | 83.00 | used |" in text  # colour alone beside the arms
    assert "colour alone" in text and "pooled t (paper's test)" in text and "error-rate reduction" in text
    # colour 88.0% vs CTL 81.0% and MTL 83.5%: both below it, said plainly
    assert "mean test accuracy 88.0% vs CTL 81.0% and MTL 83.5% over 2 pairs. Both arms are below" in text
    assert "Under stain shifts (test parts re-stained), mean accuracy: CTL 70.0%, MTL 75.0%, colour alone 40.0%." \
        in text
    assert "MTL cuts the test error from 19.0% to 16.5% (13% fewer errors)." in text
    assert "CTL 2.5 min per run, MTL 6.0 min per run (stages 1-3, 2.4x CTL); 0.28 h for the 2 pairs" in text
    assert "B-ALL development stages" in text and c.paper_check().t_for_p > 4
    assert comparisons["accuracy"].verdict in text and "n = 2 pairs" in text
    assert "mtl-suite compare x" in text
    assert "dataset digest abababababababab;" in text and "code: git 0123456789ab\n" in text  # provenance passed in


def test_report_without_logged_checks_says_n_a():
    """Runs made before the colour baseline and stain shifts were logged: n/a, no crash; generic label line."""
    from mtl_suite.config import load_config
    from mtl_suite.analysis.comparison_report import render_report, table_v
    from mtl_suite.catalog import CompareRequest, Pair

    pairs = [Pair(i, 42 + i, 42 + i) for i in range(2)]
    for p, (a, b) in zip(pairs, [(0.80, 0.83), (0.82, 0.84)]):
        p.metrics = {"ctl": {"accuracy": a, "f1_macro": a}, "mtl": {"accuracy": b, "f1_macro": b}}
    pairs[0].class_names = ("normal", "leukemia")
    comparisons = {m: c.compare_arms([0.80, 0.82], [0.83, 0.84], 0.25, m) for m in ("accuracy", "f1_macro")}
    request = CompareRequest(config=load_config(None, {}), task="binary", runs=2)
    table = table_v(pairs)
    assert table["colour_accuracy"].isna().all() and table["mtl_stain_shift_accuracy"].isna().all()
    text = render_report(request, pairs, comparisons, 0.25, table, "plot.png", "run1", "sqlite://", "1",
                         dataset_digests=[], commit="not a git checkout: mtl-suite 0.1.0")
    assert "| 1 | 42 | 80.00 | 83.00 | 3.00 | n/a | 80.00 | 83.00 | used |" in text
    assert "Colour alone: n/a" in text and "Under stain shifts: n/a" in text and "Time: n/a" in text
    assert "the classes are the dataset's own (normal, leukemia)" in text and "B-ALL" not in text
    assert "code: not a git checkout: mtl-suite 0.1.0\n" in text and "git unknown" not in text


def test_the_budget_line_names_every_setting_an_arm_depends_on():
    from mtl_suite.analysis.comparison_report import budget_line
    from mtl_suite.config import TrainConfig

    line = budget_line(TrainConfig(warmup_epochs=9, finetune_epochs=8, unfreeze_layers=5, learning_rate=1.24e-3,
                                   finetune_learning_rate=2.8e-4, early_stopping_patience=2, dropout=0.241,
                                   dense_units=(256,), stain="gray", augment="paper", augment_mode="offline",
                                   tta="flips", colour_fusion="average"), "s1")
    assert line == ("- Budget per arm: 9 warm-up epochs (head (256,), dropout 0.241, lr 0.00124, decay 0.9) + 8 "
                    "fine-tuning epochs (top 5 weighted layers, lr 0.00028, early-stopping patience 2), batch 48; "
                    "stain gray, augmentation paper (offline), test-time flips, colour fusion average; weights imagenet; parameters from "
                    "study s1")
    assert "augmentation none; weights" in budget_line(TrainConfig())


def test_the_report_names_its_config_file_and_per_image_predictions(tmp_path):
    """The provenance a reader needs without the store: the experiment file's copy and the predictions CSV."""
    from pathlib import Path

    from mtl_suite.analysis.comparison_report import render_report, table_v
    from mtl_suite.catalog import CompareRequest, Pair
    from mtl_suite.config import load_config

    pairs = [Pair(i, 42 + i, 42 + i) for i in range(2)]
    for p, (a, b) in zip(pairs, [(0.80, 0.83), (0.82, 0.84)]):
        p.metrics = {"ctl": {"accuracy": a, "f1_macro": a}, "mtl": {"accuracy": b, "f1_macro": b}}
    comparisons = {m: c.compare_arms([0.80, 0.82], [0.83, 0.84], 0.25, m) for m in ("accuracy", "f1_macro")}
    request = CompareRequest(config=load_config(None, {}), task="binary", runs=2,
                             config_file=Path("experiments/x.yaml"))

    def render(**kwargs):
        return render_report(request, pairs, comparisons, 0.25, table_v(pairs), "plot.png", "run1", "sqlite://", "1",
                             dataset_digests=[], commit="c" * 40, **kwargs)

    text = render(config_copy=("compare-x-config.yaml", "ab" * 32), predictions=("compare-x-predictions.csv", 4))
    assert ("- Config file: `experiments/x.yaml`, copied beside this report as `compare-x-config.yaml` "
            "(sha256 abababababababab)") in text
    assert "- Per-image predictions: `compare-x-predictions.csv` (4 arm runs: pair, arm, run, file sha256" in text
    bare = render()
    assert "- Config file: `experiments/x.yaml` (not copied beside this report)" in bare
    assert "- Per-image predictions: none" in bare
    request = CompareRequest(config=load_config(None, {}), task="binary", runs=2)
    assert "- Config file: none (the defaults and the options in the command)" in render()


def test_predictions_table_puts_every_arm_run_of_every_pair_in_one_csv():
    import pandas as pd

    from mtl_suite.analysis.comparison_report import predictions_table
    from mtl_suite.catalog import Pair

    pairs = [Pair(0, 42, 42, runs={"classical": "c0", "stage3": "m0"}), Pair(1, 43, 43, runs={"classical": "c1"})]
    pairs[1].excluded = "MTL stage3 failed"

    def frame(p):
        return pd.DataFrame({"path": ["a.png", "b.png"], "sha256": ["s1", "s2"], "label": ["x", "y"],
                             "p_x": [p, 1 - p], "p_y": [1 - p, p], "predicted": ["x", "y"]})

    table = predictions_table(pairs, {(0, "ctl"): frame(0.9), (0, "mtl"): frame(0.8), (1, "ctl"): frame(0.7)})
    assert list(table.columns) == ["run", "seed", "split_seed", "arm", "run_id", "status", "path", "sha256", "label",
                                   "p_x", "p_y", "predicted"]
    assert table[["run", "arm", "run_id", "status"]].drop_duplicates().values.tolist() == [
        [1, "ctl", "c0", "used"], [1, "mtl", "m0", "used"], [2, "ctl", "c1", "excluded"]]
    # accuracy recomputed from the CSV alone
    right = table["label"] == table["predicted"]
    assert right.groupby([table["run"], table["arm"]]).mean().tolist() == [1.0, 1.0, 1.0]
    assert predictions_table(pairs, {}).empty


def test_an_arm_runs_logged_test_predictions_are_read_back(tmp_path):
    """tracking/comparison_runs.py:read_test_predictions on a real (SQLite) MLflow store."""
    import mlflow
    import pandas as pd

    from mtl_suite.tracking.comparison_runs import read_test_predictions

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    with_file, without = (client.create_run(experiment).info.run_id for _ in range(2))
    folder = tmp_path / "test"
    folder.mkdir()
    pd.DataFrame({"path": ["a"], "sha256": ["s"], "label": ["x"], "p_x": [0.9]}).to_csv(
        folder / "predictions.csv", index=False)
    client.log_artifacts(with_file, str(folder), artifact_path="test")
    frame = read_test_predictions(client, with_file)
    assert frame.to_dict("list") == {"path": ["a"], "sha256": ["s"], "label": ["x"], "p_x": [0.9]}
    assert read_test_predictions(client, without) is None
