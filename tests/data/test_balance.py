"""Unit tests for medlens.data.balance: balanced loss weights and oversampling weights."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from medlens.data.balance import class_weights, oversample_weights
from helpers import single_line

SINGLE_LABEL = {
    "balanced": (np.array([0, 1, 0, 1]), 2),
    "binary_skewed": (np.array([0, 0, 0, 1]), 2),
    "multiclass": (np.array([2, 0, 1, 1, 2, 2, 2, 3, 3, 1]), 4),
    "one_rare": (np.array([0] * 50 + [1] * 3 + [2] * 17), 3),
    "random": (np.random.default_rng(0).integers(0, 7, size=500), 7),
}


# --- class_weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SINGLE_LABEL))
def test_class_weights_equal_scikit_learn_balanced(name):
    labels, n_classes = SINGLE_LABEL[name]
    expected = compute_class_weight("balanced", classes=np.arange(n_classes), y=labels)
    weights = class_weights(labels, n_classes)
    assert weights.shape == (n_classes,)
    np.testing.assert_allclose(weights, expected, rtol=0, atol=1e-12)


def test_class_weights_by_hand():
    # n / (k * count): 4 / (2 * 3) and 4 / (2 * 1)
    np.testing.assert_allclose(class_weights(np.array([0, 0, 0, 1]), 2), [2 / 3, 2.0])


@pytest.mark.parametrize("name", list(SINGLE_LABEL))
def test_balanced_weights_give_every_class_the_same_total(name):
    labels, n_classes = SINGLE_LABEL[name]
    weights = class_weights(labels, n_classes)
    totals = weights * np.bincount(labels, minlength=n_classes)
    np.testing.assert_allclose(totals, len(labels) / n_classes)


def test_multilabel_weights_are_negatives_over_positives_per_label():
    labels = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]], dtype=np.uint8)
    # label 0: 4 positives, 1 negative; label 1: 1 and 4; label 2: 3 and 2
    np.testing.assert_allclose(class_weights(labels, 3), [1 / 4, 4.0, 2 / 3])


def test_multilabel_weights_on_random_labels():
    labels = (np.random.default_rng(1).random((200, 5)) < [0.05, 0.2, 0.5, 0.7, 0.9]).astype(np.uint8)
    positives = labels.sum(axis=0)
    np.testing.assert_allclose(class_weights(labels, 5), (200 - positives) / positives)
    assert np.all(np.diff(class_weights(labels, 5)) < 0)  # rarer label, heavier weight


@pytest.mark.parametrize("missing", [0, 2, 4])
def test_missing_class_is_named(missing):
    labels = np.array([c for c in range(5) if c != missing] * 3)
    with pytest.raises(ValueError) as info:
        class_weights(labels, 5)
    assert f"class {missing} " in single_line(info.value)


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_missing_label_is_named(missing):
    labels = np.ones((4, 3), dtype=np.uint8)
    labels[:, missing] = 0
    with pytest.raises(ValueError) as info:
        class_weights(labels, 3)
    assert f"label {missing} " in single_line(info.value)


def test_label_beyond_the_class_count_is_an_error():
    with pytest.raises(ValueError):
        class_weights(np.array([0, 1, 2]), 2)


# --- oversample_weights ----------------------------------------------------------------------


def _totals(weights: np.ndarray, key: np.ndarray) -> dict[int, float]:
    return {int(k): float(weights[key == k].sum()) for k in np.unique(key)}


def test_oversample_weights_by_hand():
    np.testing.assert_allclose(oversample_weights(np.array([0, 0, 0, 1]), 2), [1 / 3, 1 / 3, 1 / 3, 1.0])


@pytest.mark.parametrize("name", list(SINGLE_LABEL))
def test_oversample_gives_every_class_the_same_total_weight(name):
    labels, n_classes = SINGLE_LABEL[name]
    weights = oversample_weights(labels, n_classes)
    assert weights.shape == labels.shape and np.all(weights > 0)
    totals = _totals(weights, labels)
    assert sorted(totals) == list(range(n_classes))
    np.testing.assert_allclose(list(totals.values()), totals[0])
    for c in range(n_classes):  # every image of a class weighs the same
        assert np.ptp(weights[labels == c]) == 0


def test_oversample_with_an_absent_class_still_balances_the_others():
    labels = np.array([0, 0, 0, 0, 2])
    weights = oversample_weights(labels, 3)
    assert _totals(weights, labels) == {0: pytest.approx(1.0), 2: pytest.approx(1.0)}


def test_oversampled_draws_are_balanced():
    labels, n_classes = SINGLE_LABEL["one_rare"]
    weights = oversample_weights(labels, n_classes)
    draws = np.random.default_rng(0).choice(len(labels), size=30_000, p=weights / weights.sum())
    shares = np.bincount(labels[draws], minlength=n_classes) / len(draws)
    np.testing.assert_allclose(shares, 1 / n_classes, atol=0.02)


def test_multilabel_oversample_uses_the_rarest_label():
    labels = np.array([[1, 0], [1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.uint8)
    # label 1 is rarest (1 positive): row 2 counts as label 1; rows 0, 1, 4 as label 0; row 3 (no label) alone
    np.testing.assert_allclose(oversample_weights(labels, 2), [1 / 3, 1 / 3, 1.0, 1.0, 1 / 3])


def test_multilabel_oversample_balances_the_rarest_label_keys():
    rng = np.random.default_rng(3)
    labels = (rng.random((300, 4)) < [0.6, 0.3, 0.1, 0.05]).astype(np.uint8)
    weights = oversample_weights(labels, 4)
    sums = labels.sum(axis=0)
    rarest = np.array([_rarest(row, sums) for row in labels])
    totals = _totals(weights, rarest)
    assert len(totals) == 5  # four labels and "no label"
    np.testing.assert_allclose(list(totals.values()), 1.0)


def _rarest(row: np.ndarray, sums: np.ndarray) -> int:
    """The label of ``row`` with the fewest positives overall (ties: the lower id); ``K`` when none."""
    carried = np.flatnonzero(row)
    if len(carried) == 0:
        return len(sums)
    return int(min(carried, key=lambda j: (sums[j], j)))
