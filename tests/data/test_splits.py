"""Unit tests for medlens.data.splits: ratios, stratified splits, carving, k-fold, duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data.splits import (
    DEFAULT_RATIOS,
    carve_validation,
    duplicate_groups,
    kfold_indices,
    parse_ratios,
    stratified_split,
    stratify_key,
)
from helpers import single_line

SPLIT_NAMES = ("train", "val", "test")


def _labels(counts=(500, 300, 200), seed=0) -> np.ndarray:
    """Class ids with the given counts per class, shuffled (order must not matter)."""
    labels = np.concatenate([np.full(c, k, dtype=np.int64) for k, c in enumerate(counts)])
    return np.random.default_rng(seed).permutation(labels)


def _check_partition(parts: dict[str, np.ndarray], n: int) -> None:
    assert set(parts) == set(SPLIT_NAMES)
    for name in SPLIT_NAMES:
        idx = parts[name]
        assert np.issubdtype(idx.dtype, np.integer), name
        assert (np.diff(idx) > 0).all(), f"{name} indices must be sorted and unique"
    joined = np.concatenate([parts[s] for s in SPLIT_NAMES])
    assert len(joined) == n, "splits must be disjoint and cover every row exactly once"
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))



# --------------------------------------------------------------------------------------------
# parse_ratios
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.7/0.15/0.15", (0.7, 0.15, 0.15)),
        ("70/15/15", (0.7, 0.15, 0.15)),
        ("0.8,0.1,0.1", (0.8, 0.1, 0.1)),
        ((0.6, 0.2, 0.2), (0.6, 0.2, 0.2)),
        ([80, 10, 10], (0.8, 0.1, 0.1)),
    ],
)
def test_parse_ratios_accepts(text, expected):
    got = parse_ratios(text)
    assert isinstance(got, tuple) and len(got) == 3
    assert got == pytest.approx(expected)


def test_default_ratios_are_valid():
    assert parse_ratios(DEFAULT_RATIOS) == pytest.approx((0.8, 0.1, 0.1))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0.5/0.5", "three"),
        ("1/0/0", "positive"),
        ("a/b/c", "three numbers"),
        ("0.5/0.3/0.1", "sum"),
        ("0.8/0.3/-0.1", "positive"),
        ("", "three"),
    ],
)
def test_parse_ratios_rejects_with_the_value_named(text, fragment):
    with pytest.raises(ValueError) as info:
        parse_ratios(text)
    message = single_line(info.value)
    assert fragment in message
    assert repr(text) in message


# --------------------------------------------------------------------------------------------
# stratify_key
# --------------------------------------------------------------------------------------------


def test_stratify_key_single_label_is_identity():
    labels = np.array([2, 0, 1, 2])
    np.testing.assert_array_equal(stratify_key(labels), labels)


def _same_partition(key: np.ndarray, expected: list) -> bool:
    """``key`` groups rows exactly as ``expected`` does (values may differ)."""
    pairs = set(zip(key.tolist(), expected, strict=True))
    return len(pairs) == len(set(key.tolist())) == len(set(expected))


def test_stratify_key_multilabel_keys_rows_by_their_rarest_label():
    # column sums: label 0 in 13 rows, label 1 in 9, label 2 in 4 -> rarest first: 2, 1, 0
    rows = [[1, 0, 0]] * 6 + [[1, 1, 0]] * 4 + [[0, 1, 0]] * 2 + [[1, 1, 1]] * 3 + [[0, 0, 0]] * 5 + [[0, 0, 1]]
    labels = np.array(rows, dtype=np.uint8)
    key = stratify_key(labels, min_count=2)
    assert key.shape == (len(rows),)
    # strata: only label 0 | rarest is label 1 | carries label 2 | no label at all
    expected = ["l0"] * 6 + ["l1"] * 6 + ["l2"] * 3 + ["none"] * 5 + ["l2"]
    assert _same_partition(key, expected), key
    # with min_count=5 the 4-row "label 2" stratum is pooled into one rare key of its own
    pooled = stratify_key(labels, min_count=5)
    assert _same_partition(pooled, expected)  # the only small stratum is pooled alone
    assert pooled[-1] == pooled[12] and pooled[-1] not in (pooled[0], pooled[6], pooled[15])


def test_stratify_key_multilabel_has_at_most_k_plus_one_strata():
    rng = np.random.default_rng(0)
    labels = (rng.random((2000, 10)) < 0.3).astype(np.uint8)
    key = stratify_key(labels, min_count=2)
    assert key.shape == (2000,)
    assert len(np.unique(key)) <= 11  # a label powerset would give hundreds


def test_stratify_key_pools_small_multilabel_strata():
    labels = np.array([[1, 0]] * 6 + [[0, 1]] * 1 + [[0, 0]] * 1, dtype=np.uint8)
    key = stratify_key(labels, min_count=2)
    # both singleton strata share one "rare" key, distinct from the common one
    assert key[6] == key[7] and key[6] != key[0]
    assert len(set(key[:6].tolist())) == 1


# --------------------------------------------------------------------------------------------
# stratified_split
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), "0.6/0.2/0.2"])
def test_stratified_split_partition_and_per_class_proportions(ratios):
    labels = _labels()
    parts = stratified_split(labels, ratios=ratios, seed=0)
    _check_partition(parts, len(labels))
    r = dict(zip(SPLIT_NAMES, parse_ratios(ratios), strict=True))
    for cls, total in enumerate(np.bincount(labels)):
        for name in SPLIT_NAMES:
            got = int((labels[parts[name]] == cls).sum())
            assert abs(got - r[name] * total) <= 2, (cls, name, got, r[name] * total)


def test_stratified_split_overall_sizes_match_ratios_0811():
    labels = _labels((80, 20))
    parts = stratified_split(labels, ratios=(0.8, 0.1, 0.1), seed=0)
    assert [len(parts[s]) for s in SPLIT_NAMES] == [80, 10, 10]


def test_stratified_split_overall_sizes_match_ratios_701515():
    labels = _labels((80, 20))
    parts = stratified_split(labels, ratios=(0.7, 0.15, 0.15), seed=0)
    assert [len(parts[s]) for s in SPLIT_NAMES] == [70, 15, 15]


def test_stratified_split_same_seed_same_result_other_seed_differs():
    labels = _labels()
    a = stratified_split(labels, seed=3)
    b = stratified_split(labels.copy(), seed=3)
    c = stratified_split(labels, seed=4)
    for name in SPLIT_NAMES:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[s], c[s]) for s in SPLIT_NAMES)


def test_stratified_split_balanced_classes_stay_balanced_in_every_split():
    labels = np.array([0] * 10 + [1] * 10)
    first = stratified_split(labels, ratios=(0.6, 0.2, 0.2), seed=0)
    again = stratified_split(labels, ratios=(0.6, 0.2, 0.2), seed=0)
    for name in SPLIT_NAMES:
        np.testing.assert_array_equal(first[name], again[name])
        # every split has both classes, in equal numbers
        counts = np.bincount(labels[first[name]], minlength=2)
        assert counts[0] == counts[1] > 0


def _grouped_labels(seed=0):
    """60 distinct images per class plus duplicates: group g repeated 1-4 times."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    gid = 0
    for cls in range(3):
        for _ in range(60):
            reps = int(rng.integers(1, 5))
            labels += [cls] * reps
            groups += [gid] * reps
            gid += 1
    order = rng.permutation(len(labels))
    return np.asarray(labels)[order], np.asarray(groups)[order]


def _split_of_row(parts: dict[str, np.ndarray], n: int) -> np.ndarray:
    where = np.empty(n, dtype=object)
    for name, idx in parts.items():
        where[idx] = name
    return where


def test_stratified_split_keeps_groups_together():
    labels, groups = _grouped_labels()
    assert len(np.unique(groups)) < len(groups)  # there really are duplicates
    parts = stratified_split(labels, seed=0, groups=groups)
    _check_partition(parts, len(labels))
    where = _split_of_row(parts, len(labels))
    for g in np.unique(groups):
        assert len(set(where[groups == g])) == 1, f"group {g} split across {set(where[groups == g])}"
    # stratification on representatives: each split holds every class
    for name in SPLIT_NAMES:
        assert set(labels[parts[name]]) == {0, 1, 2}


def test_stratified_split_without_groups_would_separate_duplicates():
    """Sanity check of the test above: ignoring groups does split some duplicate groups."""
    labels, groups = _grouped_labels()
    where = _split_of_row(stratified_split(labels, seed=0), len(labels))
    assert any(len(set(where[groups == g])) > 1 for g in np.unique(groups))


def test_stratified_split_multilabel():
    rng = np.random.default_rng(5)
    labels = (rng.random((300, 3)) < 0.4).astype(np.uint8)
    parts = stratified_split(labels, ratios=(0.7, 0.15, 0.15), seed=0)
    _check_partition(parts, len(labels))
    # positives per label are spread roughly by the ratios
    for k in range(3):
        total = labels[:, k].sum()
        assert abs(labels[parts["test"], k].sum() - 0.15 * total) <= 0.05 * total + 2


def test_stratified_split_multilabel_many_combinations():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 5)) < 0.3).astype(np.uint8)
    parts = stratified_split(labels, seed=0)
    _check_partition(parts, len(labels))


def test_stratified_split_rejects_class_with_too_few_images():
    labels = np.array([0] * 20 + [1] * 2)
    with pytest.raises(ValueError) as info:
        stratified_split(labels, seed=0)
    message = single_line(info.value)
    assert "class 1 has 2" in message and "at least 3" in message


def test_stratified_split_too_small_for_ratios_has_medlens_message():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError) as info:
        stratified_split(labels, ratios=(0.8, 0.1, 0.1), seed=0)
    assert "stratified" in single_line(info.value)


def test_stratified_split_rejects_bad_ratios():
    with pytest.raises(ValueError, match="sum"):
        stratified_split(_labels(), ratios=(0.5, 0.2, 0.2))


# --------------------------------------------------------------------------------------------
# carve_validation
# --------------------------------------------------------------------------------------------


def test_carve_validation_from_train_only():
    labels = _labels((90, 45))
    train_index = np.arange(120)
    train, val = carve_validation(labels, train_index, fraction=1 / 9, seed=0)
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), train_index)
    assert abs(len(val) - len(train_index) / 9) <= 1
    # stratified: class shares in val close to those in the training rows
    share = labels[train_index].mean()
    assert abs(labels[val].mean() - share) <= 0.1


def test_carve_validation_keeps_groups_together_and_is_seeded():
    labels, groups = _grouped_labels(1)
    train_index = np.arange(len(labels))
    train, val = carve_validation(labels, train_index, fraction=0.2, seed=7, groups=groups)
    assert len(np.intersect1d(groups[train], groups[val])) == 0
    train2, val2 = carve_validation(labels, train_index, fraction=0.2, seed=7, groups=groups)
    np.testing.assert_array_equal(val, val2)
    _, val3 = carve_validation(labels, train_index, fraction=0.2, seed=8, groups=groups)
    assert not np.array_equal(val, val3)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1])
def test_carve_validation_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError) as info:
        carve_validation(_labels(), np.arange(100), fraction=fraction)
    assert repr(fraction) in single_line(info.value)


def test_carve_validation_rejects_singleton_class():
    labels = np.array([0] * 10 + [1])
    with pytest.raises(ValueError) as info:
        carve_validation(labels, np.arange(11), fraction=0.2)
    assert "class 1 has 1" in single_line(info.value)


# --------------------------------------------------------------------------------------------
# kfold_indices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 5])
def test_kfold_every_row_in_exactly_one_val_fold(k):
    labels = _labels((50, 30, 20))
    folds = kfold_indices(labels, n_splits=k, seed=0)
    assert len(folds) == k
    n = len(labels)
    seen = np.zeros(n, dtype=int)
    for train, val in folds:
        assert len(np.intersect1d(train, val)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
        seen[val] += 1
        # stratified: each fold's val holds each class in proportion
        for cls, total in enumerate(np.bincount(labels)):
            assert abs((labels[val] == cls).sum() - total / k) <= 1
    assert (seen == 1).all()


def test_kfold_seeded():
    labels = _labels((50, 30, 20))
    a = kfold_indices(labels, n_splits=4, seed=1)
    b = kfold_indices(labels, n_splits=4, seed=1)
    c = kfold_indices(labels, n_splits=4, seed=2)
    for (ta, va), (tb, vb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(ta, tb)
    assert any(not np.array_equal(va, vc) for (_, va), (_, vc) in zip(a, c, strict=True))


def test_kfold_keeps_groups_in_one_fold():
    labels, groups = _grouped_labels(2)
    folds = kfold_indices(labels, n_splits=3, seed=0, groups=groups)
    fold_of = np.full(len(labels), -1)
    for i, (_, val) in enumerate(folds):
        assert (fold_of[val] == -1).all()
        fold_of[val] = i
    assert (fold_of >= 0).all()
    for g in np.unique(groups):
        assert len(set(fold_of[groups == g])) == 1


@pytest.mark.parametrize("n_splits", [1, 0, -3, 2.5])
def test_kfold_rejects_bad_n_splits(n_splits):
    with pytest.raises(ValueError) as info:
        kfold_indices(_labels(), n_splits=n_splits)
    message = single_line(info.value)
    assert ">= 2" in message and repr(n_splits) in message


def test_kfold_rejects_too_few_per_class():
    labels = np.array([0] * 20 + [1] * 3 + [2] * 10)
    with pytest.raises(ValueError) as info:
        kfold_indices(labels, n_splits=5)
    message = single_line(info.value)
    assert "5-fold" in message and "class 1 has 3" in message
    assert "class 2" not in message  # only the offending class is named


def test_kfold_multilabel():
    rng = np.random.default_rng(6)
    labels = (rng.random((120, 2)) < 0.5).astype(np.uint8)
    folds = kfold_indices(labels, n_splits=3, seed=0)
    seen = np.zeros(len(labels), dtype=int)
    for _, val in folds:
        seen[val] += 1
    assert (seen == 1).all()


# --------------------------------------------------------------------------------------------
# duplicate_groups
# --------------------------------------------------------------------------------------------


def test_duplicate_groups_marks_identical_rows():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    images = base[[0, 1, 0, 2, 3, 1, 4, 0]]
    groups = duplicate_groups(images)
    assert groups.shape == (8,)
    # the id of a group is the first row holding that image
    np.testing.assert_array_equal(groups, [0, 1, 0, 3, 4, 1, 6, 0])


def test_duplicate_groups_distinguishes_single_pixel_difference():
    images = np.zeros((3, 1, 8, 8), dtype=np.uint8)
    images[1, 0, 7, 7] = 1
    np.testing.assert_array_equal(duplicate_groups(images), [0, 1, 0])


def test_duplicate_groups_all_distinct_and_empty():
    images = np.arange(4 * 2 * 3, dtype=np.uint8).reshape(4, 2, 3)
    np.testing.assert_array_equal(duplicate_groups(images), np.arange(4))
    assert duplicate_groups(np.zeros((0, 1, 4, 4), dtype=np.uint8)).shape == (0,)


def test_duplicate_groups_work_on_strided_views():
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    hwc[2] = hwc[0]
    chw = hwc.transpose(0, 3, 1, 2)  # non-contiguous view, as MedMNIST RGB is held
    np.testing.assert_array_equal(duplicate_groups(chw), [0, 1, 0, 3])


@pytest.mark.parametrize("text", ["nan/0.5/0.5", "inf/0.1/0.1"])
def test_parse_ratios_rejects_non_finite(text):
    with pytest.raises(ValueError) as info:
        parse_ratios(text)
    assert text in single_line(info.value)


def test_ratios_that_leave_too_few_training_rows_get_a_medlens_message():
    labels = np.array([0] * 20 + [1] * 20)
    with pytest.raises(ValueError) as info:
        stratified_split(labels, ratios="0.02/0.49/0.49", seed=0)
    message = single_line(info.value)
    assert "training" in message and "0.02/0.49/0.49" in message
