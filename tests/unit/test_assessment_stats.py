"""The figures of `mtl-suite assess` (analysis/assessment.py) against hand computations: the t-interval over
splits, the paired CNN - colour difference with the corrected test and its words, Wilson intervals of sensitivity and
specificity (by the textbook formula, not by scipy), ECE and Brier on two images, and the predictions table that
every figure is computed from."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mtl_suite.analysis import assessment as a
from mtl_suite.analysis.assessment_report import Provenance, render_json, render_report

Z = 1.959963984540054  # the 97.5% normal quantile
T2, T4 = 4.302652729911275, 2.7764451051977987  # t(0.975) with 2 and 4 degrees of freedom


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z ** 2 / (2 * n)) / (1 + Z ** 2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z ** 2 / (4 * n ** 2)) / (1 + Z ** 2 / n)
    return centre - half, centre + half


def test_spread_is_mean_sd_and_the_t_interval():
    s = a.spread([0.8, 0.9, 1.0])
    assert (s.n, s.mean, s.sd) == (3, pytest.approx(0.9), pytest.approx(0.1))
    half = T2 * 0.1 / math.sqrt(3)
    assert (s.low, s.high) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))


def test_one_split_has_no_interval():
    s = a.spread([0.7])
    assert s.mean == 0.7 and math.isnan(s.sd) and math.isnan(s.low)


def test_a_small_difference_is_no_detectable_difference_with_its_corrected_interval():
    d = a.difference([0.9, 0.8, 0.85], [0.8, 0.8, 0.8], test_train_ratio=0.25)
    assert d.spread.mean == pytest.approx(0.05) and d.spread.sd == pytest.approx(0.05)
    se = math.sqrt((1 / 3 + 0.25) * 0.05 ** 2)  # Nadeau-Bengio: (1/J + n_test/n_train) * var
    assert d.corrected.statistic == pytest.approx(0.05 / se) and d.corrected.df == 2
    assert d.corrected_interval == (pytest.approx(0.05 - T2 * se), pytest.approx(0.05 + T2 * se))
    assert d.corrected.p_value > 0.05 and d.paired.p_value < d.corrected.p_value  # the plain test overstates
    assert d.verdict.startswith("No detectable difference between the CNN and colour alone: mean CNN - colour +5.00")
    assert f"{100 * (0.05 - T2 * se):+.2f} to {100 * (0.05 + T2 * se):+.2f} points" in d.verdict
    assert "little power" in d.verdict  # 3 splits: fewer than the headline protocol's 5


def test_a_clear_difference_says_which_side_and_identical_scores_say_so():
    above = a.difference([0.9, 0.91, 0.92, 0.93, 0.94], [0.5] * 5, test_train_ratio=0.25)
    assert above.corrected.p_value < 0.05 and above.verdict.startswith("The CNN is above colour alone by 42.00")
    below = a.difference([0.5] * 5, [0.9, 0.91, 0.92, 0.93, 0.94], test_train_ratio=0.25)
    assert below.verdict.startswith("The CNN is below colour alone by 42.00")
    same = a.difference([0.8, 0.9], [0.8, 0.9], test_train_ratio=0.25)
    assert same.verdict == ("No detectable difference between the CNN and colour alone: identical test accuracy in "
                            "all 2 splits.")
    with pytest.raises(ValueError, match="at least 2"):
        a.difference([0.9], [0.8], 0.25)


def test_sensitivity_and_specificity_read_the_normal_class_against_the_rest_with_wilson_intervals():
    labels = ["Benign", "Benign", "Early", "Pre", "Pro", "Pro"]
    called = ["Benign", "Pre", "Early", "Benign", "Pre", "Pro"]  # a wrong leukemia subtype is still leukemia
    r = a.binary_reading(labels, called, "Benign")
    assert (r.sensitivity.successes, r.sensitivity.n) == (3, 4) and (r.specificity.successes, r.specificity.n) == (1, 2)
    assert (r.sensitivity.low, r.sensitivity.high) == pytest.approx(wilson_by_hand(3, 4))
    assert (r.specificity.low, r.specificity.high) == pytest.approx(wilson_by_hand(1, 2))


def test_ece_and_brier_on_two_images():
    """A sure right call and a 50/50 wrong one: Brier (0 + 0.25 + 0.25) / 2; ECE: the 0.5-confidence bin, half the
    images, |0 - 0.5|."""
    c = a.calibration(["A", "B"], np.array([[1.0, 0.0], [0.5, 0.5]]), ["A", "B"], bins=10)
    assert (c.n, c.bins) == (2, 10)
    assert c.brier == pytest.approx(0.25) and c.ece == pytest.approx(0.25)


def _stage_predictions(labels, called, colour=None):
    """test/predictions.csv as a stage run writes it (analysis/stage_files.py:predictions_frame), two classes."""
    frame = pd.DataFrame({"path": [f"/d/{i}.jpg" for i in range(len(labels))],
                          "sha256": [f"{i:064x}" for i in range(len(labels))], "label": labels})
    frame["p_normal"] = [0.8 if c == "normal" else 0.3 for c in (colour or called)]
    frame["p_ALL"] = 1 - frame["p_normal"]
    frame["predicted"] = colour or called
    return frame


def test_the_predictions_table_puts_colour_alone_beside_the_model_row_for_row():
    cnn = _stage_predictions(["normal", "ALL", "ALL"], ["normal", "ALL", "normal"])
    colour = _stage_predictions(["normal", "ALL", "ALL"], ["normal", "ALL", "normal"], colour=["ALL", "ALL", "ALL"])
    table = a.predictions_table([(7, "run7", cnn, colour), (8, "run8", cnn, None)])
    assert list(table.columns) == ["split_seed", "run_id", "file", "sha256", "label", "p_normal", "p_ALL", "predicted",
                                   "colour_p_normal", "colour_p_ALL", "colour_predicted"]
    assert list(table["colour_predicted"][:3]) == ["ALL"] * 3 and table["colour_predicted"][3:].isna().all()
    shuffled = colour.iloc[::-1]  # another order: not aligned, so left out rather than mismatched
    assert a.predictions_table([(7, "r", cnn, shuffled)])["colour_predicted"].isna().all()


def test_assess_computes_every_figure_from_the_table():
    split1 = _stage_predictions(["normal", "ALL", "ALL", "ALL"], ["normal", "ALL", "ALL", "normal"])  # 3/4
    colour1 = _stage_predictions(["normal", "ALL", "ALL", "ALL"], [], colour=["ALL", "ALL", "ALL", "ALL"])  # 3/4
    split2 = _stage_predictions(["normal", "normal", "ALL", "ALL"], ["normal", "normal", "ALL", "ALL"])  # 4/4
    colour2 = _stage_predictions(["normal", "normal", "ALL", "ALL"], [], colour=["ALL", "normal", "ALL", "ALL"])
    table = a.predictions_table([(1000, "r1", split1, colour1), (1001, "r2", split2, colour2)])
    result = a.assess(table, "normal", test_train_ratio=0.25)
    assert [r.accuracy for r in result.splits] == [0.75, 1.0]
    assert [r.colour_accuracy for r in result.splits] == [0.75, 0.75]
    assert result.accuracy.mean == pytest.approx(0.875)
    assert result.accuracy.sd == pytest.approx(math.sqrt(2 * 0.125 ** 2))
    assert result.difference.spread.values == pytest.approx((0.0, 0.25))
    # pooled: leukemia 4 of 5 called leukemia, normal 3 of 3 called normal; colour alone 5/5 and 1/3
    assert (result.binary.sensitivity.successes, result.binary.sensitivity.n) == (4, 5)
    assert (result.binary.specificity.successes, result.binary.specificity.n) == (3, 3)
    assert (result.colour_binary.sensitivity.successes, result.colour_binary.specificity.successes) == (5, 1)
    assert result.calibration.n == 8 and result.colour_calibration.n == 8
    provenance = Provenance("mtl-suite assess r.yaml --splits 2", "r.yaml", "r.yaml", "0" * 64, "classical binary",
                            "f" * 40, "sqlite:///m.db", "1", "run", "data", ("d" * 64,), "blocks:40", (1000, 1001),
                            0.2, 2, 42, 0.25, len(table), {1000: 0, 1001: None})
    text = render_report(result, provenance)
    assert "87.50% ± 17.68%" in text and "80.00% (4/5)" in text
    assert "| 1001 | `r2` | 4 | 100.00% | 75.00% | +25.00" in text
    assert '"successes": 4' in render_json(result, provenance)


def test_without_colour_alone_or_a_normal_class_those_figures_are_absent_not_invented():
    split = _stage_predictions(["normal", "ALL"], ["normal", "ALL"])
    table = a.predictions_table([(1, "r1", split, None), (2, "r2", split, None)])
    result = a.assess(table, None, 0.25)
    assert result.colour_accuracy is None and result.difference is None and result.binary is None
    assert result.colour_calibration is None and math.isnan(result.splits[0].colour_accuracy)
