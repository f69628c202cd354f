"""The report `mtl-suite assess` writes: Markdown for a reader and JSON for a program, the same figures in both.
Text only: the figures come in computed (analysis/assessment.py), the provenance (commit, run ids, digests) comes in
read by the caller."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field

from mtl_suite.analysis.assessment import Assessment, BinaryReading, Calibration, Proportion, Spread
from mtl_suite.analysis.machine import code_description, machine_description
from mtl_suite.analysis.tables import markdown_table

REPORT = "report.md"
JSON_REPORT = "assessment.json"
PREDICTIONS = "predictions.csv"


@dataclass(frozen=True)
class Provenance:
    """Where the figures came from: everything a reader needs to trust, redo or find them."""

    command: str
    recipe: str  # the recipe file as the command named it
    recipe_copy: str  # its copy beside the report
    recipe_sha256: str
    recipe_description: str  # 'stage3 multiclass, mobilenet_025 at 128 px, one model'
    commit: str
    tracking_uri: str
    experiment_id: str
    run_id: str  # the assessment run
    data: str
    dataset_digests: tuple[str, ...]
    grouping: str
    seeds: tuple[int, ...]
    test_fraction: float
    folds: int
    train_seed: int
    test_train_ratio: float
    predictions_rows: int
    earlier_looks: dict[int, int | None] = field(default_factory=dict)  # split seed -> configurations before it


def render_json(assessment: Assessment, provenance: Provenance) -> str:
    return json.dumps({"provenance": asdict(provenance), "assessment": assessment.as_dict()}, indent=2,
                      default=float, allow_nan=True) + "\n"


def render_report(a: Assessment, p: Provenance) -> str:
    n = len(p.seeds)
    lines = [f"# Assessment of recipe `{p.recipe_copy}`: {n} outer splits, each trained from nothing", "",
             "Made by:", "", "```", p.command, "```", "",
             f"- Date: {dt.datetime.now().isoformat(timespec='seconds')}; code: {code_description(p.commit)}",
             f"- Recipe: `{p.recipe}` ({p.recipe_description}), copied beside this report as `{p.recipe_copy}`, "
             f"sha256 {p.recipe_sha256}",
             f"- Protocol, fixed before any split was trained: {n} outer splits with data seeds "
             f"{_seeds(p.seeds)}, grouped by `{p.grouping}`, test fraction {p.test_fraction}, {p.folds} CV folds "
             f"inside each; on every split the recipe's model is trained from nothing exactly as the file states it "
             f"(training seed {p.train_seed}), scored once on that split's test part, and never registered.",
             f"- Data: `{p.data}`, dataset digest {', '.join(d[:16] for d in p.dataset_digests) or 'n/a'}",
             f"- Machine: {machine_description()}",
             f"- MLflow: `{p.tracking_uri}`, experiment id {p.experiment_id}, assessment run `{p.run_id}` (each "
             "split's runs nested under it)",
             f"- Per-image predictions: `{PREDICTIONS}` ({p.predictions_rows} rows: split seed, run id, file, file "
             "sha256, label, the model's class probabilities and call, colour alone's beside them); every figure "
             "below is computed from it.", "",
             "## Headlines", "",
             "Colour alone is the best colour-only baseline (colour histograms and statistics, logistic regression; "
             "chosen by CV accuracy on the development part), refit and scored on the same split: the figure a "
             "model that reads stain rather than cells reaches.", ""]
    lines.append(markdown_table(["figure", "the recipe's model", "colour alone"], _headline_rows(a, n)))
    lines += [f"- {a.difference.verdict}" if a.difference else
              "- CNN - colour alone: n/a (colour alone's predictions are missing on some splits)."]
    lines += ["", "## Per split", ""]
    lines.append(markdown_table(
        ["split seed", "run", "test images", "accuracy", "colour alone", "difference (points)", "sensitivity",
         "colour sens.", "specificity", "colour spec.", "earlier looks"],
        [[r.split_seed, f"`{r.run_id}`", r.n, _pct(r.accuracy), _pct(r.colour_accuracy),
          _points(r.accuracy - r.colour_accuracy), _pct(r.sensitivity), _pct(r.colour_sensitivity),
          _pct(r.specificity), _pct(r.colour_specificity), _looks(p.earlier_looks.get(r.split_seed))]
         for r in a.splits]))
    lines += ["Earlier looks: configurations that had scored the split's test part before this assessment's run "
              "(the suite's ledger of looks; 0 = a fresh test part).", "", "## How each figure is computed", ""]
    lines += [f"- {text}" for text in _method(p)]
    return "\n".join(lines) + "\n"


def _headline_rows(a: Assessment, n: int) -> list[list[str]]:
    rows = [[f"test accuracy, mean ± sd over {n} splits [95% t-interval]", _spread(a.accuracy),
             _spread(a.colour_accuracy) if a.colour_accuracy else "n/a"]]
    if a.difference:
        d = a.difference
        rows.append(["CNN - colour alone, paired over splits (points) [95% interval, corrected]",
                     f"{100 * d.spread.mean:+.2f} ± {100 * d.spread.sd:.2f} [{100 * d.corrected_interval[0]:+.2f}, "
                     f"{100 * d.corrected_interval[1]:+.2f}]; corrected t = {d.corrected.statistic:.3f}, "
                     f"p = {d.corrected.p_value:.3g} (plain paired p = {d.paired.p_value:.3g})", ""])
    if a.binary:
        name = a.binary.normal_class
        rows.append([f"sensitivity: leukemia called leukemia ({name} vs the rest), pooled [95% Wilson]",
                     _proportion(a.binary.sensitivity), _reading(a.colour_binary, "sensitivity")])
        rows.append([f"specificity: {name} called {name}, pooled [95% Wilson]", _proportion(a.binary.specificity),
                     _reading(a.colour_binary, "specificity")])
    else:
        rows.append(["sensitivity, specificity", "n/a: the data has no normal class (--normal-class)", ""])
    rows.append([f"calibration, pooled: ECE ({a.calibration.bins} bins) / Brier", _calibration(a.calibration),
                 _calibration(a.colour_calibration) if a.colour_calibration else "n/a"])
    return rows


def _method(p: Provenance) -> list[str]:
    return [
        "accuracy per split: share of rows of that split seed whose `predicted` equals `label` (colour alone: "
        "`colour_predicted`); mean, sample sd (n - 1) and the t-interval mean ± t(0.975, n - 1) · sd / √n over "
        "splits, shown as computed: with few splits it can reach past 0% or 100%.",
        "CNN - colour alone: per-split differences; the Nadeau-Bengio corrected resampled t-test (variance "
        f"(1/n + n_test/n_train) · sd², n_test/n_train = {p.test_train_ratio:.3f}) decides, because the splits "
        "reuse one data set and overlap; 'no detectable difference' means its p ≥ 0.05.",
        "sensitivity and specificity: every split's rows pooled; leukemia = any class but the normal one; Wilson "
        "score interval (scipy). An image in several splits' test parts counts once per split, so the interval "
        "is over calls, not distinct images.",
        "ECE: top-class confidence in equal-width bins (lo, hi], the sum over bins of (n_bin / n) · |accuracy - "
        "mean confidence|; Brier: mean over rows of Σ_k (p_k - y_k)², y one-hot (0 best, 2 worst).",
    ]


def _spread(s: Spread) -> str:
    if s.n < 2:
        return f"{_pct(s.mean)} (1 split: no interval)"
    return f"{_pct(s.mean)} ± {_pct(s.sd)} [{_pct(s.low)}, {_pct(s.high)}]"


def _proportion(x: Proportion) -> str:
    return f"{_pct(x.value)} ({x.successes}/{x.n}) [{_pct(x.low)}, {_pct(x.high)}]" if x.n else "n/a (no images)"


def _reading(reading: BinaryReading | None, which: str) -> str:
    return _proportion(getattr(reading, which)) if reading else "n/a"


def _calibration(c: Calibration) -> str:
    return f"{c.ece:.4f} / {c.brier:.4f} (n = {c.n})"


def _seeds(seeds: tuple[int, ...]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))) else \
        ", ".join(map(str, seeds))


def _looks(earlier: int | None) -> str:
    return "n/a" if earlier is None else str(earlier)


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _points(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:+.2f}"
