"""Grouped splits: an outer held-out test part plus stratified group k-fold on the rest. A group (a patient, a
smear's fields grouped by name, byte-identical files: data/manifest.py) is never on both sides; images the data
does not group are split one by one, so a split is only as leakage-safe as the groups it is given.

A split is saved as a JSON file whose sha256 is logged with every run that uses it, so any figure can be traced
to the exact images it was computed on.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from mtl_suite.data.manifest import Entry, Manifest
from mtl_suite.errors import UserError
from mtl_suite.io_utils import sha256_file, write_json_atomic

TEST = -2  # role of an outer-test image
TRAIN_ONLY = -1  # with --folds 1: an image that is never in the validation part


@dataclass(frozen=True)
class Split:
    entries: tuple[Entry, ...]
    roles: tuple[int, ...]  # TEST, TRAIN_ONLY or the fold index the image validates in
    folds: int
    test_fraction: float
    seed: int
    manifest_digest: str
    root: str = ""

    def indices(self, role: int) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.roles) == role)

    @property
    def test_indices(self) -> np.ndarray:
        return self.indices(TEST)

    @property
    def development_indices(self) -> np.ndarray:
        """Everything that is not outer test: what CV folds and the final refit train on."""
        return np.flatnonzero(np.asarray(self.roles) != TEST)

    def fold_indices(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(fold, train indices, validation indices) for every fold."""
        roles = np.asarray(self.roles)
        for fold in range(self.folds):
            val = np.flatnonzero(roles == fold)
            train = np.flatnonzero((roles != fold) & (roles != TEST))
            yield fold, train, val

    def to_json(self) -> dict:
        return {
            "folds": self.folds, "test_fraction": self.test_fraction, "seed": self.seed,
            "manifest_digest": self.manifest_digest, "root": self.root,
            "rows": [
                {"path": e.path, "label": e.label, "group": e.group, "sha256": e.sha256,
                 "width": e.width, "height": e.height, "mask": e.mask, "role": _role_name(r)}
                for e, r in zip(self.entries, self.roles)
            ],
        }

    def _parts(self) -> dict[str, int]:
        parts = {"test": TEST, **({"train-only": TRAIN_ONLY} if self.folds == 1 else {})}
        parts.update({f"fold-{k}": k for k in range(self.folds)})
        return parts

    def summary(self) -> dict:
        roles = np.asarray(self.roles)
        labels = np.asarray([e.label for e in self.entries])
        return {
            name: dict(sorted((str(c), int(n)) for c, n in zip(*np.unique(labels[roles == role], return_counts=True))))
            for name, role in self._parts().items()
        }

    def group_counts(self) -> dict[str, int]:
        """Independent image groups per part, as summary() names the parts."""
        roles = np.asarray(self.roles)
        groups = np.asarray([e.group for e in self.entries])
        return {name: len(np.unique(groups[roles == role])) for name, role in self._parts().items()}


def _role_name(role: int) -> str:
    return {TEST: "test", TRAIN_ONLY: "train-only"}.get(role, f"fold-{role}")


def _role_value(name: str) -> int:
    if name == "test":
        return TEST
    if name == "train-only":
        return TRAIN_ONLY
    return int(name.removeprefix("fold-"))


def make_split(manifest: Manifest, folds: int = 10, test_fraction: float = 0.2, seed: int = 42) -> Split:
    entries = manifest.entries
    labels = np.asarray([e.label for e in entries])
    groups = np.asarray([e.group for e in entries])
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"test fraction must be in [0, 1). Received: {test_fraction!r}")
    if folds < 1:
        raise UserError(f"folds must be at least 1. Received: {folds!r}")
    _check_classes(labels, groups, folds, test_fraction)
    roles = np.full(len(entries), TRAIN_ONLY, dtype=int)
    development = np.arange(len(entries))
    if test_fraction > 0:
        test = _held_out_groups(labels, groups, test_fraction, seed, "the test part")
        roles[test] = TEST
        development = np.flatnonzero(roles != TEST)
    if folds == 1:  # a single train/validation split: 20% of the development groups validate
        val = development[_held_out_groups(labels[development], groups[development], 0.2, seed + 1,
                                           "the validation part")]
        roles[val] = 0
    else:
        for fold, val in enumerate(_group_folds(labels[development], groups[development], folds, seed + 1)):
            roles[development[val]] = fold
    return Split(entries, tuple(int(r) for r in roles), folds, test_fraction, seed, manifest.digest, manifest.root)


def _held_out_groups(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, what: str) -> np.ndarray:
    """Indices of about `fraction` of the groups, stratified by class: the first m of k stratified group folds,
    with m/k the closest fraction to `fraction` whose denominator is at most 20 (0.2 -> 1/5, 0.3 -> 3/10)."""
    ratio = Fraction(fraction).limit_denominator(20)
    if ratio.numerator == 0:
        ratio = Fraction(1, 20)
    k, m = max(2, ratio.denominator), max(1, ratio.numerator)
    folds = _group_folds(labels, groups, k, seed, what)
    return np.sort(np.concatenate(folds[:m]))


def _group_folds(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int,
                 what: str = "the folds") -> list[np.ndarray]:
    from sklearn.model_selection import StratifiedGroupKFold  # imported here: keeps `--help` fast

    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise UserError(f"{what} needs {n_splits} independent image groups to split into {n_splits}; "
                        f"only {n_groups} are left. Use fewer --folds, a smaller --test-fraction or more data. "
                        f"Received: {n_groups} groups")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Rare classes may miss some folds; _check_classes already refused the cases where that is unavoidable.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [held for _, held in splitter.split(np.zeros(len(labels)), labels, groups)]


def _check_classes(labels: np.ndarray, groups: np.ndarray, folds: int, test_fraction: float) -> None:
    classes = np.unique(labels)
    if len(classes) < 2:
        raise UserError(f"only one class found ({classes[0] if len(classes) else 'none'}); need at least 2 to split. "
                        f"Received: {len(labels)} images of one class")
    # Every fold (and the test part) must be able to hold at least one group of every class.
    needed = max(folds, 2) + (1 if test_fraction > 0 else 0)
    for cls in classes:
        n_groups = len(np.unique(groups[labels == cls]))
        if n_groups < needed:
            raise UserError(
                f"class '{cls}' has only {n_groups} independent image group(s); a {folds}-fold split"
                f"{' with a test part' if test_fraction > 0 else ''} needs at least {needed}. "
                f"Use fewer --folds or more data. Received: --folds {folds}"
            )


def save_split(split: Split, path: str | Path) -> tuple[Path, str]:
    """Write atomically; return the path and the file's sha256 (the split digest logged with runs)."""
    path = write_json_atomic(path, split.to_json())
    return path, sha256_file(path)


def load_split(path: str | Path) -> Split:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["rows"]
        entries = tuple(
            Entry(r["path"], r["label"], r["sha256"], r["group"], r["width"], r["height"], r.get("mask"))
            for r in rows
        )
        roles = tuple(_role_value(r["role"]) for r in rows)
        return Split(entries, roles, data["folds"], data["test_fraction"], data["seed"], data["manifest_digest"],
                     data.get("root", ""))
    except FileNotFoundError:
        raise UserError(f"split file not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read split file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a split file written by mtl-suite ({type(exc).__name__}: {exc})") from None
