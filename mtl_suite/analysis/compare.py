"""Statistics for classical TL (CTL) vs multistage TL (MTL) over repeated, paired runs. Pure numbers (numpy, scipy):
no MLflow here, so every value can be checked against a hand computation.

Run i of both arms shares its seed and its freshly drawn split, so the runs are paired. Four tests are reported
side by side because they answer different questions and fail differently:

- the paired t-test on the per-run differences (what the pairing allows);
- the pooled two-sample Student t-test (equal variances, df = n1 + n2 - 2): the paper's test (Maaliw et al. 2022,
  10 runs per arm, df = 18), shown so its numbers can be set beside ours;
- Welch's t-test (ignores the pairing; what a reader who only has two columns of numbers would compute);
- the Nadeau-Bengio corrected resampled t-test (Nadeau & Bengio 2003, "Inference for the generalization error"):
  repeated random splits of one data set overlap, so the differences are positively correlated and the plain
  paired t-test's variance 1/J * s^2 is too small. The correction uses (1/J + n_test/n_train) * s^2.

The verdict is based on the corrected test, the honest one for repeated splits of one data set.

The paper reports t = 0.853 with p = 0.0001 for its pooled test with df = 18; `paper_check` recomputes what either
number implies at that df, so the report can show that the two cannot both hold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05

# the paper's reported pooled t-test (Maaliw et al. 2022): the only place these numbers are typed in
PAPER_POOLED_T = 0.853
PAPER_P = 0.0001
PAPER_DF = 18


@dataclass(frozen=True)
class ArmSummary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof = 1)


@dataclass(frozen=True)
class TestResult:
    statistic: float
    df: float
    p_value: float


@dataclass(frozen=True)
class Comparison:
    """MTL minus CTL on one metric over n paired runs."""

    metric: str
    n_pairs: int
    ctl: ArmSummary
    mtl: ArmSummary
    mean_difference: float  # MTL - CTL
    std_difference: float
    ci95: tuple[float, float]  # plain t interval on the paired differences
    ci95_corrected: tuple[float, float]  # with the Nadeau-Bengio variance
    paired: TestResult
    welch: TestResult
    pooled: TestResult  # Student's two-sample t-test, equal variances: the paper's test
    corrected: TestResult
    test_train_ratio: float  # n_test / n_train used by the correction
    cohens_d: float  # paired: mean difference / sd of differences (d_z)
    error_reduction: float  # (err_CTL - err_MTL) / err_CTL with err = 1 - mean score; nan when err_CTL = 0
    verdict: str = field(default="")

    def as_dict(self) -> dict:
        return asdict(self)


def summarise_arm(values: Sequence[float]) -> ArmSummary:
    x = np.asarray(values, dtype=np.float64)
    return ArmSummary(len(x), float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0)


def paired_t_test(ctl: Sequence[float], mtl: Sequence[float]) -> TestResult:
    d = _differences(ctl, mtl)
    res = stats.ttest_rel(mtl, ctl)
    return TestResult(float(res.statistic), float(len(d) - 1), float(res.pvalue))


def welch_t_test(ctl: Sequence[float], mtl: Sequence[float]) -> TestResult:
    res = stats.ttest_ind(mtl, ctl, equal_var=False)
    return TestResult(float(res.statistic), float(res.df), float(res.pvalue))


def pooled_t_test(ctl: Sequence[float], mtl: Sequence[float]) -> TestResult:
    """Student's two-sample t-test with a pooled variance (the paper's test): df = n1 + n2 - 2."""
    res = stats.ttest_ind(mtl, ctl, equal_var=True)
    return TestResult(float(res.statistic), float(len(ctl) + len(mtl) - 2), float(res.pvalue))


def error_rate_reduction(ctl_mean: float, mtl_mean: float) -> float:
    """Relative reduction of the mean error (err = 1 - an accuracy-like score): 0.15 = MTL makes 15% fewer errors,
    negative when MTL makes more; nan when CTL makes none (no reduction is defined)."""
    err_ctl, err_mtl = 1.0 - ctl_mean, 1.0 - mtl_mean
    return (err_ctl - err_mtl) / err_ctl if err_ctl != 0 else math.nan


@dataclass(frozen=True)
class PaperCheck:
    """What the paper's pooled t-test numbers imply at its df, computed, not typed in."""

    t: float
    p: float
    df: int
    p_for_t: float  # two-sided p of |t| at df
    t_for_p: float  # |t| a two-sided p needs at df


def paper_check(t: float = PAPER_POOLED_T, p: float = PAPER_P, df: int = PAPER_DF) -> PaperCheck:
    return PaperCheck(t, p, df, float(2 * stats.t.sf(abs(t), df)), float(stats.t.isf(p / 2, df)))


def corrected_resampled_t_test(ctl: Sequence[float], mtl: Sequence[float], test_train_ratio: float) -> TestResult:
    """Nadeau-Bengio: t = mean(d) / sqrt((1/J + n_test/n_train) * var(d)), J - 1 degrees of freedom."""
    d = _differences(ctl, mtl)
    j = len(d)
    var = float(np.var(d, ddof=1))
    scale = math.sqrt((1.0 / j + test_train_ratio) * var)
    t = _safe_ratio(float(d.mean()), scale)
    p = float(2 * stats.t.sf(abs(t), j - 1)) if math.isfinite(t) else (0.0 if d.mean() != 0 else 1.0)
    return TestResult(t, float(j - 1), p)


def cohens_d_paired(ctl: Sequence[float], mtl: Sequence[float]) -> float:
    """d_z: the mean paired difference in units of the differences' standard deviation."""
    d = _differences(ctl, mtl)
    return _safe_ratio(float(d.mean()), float(np.std(d, ddof=1)))


def compare_arms(ctl: Sequence[float], mtl: Sequence[float], test_train_ratio: float,
                 metric: str = "accuracy", alpha: float = ALPHA) -> Comparison:
    """Every statistic for one metric. `test_train_ratio` is n_test / n_train of one split (the outer test part
    over the development images the final model was trained on)."""
    d = _differences(ctl, mtl)
    n = len(d)
    if n < 2:
        raise ValueError(f"need at least 2 paired runs for a t-test. Received: {n}")
    if not test_train_ratio >= 0:
        raise ValueError(f"test_train_ratio must be >= 0. Received: {test_train_ratio}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    t_crit = float(stats.t.ppf(1 - alpha / 2, n - 1))
    half = t_crit * sd / math.sqrt(n)
    half_corrected = t_crit * math.sqrt((1.0 / n + test_train_ratio) * sd ** 2)
    result = Comparison(
        metric=metric, n_pairs=n, ctl=summarise_arm(ctl), mtl=summarise_arm(mtl),
        mean_difference=mean, std_difference=sd,
        ci95=(mean - half, mean + half), ci95_corrected=(mean - half_corrected, mean + half_corrected),
        paired=paired_t_test(ctl, mtl), welch=welch_t_test(ctl, mtl), pooled=pooled_t_test(ctl, mtl),
        corrected=corrected_resampled_t_test(ctl, mtl, test_train_ratio),
        test_train_ratio=float(test_train_ratio), cohens_d=cohens_d_paired(ctl, mtl),
        error_reduction=error_rate_reduction(float(np.mean(ctl)), float(np.mean(mtl))),
    )
    return _with_verdict(result, alpha)


def verdict(result: Comparison, alpha: float = ALPHA) -> str:
    """Plain words, whichever way it falls; based on the corrected test."""
    name = result.metric
    diff = result.mean_difference
    pts = f"{100 * diff:+.2f} points" if abs(diff) <= 1 else f"{diff:+.4g}"
    p = result.corrected.p_value
    n = result.n_pairs
    small = f" With only {n} paired runs the test has little power." if n < 5 else ""
    if not math.isfinite(result.corrected.statistic) and diff == 0:
        return f"MTL did not beat CTL on {name}: both arms scored identically in all {n} runs."
    if diff > 0 and p < alpha:
        return (f"MTL beat CTL on {name}: mean difference {pts} (MTL - CTL), corrected resampled t-test "
                f"p = {p:.3g} < {alpha}.")
    if diff > 0:
        return (f"MTL did not beat CTL on {name} significantly: its mean is higher by {pts}, but the corrected "
                f"resampled t-test gives p = {p:.3g} (>= {alpha}); the 95% interval "
                f"[{_fmt(result.ci95_corrected[0])}, {_fmt(result.ci95_corrected[1])}] includes no difference."
                + small)
    if diff < 0 and p < alpha:
        return (f"MTL did not beat CTL on {name}: CTL was better by {pts.lstrip('-')} on average "
                f"(corrected resampled t-test p = {p:.3g} < {alpha}).")
    return (f"MTL did not beat CTL on {name}: its mean is {'lower' if diff < 0 else 'equal'} "
            f"({pts}; corrected resampled t-test p = {p:.3g})." + small)


def _with_verdict(result: Comparison, alpha: float) -> Comparison:
    from dataclasses import replace

    return replace(result, verdict=verdict(result, alpha))


def _differences(ctl: Sequence[float], mtl: Sequence[float]) -> np.ndarray:
    a, b = np.asarray(ctl, dtype=np.float64), np.asarray(mtl, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired runs need two equally long 1-D sequences. Received: {a.shape} and {b.shape}")
    return b - a


def _safe_ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def _fmt(x: float) -> str:
    return f"{100 * x:+.2f}" if abs(x) <= 1 else f"{x:+.4g}"
