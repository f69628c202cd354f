"""Splits: groups never straddle parts, classes stay balanced, seeds reproduce, files round-trip with a digest."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from mtl_suite.data.manifest import Entry, Manifest, build_manifest
from mtl_suite.data.splits import TEST, TRAIN_ONLY, load_split, make_split, save_split
from mtl_suite.errors import UserError


def synthetic_manifest(groups_per_class: dict[str, int], images_per_group=(1, 2, 3), seed: int = 0) -> Manifest:
    """Entries without files: splitting only looks at labels and groups. Group sizes vary, as patients do."""
    rng = np.random.default_rng(seed)
    entries = []
    for label, n_groups in groups_per_class.items():
        for g in range(n_groups):
            for i in range(int(rng.choice(images_per_group))):
                sha = hashlib.sha256(f"{label}{g}{i}".encode()).hexdigest()
                entries.append(Entry(f"/data/{label}/{g}_{i}.png", label, sha, f"{label}-patient{g}", 224, 224))
    return Manifest(root="/data", layout="folder", entries=tuple(entries),
                    class_counts=dict(Counter(e.label for e in entries)))


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return synthetic_manifest({"Benign": 16, "Early": 32, "Pre": 28, "Pro": 24})  # 100 groups, 206 images


def roles_by_group(split) -> dict[str, set[int]]:
    out: dict[str, set[int]] = defaultdict(set)
    for entry, role in zip(split.entries, split.roles):
        out[entry.group].add(role)
    return out


def test_no_group_in_two_parts(manifest):
    split = make_split(manifest, folds=10, test_fraction=0.2, seed=3)
    assert set(split.roles) == {TEST, *range(10)}
    straddling = {g: r for g, r in roles_by_group(split).items() if len(r) > 1}
    assert straddling == {}


def test_folds_partition_the_development_part(manifest):
    split = make_split(manifest, folds=5, test_fraction=0.2, seed=0)
    development = set(split.development_indices)
    assert development.isdisjoint(split.test_indices)
    seen = set()
    for fold, train, val in split.fold_indices():
        assert set(train).isdisjoint(val)
        assert set(train) | set(val) == development
        train_groups = {split.entries[i].group for i in train}
        assert train_groups.isdisjoint({split.entries[i].group for i in val})
        assert train_groups.isdisjoint({split.entries[i].group for i in split.test_indices})
        seen |= set(val)
    assert seen == development  # every development image validates exactly once


def test_stratification_roughly_holds(manifest):
    # Each part gets each class in proportion, to within 2 images (a random group split misses by 4-7 here).
    split = make_split(manifest, folds=5, test_fraction=0.2, seed=1)
    labels = np.asarray([e.label for e in split.entries])
    roles = np.asarray(split.roles)
    for role in [TEST, *range(5)]:
        part = labels[roles == role]
        for c in manifest.classes:
            expected = np.mean(labels == c) * len(part)
            assert abs(np.sum(part == c) - expected) <= 2, (role, c)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.25, 0.3, 0.4])
def test_test_fraction_is_respected(manifest, fraction):
    split = make_split(manifest, folds=3, test_fraction=fraction, seed=5)
    by_group = roles_by_group(split)
    test_groups = sum(1 for roles in by_group.values() if roles == {TEST})
    assert test_groups / len(by_group) == pytest.approx(fraction, abs=0.03)


def test_no_test_part(manifest):
    split = make_split(manifest, folds=4, test_fraction=0.0)
    assert TEST not in split.roles and len(split.test_indices) == 0
    assert set(split.roles) == {0, 1, 2, 3}


def test_same_seed_same_split_other_seed_other_split(manifest):
    a = make_split(manifest, folds=5, seed=7)
    b = make_split(manifest, folds=5, seed=7)
    c = make_split(manifest, folds=5, seed=8)
    assert a.roles == b.roles
    assert a.roles != c.roles


def test_single_fold_is_a_train_validation_split(manifest):
    split = make_split(manifest, folds=1, test_fraction=0.2, seed=2)
    roles = Counter(split.roles)
    assert set(roles) == {TEST, TRAIN_ONLY, 0}
    assert roles[0] / (roles[0] + roles[TRAIN_ONLY]) == pytest.approx(0.2, abs=0.05)
    folds = list(split.fold_indices())
    assert len(folds) == 1
    _, train, val = folds[0]
    assert {split.roles[i] for i in train} == {TRAIN_ONLY} and {split.roles[i] for i in val} == {0}
    assert all(len(r) == 1 for r in roles_by_group(split).values())
    assert set(split.summary()) == {"test", "train-only", "fold-0"}


def test_summary_counts_every_image_once(manifest):
    split = make_split(manifest, folds=3)
    summary = split.summary()
    assert set(summary) == {"test", "fold-0", "fold-1", "fold-2"}
    totals = Counter()
    for counts in summary.values():
        totals.update(counts)
    assert dict(totals) == manifest.class_counts


def test_save_load_round_trip_and_digest(tmp_path, manifest):
    split = make_split(manifest, folds=5, seed=11)
    path, digest = save_split(split, tmp_path / "sub" / "split.json")
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_split(path)
    assert loaded == split
    assert save_split(loaded, tmp_path / "again.json")[1] == digest  # same split, same bytes, same digest
    other = make_split(manifest, folds=5, seed=12)
    assert save_split(other, tmp_path / "other.json")[1] != digest
    data = json.loads(path.read_text())
    assert data["manifest_digest"] == manifest.digest and data["seed"] == 11
    assert {row["role"] for row in data["rows"]} == {"test", *(f"fold-{k}" for k in range(5))}
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["split.json"]  # no temp file left


def test_load_split_errors(tmp_path):
    with pytest.raises(UserError, match="split file not found"):
        load_split(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"rows": [{"path": "x"}]}')
    with pytest.raises(UserError, match="not a split file"):
        load_split(tmp_path / "bad.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(UserError, match="not a split file"):
        load_split(tmp_path / "text.json")
    with pytest.raises(UserError, match="cannot read split file"):
        load_split(tmp_path)


def test_too_few_groups_per_class(manifest):
    small = synthetic_manifest({"a": 20, "b": 5})
    with pytest.raises(UserError) as info:
        make_split(small, folds=10, test_fraction=0.2)
    message = str(info.value)
    assert "class 'b'" in message and "only 5" in message and "needs at least 11" in message
    split = make_split(small, folds=4, test_fraction=0.0)  # fewer folds: fine
    assert all(len(r) == 1 for r in roles_by_group(split).values())


def test_one_class_cannot_be_split():
    with pytest.raises(UserError, match="only one class found \\(solo\\)"):
        make_split(synthetic_manifest({"solo": 30}), folds=3)


@pytest.mark.parametrize(("folds", "fraction"), [(0, 0.2), (3, 1.0), (3, -0.1)])
def test_impossible_parameters(manifest, folds, fraction):
    with pytest.raises(UserError, match="Received"):
        make_split(manifest, folds=folds, test_fraction=fraction)


def test_real_duplicates_never_straddle(tmp_path, make_tree):
    import shutil

    root = make_tree(tmp_path / "d", {"a": 12, "b": 12}, size=(16, 16))
    for i in range(4):  # four duplicate pairs in class a
        shutil.copyfile(root / "a" / f"a_{i:03d}.png", root / "a" / f"copy_{i}.png")
    manifest = build_manifest(root, duplicates="group")
    assert len(manifest.duplicate_sets) == 4
    for seed in range(5):
        split = make_split(manifest, folds=3, test_fraction=0.2, seed=seed)
        role = {e.path: r for e, r in zip(split.entries, split.roles)}
        for first, second in manifest.duplicate_sets:
            assert role[first] == role[second]
