"""Two `mtl-suite assess` reports on the same outer splits, compared split by split from their committed per-image
predictions alone (no tracking store): each split's test accuracy of model A, model B and each report's colour
alone, then A - B (and A - B's colour alone) with the corrected resampled t-test, as `assess` compares a model
with colour alone.

    python benchmarks/lab/paired_assessments.py reports/assess-fast-cpu-gray-blocks40 reports/assess-fast-cpu-blocks40

Both reports must hold the same test images on every split (checked by file digest per split seed); the ratio
n_test / n_train of the corrected test is report A's (the splits are the same, so B's is too).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from mtl_suite.analysis.assessment import assess, difference, spread


def load(folder: Path) -> tuple[pd.DataFrame, dict]:
    provenance = json.loads((folder / "assessment.json").read_text())["provenance"]
    return pd.read_csv(folder / "predictions.csv"), provenance


def per_split(frame: pd.DataFrame, ratio: float) -> tuple[pd.Series, pd.Series]:
    """The model's and colour alone's test accuracy per split seed, as `assess` computes them for its report."""
    rows = assess(frame, None, ratio).splits
    seeds = [row.split_seed for row in rows]
    return (pd.Series([row.accuracy for row in rows], index=seeds),
            pd.Series([row.colour_accuracy for row in rows], index=seeds))


def check_same_splits(a: pd.DataFrame, b: pd.DataFrame) -> None:
    images = {name: frame.groupby("split_seed")["sha256"].apply(frozenset) for name, frame in (("A", a), ("B", b))}
    if not images["A"].equals(images["B"]):
        sys.exit("the two reports do not hold the same test images on the same split seeds: nothing to pair")


def line(name: str, values: pd.Series) -> str:
    s = spread(values.to_numpy())
    runs = ", ".join(f"{100 * v:.2f}" for v in values)
    return f"| {name} | {100 * s.mean:.2f}% ± {100 * s.sd:.2f} [{100 * s.low:.2f}, {100 * s.high:.2f}] | {runs} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="report folder of model A (assessment.json, predictions.csv)")
    parser.add_argument("b", type=Path, help="report folder of model B, on the same splits")
    args = parser.parse_args()
    (a, meta_a), (b, meta_b) = load(args.a), load(args.b)
    check_same_splits(a, b)
    ratio = float(meta_a["test_train_ratio"])
    (model_a, colour_a), (model_b, colour_b) = per_split(a, ratio), per_split(b, ratio)
    rows = {f"A: {meta_a['recipe_description']} ({args.a.name})": model_a,
            f"B: {meta_b['recipe_description']} ({args.b.name})": model_b,
            "colour alone of A's report": colour_a, "colour alone of B's report": colour_b}
    print(f"| test accuracy over {len(rows[next(iter(rows))])} splits | mean ± sd [95% t-interval] | per split "
          f"(seeds {', '.join(str(s) for s in a['split_seed'].unique())}) |\n|---|---|---|")
    print("\n".join(line(name, values) for name, values in rows.items()))
    for name, other in (("A - B", model_b), ("A - colour alone of B's report", colour_b)):
        d = difference(list(model_a), list(other), ratio)  # "CNN" = A, "colour" = the other
        low, high = d.corrected_interval
        print(f"\n{name}: {100 * d.spread.mean:+.2f} points, 95% interval {100 * low:+.2f} to {100 * high:+.2f} "
              f"(corrected); corrected t = {d.corrected.statistic:.3f}, p = {d.corrected.p_value:.3g} "
              f"(n_test/n_train {ratio:.4f})")


if __name__ == "__main__":
    main()
