"""Scores of a model on images that all belong to one known class, typically another lab's smears of normal blood:
how many it calls that class outright, how many it flags as unlike its training images, and how many it calls
something else without a flag (a confident wrong call: the failure a user cannot see). Numbers only; no MLflow.

With a normal class expected, `called_expected_share` is the specificity on that set and `confident_wrong_share` the
share of healthy people's smears that would be reported as leukemia with nothing to warn the reader."""

from __future__ import annotations

import numpy as np
import pandas as pd


def expected_class_scores(class_names: list[str], expected: str, called: np.ndarray, flagged: np.ndarray,
                          sets: np.ndarray | None = None) -> dict[str, float]:
    """`called` class indices, `flagged` booleans, `sets` (n, classes) booleans or None. Keys: n,
    called_expected_share, flagged_share, confident_wrong_share, called/<class>_share, and with sets
    set_has_expected_share."""
    called, flagged = np.asarray(called), np.asarray(flagged, dtype=bool)
    k = class_names.index(expected)
    out = {"n": float(len(called)), "called_expected_share": float(np.mean(called == k)),
           "flagged_share": float(np.mean(flagged)),
           "confident_wrong_share": float(np.mean((called != k) & ~flagged))}
    out.update({f"called/{name}_share": float(np.mean(called == j)) for j, name in enumerate(class_names)})
    if sets is not None:
        out["set_has_expected_share"] = float(np.mean(np.asarray(sets, dtype=bool)[:, k]))
    return out


def external_line(what: str, expected: str, metrics: dict[str, float], prefix: str = "",
                  colour_key: str | None = None) -> str:
    """'stage3 on bccd (364 images, all Benign): 51.1% called Benign (colour alone 0.0%), 100.0% flagged as unlike
    the training images, 0.0% called otherwise without a flag'."""
    n = int(metrics[f"{prefix}n"])
    colour = metrics.get(colour_key) if colour_key else None
    return (f"{what} ({n} images, all {expected}): {metrics[f'{prefix}called_expected_share']:.1%} called {expected}"
            + (f" (colour alone {colour:.1%})" if colour is not None else "")
            + f", {metrics[f'{prefix}flagged_share']:.1%} flagged as unlike the training images, "
            f"{metrics[f'{prefix}confident_wrong_share']:.1%} called otherwise without a flag")


def readings_frame(paths: list[str], class_names: list[str], proba: np.ndarray, ood_score: np.ndarray,
                   in_distribution: np.ndarray, sets: np.ndarray | None,
                   sha256: list[str] | None = None) -> pd.DataFrame:
    """One row per image, what a reader needs to recompute every share: path (and content digest), p_<class>, the
    class called, the OOD score and flag and the prediction set."""
    frame = pd.DataFrame({"path": paths})
    if sha256 is not None:
        frame["sha256"] = sha256
    for j, name in enumerate(class_names):
        frame[f"p_{name}"] = np.asarray(proba)[:, j]
    frame["predicted"] = [class_names[j] for j in np.asarray(proba).argmax(axis=1)]
    frame["ood_score"] = ood_score
    frame["in_distribution"] = np.asarray(in_distribution, dtype=bool)
    if sets is not None:
        frame["prediction_set"] = ["|".join(n for n, inside in zip(class_names, row) if inside) for row in sets]
    return frame
