"""Unit tests for medlens.metrics: the official MedMNIST ACC and AUC on every task, and the
per-class report, kappa, confusion matrices, curves, calibration, bootstrap intervals and evaluate_scores
against values worked out by hand."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score as sk_accuracy
from sklearn.metrics import roc_auc_score as sk_auc

from medlens.data.registry import Task
from medlens.metrics import classification as metrics_module
from medlens.metrics import (
    BOOTSTRAP_METRICS,
    METRICS_SCHEMA_VERSION,
    accuracy_score,
    bootstrap_ci,
    brier_loss,
    calibration,
    cohen_kappa_score,
    confusion_matrix,
    evaluate_scores,
    expected_calibration_error_loss,
    per_class_report,
    pr_curves,
    predicted_labels,
    roc_auc_score,
    roc_curves,
)
from helpers import single_line

METRICS = {"roc_auc_score": roc_auc_score, "accuracy_score": accuracy_score}
NUM_CLASSES = {Task.BINARY: 2, Task.MULTICLASS: 4, Task.ORDINAL: 5, Task.MULTILABEL: 3}


def reference_auc(y_true: np.ndarray, y_score: np.ndarray, task: Task) -> float:
    """``getAUC`` of the MedMNIST evaluator (medmnist/evaluator.py), transcribed."""
    y_true, y_score = y_true.squeeze(), y_score.squeeze()
    if task is Task.MULTILABEL:
        return sum(sk_auc(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])) / y_score.shape[1]
    if task is Task.BINARY:
        if y_score.ndim == 2:
            y_score = y_score[:, -1]
        return sk_auc(y_true, y_score)
    return sum(sk_auc((y_true == i).astype(float), y_score[:, i]) for i in range(y_score.shape[1])) / y_score.shape[1]


def reference_acc(y_true: np.ndarray, y_score: np.ndarray, task: Task, threshold: float = 0.5) -> float:
    """``getACC`` of the MedMNIST v2 evaluator, transcribed (multi-label: ``y_pre = y_score > threshold``;
    binary: ``y_score[:, -1] > threshold``; both strict)."""
    y_true, y_score = y_true.squeeze(), y_score.squeeze()
    if task is Task.MULTILABEL:
        y_pre = y_score > threshold
        return sum(sk_accuracy(y_true[:, i], y_pre[:, i]) for i in range(y_true.shape[1])) / y_true.shape[1]
    if task is Task.BINARY:
        if y_score.ndim == 2:
            y_score = y_score[:, -1]
        return sk_accuracy(y_true, y_score > threshold)
    return sk_accuracy(y_true, np.argmax(y_score, axis=-1))


def random_problem(task: Task, n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MedMNIST-shaped labels ((N, 1) ids, or (N, K) 0/1) with every class / both label values present,
    and probabilities (softmax rows, or sigmoids) that are informative but imperfect."""
    rng = np.random.default_rng(seed)
    k = NUM_CLASSES[task]
    if task.is_multilabel:
        y_true = (rng.random((n, k)) < 0.4).astype(np.uint8)
        y_true[0], y_true[1] = 1, 0
        logits = rng.normal(size=(n, k)) + 1.5 * y_true
        return y_true, 1 / (1 + np.exp(-logits))
    y_true = (np.arange(n) % k)[rng.permutation(n)].reshape(n, 1)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y_true[:, 0]] += 1.0
    scores = np.exp(logits)
    return y_true, scores / scores.sum(axis=1, keepdims=True)


def perfect_scores(y_true: np.ndarray, task: Task) -> np.ndarray:
    if task.is_multilabel:
        return y_true.astype(np.float64)
    return np.eye(NUM_CLASSES[task])[y_true.reshape(-1)]


# --- hand-computed values ---------------------------------------------------------------------


def test_binary_by_hand():
    y_true = np.array([0, 0, 1, 1])
    y_score = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    # positives .35, .8 vs negatives .1, .4: 3 of 4 pairs ordered right
    assert roc_auc_score(y_true, y_score, task=Task.BINARY) == pytest.approx(0.75, abs=1e-9)
    # predictions at > 0.5: 0, 0, 0, 1
    assert accuracy_score(y_true, y_score, task=Task.BINARY) == pytest.approx(0.75, abs=1e-9)
    assert accuracy_score(y_true, y_score, task=Task.BINARY, threshold=0.3) == pytest.approx(0.75, abs=1e-9)  # 0,1,1,1
    assert accuracy_score(y_true, y_score, task=Task.BINARY, threshold=0.05) == pytest.approx(0.5, abs=1e-9)


def test_ties_at_the_threshold_are_negative_for_binary_and_multilabel():
    y_true = np.array([[0], [1], [0]])
    y_score = np.full((3, 2), 0.5)
    assert roc_auc_score(y_true, y_score, task=Task.BINARY) == 0.5
    # 0.5 is not > 0.5: all 0
    assert accuracy_score(y_true, y_score, task=Task.BINARY) == pytest.approx(2 / 3, abs=1e-9)
    # getACC (v2), multi-label: y_score > threshold, so 0.5 predicts every label absent:
    # 4 of the 6 cells (the four 0s) are right
    y_true = np.array([[0, 1], [1, 0], [0, 0]])
    assert accuracy_score(y_true, np.full((3, 2), 0.5), task=Task.MULTILABEL) == pytest.approx(4 / 6, abs=1e-9)
    assert reference_acc(y_true, np.full((3, 2), 0.5), Task.MULTILABEL) == pytest.approx(4 / 6, abs=1e-9)


def test_binary_uses_only_the_last_column():
    y_true = np.array([0, 1, 0, 1])
    last = np.array([0.1, 0.9, 0.3, 0.7])
    unnormalised = np.stack([np.array([0.0, 5.0, -1.0, 2.0]), last], axis=1)  # first column is ignored
    assert roc_auc_score(y_true, unnormalised, task=Task.BINARY) == 1.0
    assert accuracy_score(y_true, unnormalised, task=Task.BINARY) == 1.0


@pytest.mark.parametrize("task", [Task.MULTICLASS, Task.ORDINAL])
def test_multiclass_by_hand(task):
    y_true = np.array([0, 1, 2, 2])
    y_score = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    # one-vs-rest: class 0 -> 1, class 1 -> 2/3 (.4 beats .2 and .1, not .5), class 2 -> 3.5/4 (a tie at .3)
    assert roc_auc_score(y_true, y_score, task=task) == pytest.approx((1 + 2 / 3 + 0.875) / 3, abs=1e-9)
    # argmax 0, 1, 1, 2
    assert accuracy_score(y_true, y_score, task=task) == pytest.approx(0.75, abs=1e-9)


def test_multilabel_by_hand():
    y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    y_score = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.4], [0.3, 0.7]])
    # label 0: 1.0; label 1: positives .6, .4 vs negatives .2, .7 -> 2 of 4 pairs
    assert roc_auc_score(y_true, y_score, task=Task.MULTILABEL) == pytest.approx(0.75, abs=1e-9)
    # label 0 all right, label 1 predicted 0, 1, 0, 1 vs 0, 1, 1, 0 -> 0.5
    assert accuracy_score(y_true, y_score, task=Task.MULTILABEL) == pytest.approx(0.75, abs=1e-9)


# --- the MedMNIST evaluator ------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_matches_the_medmnist_evaluator(task, seed):
    y_true, y_score = random_problem(task, seed=seed)
    assert roc_auc_score(y_true, y_score, task=task) == pytest.approx(reference_auc(y_true, y_score, task), abs=1e-12)
    assert accuracy_score(y_true, y_score, task=task) == pytest.approx(reference_acc(y_true, y_score, task), abs=1e-12)
    flat = y_true.reshape(-1) if not task.is_multilabel else y_true
    assert roc_auc_score(flat, y_score, task=task) == roc_auc_score(y_true, y_score, task=task)  # (N,) or (N, 1)


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_accepts_lists_and_integer_scores(task):
    y_true, y_score = random_problem(task, n=12)
    assert roc_auc_score(y_true.tolist(), y_score.tolist(), task=task) == roc_auc_score(y_true, y_score, task=task)
    hard = perfect_scores(y_true, task).astype(np.int64)
    assert accuracy_score(y_true, hard, task=task) == 1.0


def test_binary_single_column_score_matches_the_evaluator():
    y_true = np.array([0, 1, 1, 0, 1])
    y_score = np.array([[0.1], [0.8], [0.7], [0.3], [0.2]])
    task = Task.BINARY
    assert roc_auc_score(y_true, y_score, task=task) == pytest.approx(reference_auc(y_true, y_score, task), abs=1e-9)
    assert accuracy_score(y_true, y_score, task=task) == pytest.approx(reference_acc(y_true, y_score, task), abs=1e-9)


# --- perfect, reversed, undefined ------------------------------------------------------------


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_perfect_and_reversed_scores(task):
    y_true, _ = random_problem(task)
    perfect = perfect_scores(y_true, task)
    assert roc_auc_score(y_true, perfect, task=task) == 1.0
    assert accuracy_score(y_true, perfect, task=task) == 1.0
    assert roc_auc_score(y_true, 1.0 - perfect, task=task) == 0.0
    assert accuracy_score(y_true, 1.0 - perfect, task=task) == 0.0


@pytest.mark.parametrize("value", [0, 1])
def test_binary_with_one_class_has_no_auc(value):
    y_true = np.full(5, value)
    y_score = np.random.default_rng(0).dirichlet([1, 1], size=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # undefined is decided before scikit-learn is asked, without a warning
        assert math.isnan(roc_auc_score(y_true, y_score, task=Task.BINARY))
    assert 0.0 <= accuracy_score(y_true, y_score, task=Task.BINARY) <= 1.0  # accuracy is still defined


def test_multiclass_leaves_an_absent_class_out_of_the_mean():
    y_true = np.array([0, 1, 0, 1])  # class 2 never occurs
    y_score = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.3, 0.6]])
    expected = np.mean([sk_auc(y_true == k, y_score[:, k]) for k in (0, 1)])
    assert roc_auc_score(y_true, y_score, task=Task.MULTICLASS) == pytest.approx(expected, abs=1e-9)


def test_multilabel_leaves_a_constant_label_out_of_the_mean():
    y_true = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # labels 1 and 2 are constant
    y_score = np.array([[0.9, 0.5, 0.5], [0.1, 0.5, 0.5], [0.4, 0.5, 0.5], [0.6, 0.5, 0.5]])
    expected = sk_auc(y_true[:, 0], y_score[:, 0])
    assert roc_auc_score(y_true, y_score, task=Task.MULTILABEL) == pytest.approx(expected, abs=1e-9)
    assert math.isnan(roc_auc_score(y_true[:, 1:], y_score[:, 1:], task=Task.MULTILABEL))


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_empty_input_is_nan(name, task):
    k = NUM_CLASSES[task]
    y_true = np.zeros((0, k) if task.is_multilabel else (0,), dtype=np.int64)
    assert math.isnan(METRICS[name](y_true, np.zeros((0, k)), task=task))


# --- shape errors ----------------------------------------------------------------------------

SHAPE_ERRORS = [
    ("score_1d", Task.BINARY, np.array([0, 1, 1]), np.array([0.1, 0.8, 0.7])),
    ("score_3d", Task.MULTICLASS, np.array([0, 1]), np.zeros((2, 3, 1))),
    ("fewer_scores", Task.MULTICLASS, np.array([0, 1, 2]), np.full((2, 3), 1 / 3)),
    ("more_scores", Task.BINARY, np.array([0, 1]), np.full((3, 2), 0.5)),
    ("multilabel_true_1d", Task.MULTILABEL, np.array([0, 1, 1]), np.full((3, 2), 0.5)),
    ("multilabel_labels_differ", Task.MULTILABEL, np.array([[0, 1, 1], [1, 0, 1]]), np.full((2, 2), 0.5)),
    ("one_hot_true", Task.MULTICLASS, np.eye(3)[[0, 1, 2, 1]], np.full((4, 3), 1 / 3)),
]


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("case, task, y_true, y_score", SHAPE_ERRORS, ids=[c[0] for c in SHAPE_ERRORS])
def test_shape_errors_raise_value_error(name, case, task, y_true, y_score):
    with pytest.raises(ValueError):
        METRICS[name](y_true, y_score, task=task)


@pytest.mark.parametrize("name", list(METRICS))
def test_shape_error_message_gives_the_shapes(name):
    with pytest.raises(ValueError) as info:
        METRICS[name](np.array([0, 1, 2]), np.full((2, 3), 1 / 3), task=Task.MULTICLASS)
    message = single_line(info.value)
    assert "(2, 3)" in message and "3" in message


def test_one_hot_true_for_a_single_row_is_an_error():
    with pytest.raises(ValueError, match="y_true"):
        accuracy_score(np.array([[0, 1, 0]]), np.array([[0.2, 0.7, 0.1]]), task=Task.MULTICLASS)


@pytest.mark.parametrize("name", list(METRICS))
def test_task_is_keyword_only(name):
    y_true, y_score = random_problem(Task.BINARY, n=6)
    with pytest.raises(TypeError):
        METRICS[name](y_true, y_score, Task.BINARY)


# --- properties shared by both metrics on every task (scikit-learn's test_common) ------------


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_common_properties(name, task):
    metric = METRICS[name]
    assert name.endswith("_score")  # higher is better
    values = []
    for seed in range(4):
        y_true, y_score = random_problem(task, n=30, seed=seed)
        value = metric(y_true, y_score, task=task)
        assert isinstance(value, float)
        assert 0.0 <= value <= 1.0
        order = np.random.default_rng(seed + 100).permutation(len(y_true))
        assert metric(y_true[order], y_score[order], task=task) == pytest.approx(value, abs=1e-12)
        assert metric(y_true, perfect_scores(y_true, task), task=task) == 1.0 >= value
        values.append(value)
    assert len(set(values)) > 1  # the random problems are not all the same (the checks above can fail)
    y_true, y_score = random_problem(task, n=30)
    y_true_copy, y_score_copy = y_true.copy(), y_score.copy()
    metric(y_true, y_score, task=task)
    assert np.array_equal(y_true, y_true_copy) and np.array_equal(y_score, y_score_copy)  # pure: inputs untouched


# --- the official metrics with a one-column binary score, by hand ----------------------------


def test_binary_one_column_by_hand():
    y_true = np.array([0, 1, 1, 0, 1])
    sigmoid = np.array([[0.1], [0.8], [0.7], [0.3], [0.2]])
    # positives .8, .7, .2 vs negatives .1, .3: 6 pairs, only (.2, .3) ordered wrong -> 5/6
    assert roc_auc_score(y_true, sigmoid, task=Task.BINARY) == pytest.approx(5 / 6, abs=1e-9)
    # > 0.5: 0, 1, 1, 0, 0 -> the last one wrong -> 4/5
    assert accuracy_score(y_true, sigmoid, task=Task.BINARY) == pytest.approx(4 / 5, abs=1e-9)
    softmax = np.hstack([1 - sigmoid, sigmoid])  # the same scores as two columns give the same numbers
    assert roc_auc_score(y_true, softmax, task=Task.BINARY) == pytest.approx(5 / 6, abs=1e-9)
    assert accuracy_score(y_true, softmax, task=Task.BINARY) == pytest.approx(4 / 5, abs=1e-9)


def test_predicted_labels_follow_the_evaluator_rule():
    # binary: strictly above the threshold; the first column is not looked at
    assert predicted_labels(np.array([[0.9, 0.5], [0.0, 0.51], [0.3]][:2]), task=Task.BINARY).tolist() == [0, 1]
    assert predicted_labels(np.array([[0.5], [0.7]]), task=Task.BINARY, threshold=0.6).tolist() == [0, 1]
    # multi-label: strictly above the threshold, as binary
    assert predicted_labels(np.array([[0.5, 0.51, 0.9]]), task=Task.MULTILABEL).tolist() == [[0, 1, 1]]
    # multi-class: argmax, the first column on ties, the threshold ignored
    scores = np.array([[0.4, 0.4, 0.2], [0.1, 0.3, 0.6]])
    assert predicted_labels(scores, task=Task.MULTICLASS, threshold=0.99).tolist() == [0, 2]
    assert predicted_labels(np.zeros((0, 3)), task=Task.ORDINAL).shape == (0,)


# --- per-class report and kappa, by hand ----------------------------------------------------

# y_true 0, 0, 1, 1, 2, 2 predicted (argmax) 0, 1, 1, 1, 2, 0
# confusion (rows true): [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
THREE_TRUE = np.array([0, 0, 1, 1, 2, 2])
THREE_SCORE = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
                        [0.3, 0.5, 0.2], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])


@pytest.mark.parametrize("task", [Task.MULTICLASS, Task.ORDINAL], ids=lambda t: t.value)
def test_per_class_report_multiclass_by_hand(task):
    report = per_class_report(THREE_TRUE, THREE_SCORE, task=task, class_names=["a", "b", "c"])
    # class 0: TP 1, FP 1 (a true 2), FN 1, TN 3 -> P 1/2, R 1/2, spec 3/4, F1 2/(2+1+1) = 1/2
    # class 1: TP 2, FP 1, FN 0, TN 3          -> P 2/3, R 1,   spec 3/4, F1 4/(4+1)   = 4/5
    # class 2: TP 1, FP 0, FN 1, TN 4          -> P 1,   R 1/2, spec 1,   F1 2/(2+1)   = 2/3
    expected = [("a", 1 / 2, 1 / 2, 3 / 4, 1 / 2), ("b", 2 / 3, 1.0, 3 / 4, 4 / 5), ("c", 1.0, 1 / 2, 1.0, 2 / 3)]
    for row, (name, precision, recall, specificity, f1) in zip(report["classes"], expected, strict=True):
        assert row["name"] == name and row["support"] == 2
        assert (row["precision"], row["recall"], row["specificity"], row["f1"]) == pytest.approx(
            (precision, recall, specificity, f1), abs=1e-9)
    # macro: P (1/2 + 2/3 + 1) / 3 = 13/18, R 2/3, spec (3/4 + 3/4 + 1) / 3 = 5/6, F1 (1/2 + 4/5 + 2/3) / 3 = 59/90;
    # every support is 2, so weighted = macro
    for average in ("macro", "weighted"):
        got = report[average]
        assert (got["precision"], got["recall"], got["specificity"], got["f1"]) == pytest.approx(
            (13 / 18, 2 / 3, 5 / 6, 59 / 90), abs=1e-9)
    assert report["balanced_accuracy"] == pytest.approx(2 / 3, abs=1e-9)  # mean recall
    if task is Task.MULTICLASS:
        # plain: po = 4/6; row sums 2, 2, 2, column sums 2, 3, 1 -> pe = (4 + 6 + 2) / 36 = 1/3;
        # kappa = (2/3 - 1/3) / (1 - 1/3) = 1/2
        assert report["kappa_weights"] == "none"
        assert report["kappa"] == pytest.approx(1 / 2, abs=1e-9)
    else:
        # quadratic: sum w*O = 1 * O[0,1] + 4 * O[2,0] = 5; E[i, j] = 2 * c_j / 6 = c_j / 3, and
        # sum_i (i - j)^2 = 5, 2, 5 for j = 0, 1, 2 -> sum w*E = (2*5 + 3*2 + 1*5) / 3 = 7; kappa = 1 - 5/7 = 2/7
        assert report["kappa_weights"] == "quadratic"
        assert report["kappa"] == pytest.approx(2 / 7, abs=1e-9)
    assert cohen_kappa_score(THREE_TRUE, THREE_SCORE, task=task) == report["kappa"]


def test_per_class_report_binary_one_column_by_hand():
    y_true = np.array([0, 0, 0, 1, 1])
    y_score = np.array([[0.2], [0.6], [0.4], [0.7], [0.3]])  # > 0.5: 0, 1, 0, 1, 0
    report = per_class_report(y_true, y_score, task=Task.BINARY, class_names=["benign", "malignant"])
    # class 0: TP 2, FP 1 (row 4), FN 1 (row 1), TN 1 -> P 2/3, R 2/3, spec 1/2, F1 4/6 = 2/3, support 3
    # class 1: TP 1, FP 1, FN 1, TN 2                -> P 1/2, R 1/2, spec 2/3, F1 1/2,       support 2
    negative, positive = report["classes"]
    assert (negative["name"], negative["support"], positive["name"], positive["support"]) == ("benign", 3,
                                                                                              "malignant", 2)
    assert (negative["precision"], negative["recall"], negative["specificity"], negative["f1"]) == pytest.approx(
        (2 / 3, 2 / 3, 1 / 2, 2 / 3), abs=1e-9)
    assert (positive["precision"], positive["recall"], positive["specificity"], positive["f1"]) == pytest.approx(
        (1 / 2, 1 / 2, 2 / 3, 1 / 2), abs=1e-9)
    # macro: every value (2/3 + 1/2) / 2 = 7/12; weighted by 3 and 2: P, R, F1 (3 * 2/3 + 2 * 1/2) / 5 = 3/5,
    # spec (3 * 1/2 + 2 * 2/3) / 5 = 17/30
    macro, weighted = report["macro"], report["weighted"]
    assert list(macro.values()) == pytest.approx([7 / 12] * 4, abs=1e-9)
    assert (weighted["precision"], weighted["recall"], weighted["specificity"], weighted["f1"]) == pytest.approx(
        (3 / 5, 3 / 5, 17 / 30, 3 / 5), abs=1e-9)
    assert report["balanced_accuracy"] == pytest.approx(7 / 12, abs=1e-9)
    # po = 3/5; rows 3, 2 and predictions 3, 2 -> pe = (9 + 4) / 25; kappa = (15 - 13) / (25 - 13) = 1/6
    assert report["kappa"] == pytest.approx(1 / 6, abs=1e-9)
    assert report["kappa_weights"] == "none"


def test_per_class_report_multilabel_by_hand():
    y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    y_score = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.4], [0.3, 0.7]])
    report = per_class_report(y_true, y_score, task=Task.MULTILABEL)
    # label 0 predicted 1, 0, 1, 0: all right. label 1 predicted 0, 1, 0, 1 vs 0, 1, 1, 0: TP 1, FP 1, FN 1, TN 1
    first, second = report["classes"]
    assert [first[key] for key in ("precision", "recall", "specificity", "f1")] == [1.0, 1.0, 1.0, 1.0]
    assert [second[key] for key in ("precision", "recall", "specificity", "f1")] == pytest.approx([0.5] * 4)
    assert (first["name"], first["support"], second["name"], second["support"]) == ("0", 2, "1", 2)
    assert list(report["macro"].values()) == pytest.approx([0.75] * 4, abs=1e-9)
    assert report["balanced_accuracy"] == pytest.approx(0.75, abs=1e-9)  # (1 + 1/2) / 2
    # label 0: kappa 1; label 1: po = 1/2, pe = (2*2 + 2*2) / 16 = 1/2 -> 0; mean 1/2, plain weights
    assert report["kappa"] == pytest.approx(0.5, abs=1e-9)
    assert report["kappa_weights"] == "none"


def test_undefined_values_are_nan_without_warnings():
    y_true = np.array([0, 1, 0, 1])  # class 2 is never true and never predicted
    y_score = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1]])  # 0, 1, 1, 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = per_class_report(y_true, y_score, task=Task.MULTICLASS)
        normalized = confusion_matrix(y_true, y_score, task=Task.MULTICLASS, normalize="true")
    absent = report["classes"][2]
    assert math.isnan(absent["precision"]) and math.isnan(absent["recall"]) and math.isnan(absent["f1"])
    assert absent["specificity"] == 1.0 and absent["support"] == 0  # TN 4 of 4 negatives
    # the NaN class is left out of the averages: P (1/1 + 2/3) / 2 = 5/6, F1 (2/3 + 4/5) / 2 = 11/15
    assert report["macro"]["precision"] == pytest.approx(5 / 6, abs=1e-9)
    assert report["macro"]["f1"] == pytest.approx(11 / 15, abs=1e-9)
    assert report["balanced_accuracy"] == pytest.approx(0.75, abs=1e-9)  # recalls 1/2 and 1
    assert np.isnan(normalized[2]).all() and normalized[:2].tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_one_class_only_gives_nan_not_warnings(task):
    k = NUM_CLASSES[task]
    y_true = np.zeros((8, k) if task.is_multilabel else 8, dtype=np.int64)
    y_score = np.full((8, k), 0.3 if task.is_multilabel else 1 / k)
    names = [f"c{i}" for i in range(k)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate_scores(y_true, y_score, task=task, class_names=names, n_bootstrap=50,)
        kappa = cohen_kappa_score(y_true, y_score, task=task)
    assert math.isnan(result["auc"]) and math.isnan(kappa)
    assert result["ci"]["auc"]["n_resamples"] == 0 and math.isnan(result["ci"]["auc"]["lower"])
    assert all(curve["fpr"] == [] and math.isnan(curve["auc"]) for curve in result["roc"])
    assert all(curve["recall"] == [] and math.isnan(curve["average_precision"]) for curve in result["pr"])


# --- confusion matrices ---------------------------------------------------------------------


@pytest.mark.parametrize("task", [Task.MULTICLASS, Task.ORDINAL], ids=lambda t: t.value)
def test_confusion_matrix_single_label_by_hand(task):
    counts = confusion_matrix(THREE_TRUE, THREE_SCORE, task=task)
    assert counts.dtype == np.int64
    assert counts.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows true, columns predicted
    normalized = confusion_matrix(THREE_TRUE, THREE_SCORE, task=task, normalize="true")
    assert normalized.tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]


def test_confusion_matrix_binary_one_and_two_columns():
    y_true = np.array([0, 0, 0, 1, 1])
    sigmoid = np.array([[0.2], [0.6], [0.4], [0.7], [0.3]])  # predicted 0, 1, 0, 1, 0
    expected = [[2, 1], [1, 1]]
    assert confusion_matrix(y_true, sigmoid, task=Task.BINARY).tolist() == expected
    assert confusion_matrix(y_true, np.hstack([1 - sigmoid, sigmoid]), task=Task.BINARY).tolist() == expected


def test_confusion_matrix_multilabel_by_hand():
    y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    y_score = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.4], [0.3, 0.7]])
    counts = confusion_matrix(y_true, y_score, task=Task.MULTILABEL)
    assert counts.shape == (2, 2, 2)
    assert counts.tolist() == [[[2, 0], [0, 2]], [[1, 1], [1, 1]]]  # per label [[TN, FP], [FN, TP]]
    normalized = confusion_matrix(y_true, y_score, task=Task.MULTILABEL, normalize="true")
    assert normalized.tolist() == [[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [0.5, 0.5]]]


# --- ROC and precision-recall curves -----------------------------------------------------------


def test_binary_curves_by_hand():
    y_true = np.array([0, 0, 1, 1])
    y_score = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    roc, = roc_curves(y_true, y_score, task=Task.BINARY, class_names=["no", "yes"])
    # descending thresholds .8 (TP 1, FP 0), .4 (1, 1), .35 (2, 1), .1 (2, 2), after the empty start
    assert (roc["name"], roc["index"]) == ("yes", 1)
    assert roc["fpr"] == pytest.approx([0, 0, 0.5, 0.5, 1], abs=1e-9)
    assert roc["tpr"] == pytest.approx([0, 0.5, 0.5, 1, 1], abs=1e-9)
    assert roc["thresholds"] == pytest.approx([1.8, 0.8, 0.4, 0.35, 0.1], abs=1e-9)  # max score + 1 first
    assert roc["auc"] == pytest.approx(0.75, abs=1e-9)
    pr, = pr_curves(y_true, y_score, task=Task.BINARY, class_names=["no", "yes"])
    # ascending thresholds .1 (P 2/4, R 1), .35 (2/3, 1), .4 (1/2, 1/2), .8 (1, 1/2), then (1, 0)
    assert pr["precision"] == pytest.approx([1 / 2, 2 / 3, 1 / 2, 1, 1], abs=1e-9)
    assert pr["recall"] == pytest.approx([1, 1, 0.5, 0.5, 0], abs=1e-9)
    assert pr["thresholds"] == pytest.approx([0.1, 0.35, 0.4, 0.8], abs=1e-9)
    # AP = sum of recall steps times precision: .5 * 1 + .5 * 2/3 = 5/6
    assert pr["average_precision"] == pytest.approx(5 / 6, abs=1e-9)


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_curves_per_class_agree_with_the_auc(task):
    y_true, y_score = random_problem(task, n=40, seed=4)
    roc, pr = roc_curves(y_true, y_score, task=task), pr_curves(y_true, y_score, task=task)
    expected = 1 if task is Task.BINARY else NUM_CLASSES[task]
    assert len(roc) == len(pr) == expected
    assert [c["index"] for c in roc] == ([1] if task is Task.BINARY else list(range(expected)))
    assert np.mean([c["auc"] for c in roc]) == pytest.approx(roc_auc_score(y_true, y_score, task=task), abs=1e-12)
    for curve in roc:
        assert all(isinstance(v, float) and math.isfinite(v) for key in ("fpr", "tpr", "thresholds")
                   for v in curve[key])
        assert curve["thresholds"][0] > y_score.max()
        assert np.trapezoid(curve["tpr"], curve["fpr"]) == pytest.approx(curve["auc"], abs=1e-12)
    for curve in pr:
        assert len(curve["precision"]) == len(curve["recall"]) == len(curve["thresholds"]) + 1


def test_a_class_without_positives_gets_empty_curves():
    y_true = np.array([0, 1, 0, 1])  # class 2 absent
    y_score = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.3, 0.6]])
    roc = roc_curves(y_true, y_score, task=Task.MULTICLASS, class_names=["a", "b", "c"])
    pr = pr_curves(y_true, y_score, task=Task.MULTICLASS, class_names=["a", "b", "c"])
    assert [c["name"] for c in roc] == ["a", "b", "c"]
    assert roc[2]["fpr"] == roc[2]["tpr"] == roc[2]["thresholds"] == [] and math.isnan(roc[2]["auc"])
    assert pr[2]["precision"] == pr[2]["recall"] == [] and math.isnan(pr[2]["average_precision"])
    assert roc[0]["fpr"] and not math.isnan(roc[0]["auc"])


# --- calibration --------------------------------------------------------------------------------


def test_calibration_multiclass_by_hand():
    y_true = np.array([0, 1, 2, 0])
    y_score = np.array([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.5, 0.1, 0.4], [0.7, 0.2, 0.1]])
    # top-label confidence .9 (right), .6 (right), .5 (wrong: predicted 0), .7 (right); 5 bins of width .2:
    # (.4, .6] holds .6 and .5: conf .55, acc .5; (.6, .8] holds .7: acc 1; (.8, 1] holds .9: acc 1
    # ECE = 2/4 * .05 + 1/4 * .3 + 1/4 * .1 = .125
    result = calibration(y_true, y_score, task=Task.MULTICLASS, n_bins=5)
    assert result["ece"] == pytest.approx(0.125, abs=1e-9)
    assert expected_calibration_error_loss(y_true, y_score, task=Task.MULTICLASS, n_bins=5) == result["ece"]
    # Brier rows: .01 + .0025 + .0025 = .015; .09 + .16 + .01 = .26; .25 + .01 + .36 = .62; .09 + .04 + .01 = .14
    assert result["brier"] == pytest.approx((0.015 + 0.26 + 0.62 + 0.14) / 4, abs=1e-9)
    bins = result["bins"]
    assert [b["count"] for b in bins] == [0, 0, 2, 1, 1]
    assert [b["lower"] for b in bins] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8], abs=1e-9)
    assert [b["upper"] for b in bins] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0], abs=1e-9)
    assert math.isnan(bins[0]["confidence"]) and math.isnan(bins[1]["accuracy"])  # empty bins
    assert (bins[2]["confidence"], bins[2]["accuracy"]) == pytest.approx((0.55, 0.5), abs=1e-9)
    assert (bins[4]["confidence"], bins[4]["accuracy"]) == pytest.approx((0.9, 1.0), abs=1e-9)


def test_calibration_binary_one_and_two_columns_by_hand():
    y_true = np.array([0, 1, 1, 0])
    p = np.array([0.2, 0.7, 0.4, 0.9])  # predicted 0, 1, 0, 1; top-label confidence .8, .7, .6, .9
    sigmoid, softmax = p[:, None], np.stack([1 - p, p], axis=1)
    for scores in (sigmoid, softmax):
        # 2 bins: all four confidences in (.5, 1]: conf .75, right 2 of 4 -> ECE .25
        assert expected_calibration_error_loss(y_true, scores, task=Task.BINARY, n_bins=2) == pytest.approx(
            0.25, abs=1e-9)
    # (p - y)^2: .04, .09, .36, .81 -> 1.3 / 4; the two-column one-hot form counts each sample twice
    assert brier_loss(y_true, sigmoid, task=Task.BINARY) == pytest.approx(0.325, abs=1e-9)
    assert brier_loss(y_true, softmax, task=Task.BINARY) == pytest.approx(0.65, abs=1e-9)


def test_calibration_multilabel_by_hand():
    y_true = np.array([[1, 0], [0, 1]])
    y_score = np.array([[0.8, 0.3], [0.1, 0.9]])
    # cells (.8, 1), (.3, 0), (.1, 0), (.9, 1); 2 bins: [0, .5] conf .2 acc 0, (.5, 1] conf .85 acc 1
    # ECE = 2/4 * .2 + 2/4 * .15 = .175; Brier (.04 + .09 + .01 + .01) / 4 = .0375
    result = calibration(y_true, y_score, task=Task.MULTILABEL, n_bins=2)
    assert result["ece"] == pytest.approx(0.175, abs=1e-9)
    assert result["brier"] == pytest.approx(0.0375, abs=1e-9)
    assert [(b["count"], b["accuracy"]) for b in result["bins"]] == [(2, 0.0), (2, 1.0)]


def test_a_confidence_of_zero_falls_in_the_first_bin():
    result = calibration(np.array([[0], [1]]), np.array([[0.0], [1.0]]), task=Task.MULTILABEL, n_bins=4)
    assert [b["count"] for b in result["bins"]] == [1, 0, 0, 1]
    assert result["ece"] == 0.0


def test_calibration_needs_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]") as info:
        brier_loss(np.array([0, 1]), np.array([[0.2], [1.5]]), task=Task.BINARY)
    assert "1.5" in single_line(info.value)
    with pytest.raises(ValueError, match="sum to 1") as info:
        calibration(np.array([0, 1]), np.array([[0.2, 0.2, 0.2], [0.1, 0.8, 0.1]]), task=Task.MULTICLASS)
    assert "row 0" in single_line(info.value)


# --- bootstrap confidence intervals -------------------------------------------------------------

PUBLIC_BOOTSTRAP = {
    "acc": accuracy_score,
    "auc": roc_auc_score,
    "macro_f1": lambda y_true, y_score, *, task: metrics_module.f1_score(y_true, y_score, task=task,
                                                                         average="macro"),
    "balanced_accuracy": metrics_module.balanced_accuracy_score,
    "kappa": cohen_kappa_score,
    "brier": brier_loss,
    "ece": expected_calibration_error_loss,
}


def test_every_bootstrap_metric_has_a_public_twin():
    assert set(PUBLIC_BOOTSTRAP) == set(BOOTSTRAP_METRICS)


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_resampled_metrics_equal_the_metric_on_the_resampled_data(task):
    """The vectorised resample scoring (counts per sample) gives what each metric gives on the drawn data."""
    y_true, y_score = random_problem(task, n=30, seed=3)
    y_true = y_true if task.is_multilabel else y_true.reshape(-1)
    y_score[10:20] = y_score[:10]  # tied scores across samples of different classes (AUC counts ties 1/2)
    counts = np.random.default_rng(5).integers(0, 3, size=(6, 30)).astype(np.float64)
    counts[0] = 1.0  # the full data once
    resampled = metrics_module._resampled_values(y_true.astype(np.int64), y_score, task, BOOTSTRAP_METRICS, counts)
    for name, metric in PUBLIC_BOOTSTRAP.items():
        for row, value in zip(counts.astype(np.int64), resampled[name], strict=True):
            drawn = np.repeat(np.arange(30), row)
            expected = metric(y_true[drawn], y_score[drawn], task=task)
            assert value == pytest.approx(expected, abs=1e-12, nan_ok=True), (name, row)


def test_bootstrap_is_deterministic_for_a_seed_and_brackets_the_value():
    y_true, y_score = random_problem(Task.MULTICLASS, n=80, seed=1)
    first = bootstrap_ci(y_true, y_score, task=Task.MULTICLASS, n_resamples=300, seed=7)
    assert bootstrap_ci(y_true, y_score, task=Task.MULTICLASS, n_resamples=300, seed=7) == first
    other = bootstrap_ci(y_true, y_score, task=Task.MULTICLASS, n_resamples=300, seed=8)
    assert other != first  # the seed matters
    assert set(first) == {"acc", "auc", "macro_f1"}
    assert first["acc"]["value"] == accuracy_score(y_true, y_score, task=Task.MULTICLASS)
    assert first["auc"]["value"] == roc_auc_score(y_true, y_score, task=Task.MULTICLASS)
    assert first["macro_f1"]["value"] == per_class_report(y_true, y_score, task=Task.MULTICLASS)["macro"]["f1"]
    for entry in first.values():
        assert entry["lower"] < entry["value"] < entry["upper"]
        assert entry["n_resamples"] == 300


def test_stratified_bootstrap_never_loses_a_class_of_two():
    # Plain resampling of 40 would miss both positives in (38/40)^40 = 13% of resamples (NaN AUC, dropped).
    y_true = np.zeros(40, dtype=np.int64)
    y_true[[5, 17]] = 1
    y_score = np.random.default_rng(0).dirichlet([1, 1], size=40)
    ci = bootstrap_ci(y_true, y_score, task=Task.BINARY, metrics=("auc",), n_resamples=1000)
    assert ci["auc"]["n_resamples"] == 1000
    # multi-label: the combination [1] seen twice is a stratum of its own, so the label keeps both positives
    ci = bootstrap_ci(y_true[:, None], y_score[:, 1:], task=Task.MULTILABEL, metrics=("auc",), n_resamples=1000)
    assert ci["auc"]["n_resamples"] == 1000


def test_multilabel_with_every_combination_unique_resamples_everything():
    # 8 rows, 8 different label combinations: per-combination strata would redraw the same data every time
    y_true = np.array([[(i >> bit) & 1 for bit in range(3)] for i in range(8)])
    y_score = np.random.default_rng(2).random((8, 3))
    ci = bootstrap_ci(y_true, y_score, task=Task.MULTILABEL, metrics=("acc",), n_resamples=200)
    assert ci["acc"]["lower"] < ci["acc"]["upper"]


def test_bootstrap_interval_narrows_with_more_data():
    small = bootstrap_ci(*random_problem(Task.BINARY, n=100, seed=0), task=Task.BINARY, n_resamples=400)
    large = bootstrap_ci(*random_problem(Task.BINARY, n=1600, seed=0), task=Task.BINARY, n_resamples=400)
    for name in ("acc", "auc", "macro_f1"):
        assert large[name]["upper"] - large[name]["lower"] < 0.6 * (small[name]["upper"] - small[name]["lower"])


def test_bootstrap_of_600_samples_is_fast():
    y_true, y_score = random_problem(Task.MULTICLASS, n=600, seed=0)
    start = time.perf_counter()
    bootstrap_ci(y_true, y_score, task=Task.MULTICLASS, n_resamples=1000)
    assert time.perf_counter() - start < 2.0


def test_bootstrap_options_are_checked():
    y_true, y_score = random_problem(Task.BINARY, n=10)
    with pytest.raises(ValueError, match="acc, auc") as info:
        bootstrap_ci(y_true, y_score, task=Task.BINARY, metrics=("acc", "sensitivity"))
    assert "sensitivity" in single_line(info.value)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(y_true, y_score, task=Task.BINARY, n_resamples=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(y_true, y_score, task=Task.BINARY, level=95)


# --- options of the reports ---------------------------------------------------------------------


def test_report_options_are_checked():
    with pytest.raises(ValueError, match="class_names") as info:
        per_class_report(THREE_TRUE, THREE_SCORE, task=Task.MULTICLASS, class_names=["a", "b"])
    assert "3 classes" in single_line(info.value)
    with pytest.raises(ValueError, match="2 classes"):
        roc_curves(np.array([0, 1]), np.array([[0.3], [0.6]]), task=Task.BINARY, class_names=["only"])
    with pytest.raises(ValueError, match="normalize"):
        confusion_matrix(THREE_TRUE, THREE_SCORE, task=Task.MULTICLASS, normalize="all")
    with pytest.raises(ValueError, match="n_bins"):
        calibration(THREE_TRUE, THREE_SCORE, task=Task.MULTICLASS, n_bins=0)
    with pytest.raises(ValueError, match="average"):
        metrics_module.f1_score(THREE_TRUE, THREE_SCORE, task=Task.MULTICLASS, average="micro")
    with pytest.raises(ValueError, match="threshold"):
        predicted_labels(THREE_SCORE[:, :2], task=Task.BINARY, threshold=float("nan"))
    with pytest.raises(ValueError, match="unknown task"):
        accuracy_score(THREE_TRUE, THREE_SCORE, task="regression")


# --- evaluate_scores ----------------------------------------------------------------------------


def same(first, second) -> bool:
    """Equal as JSON, so NaN equals NaN (``==`` on dicts holding NaN is False)."""
    return json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def _assert_json_ready(value, where="result"):
    """Only dicts with string keys, lists, str, int, float (NaN allowed): no numpy types, no tuples."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), where
            _assert_json_ready(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _assert_json_ready(item, f"{where}[{i}]")
    else:
        assert type(value) in (str, int, float), f"{where} is {type(value)}"
        assert not (isinstance(value, float) and math.isinf(value)), where


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_evaluate_scores_holds_everything_json_ready(task):
    y_true, y_score = random_problem(task, n=60, seed=2)
    names = [f"class {i}" for i in range(NUM_CLASSES[task])]
    result = evaluate_scores(y_true, y_score, task=task, class_names=names, n_bootstrap=100, seed=3)
    _assert_json_ready(result)
    json.dumps(result)
    ordinal = {"ordinal"} if task is Task.ORDINAL else set()
    assert set(result) == {"schema_version", "n", "task", "acc", "auc", "ci", "per_class", "confusion", "roc", "pr",
                           "calibration", *ordinal}
    if ordinal:
        from sklearn.metrics import cohen_kappa_score as sk_kappa

        predicted = y_score.argmax(axis=1)
        truth = np.asarray(y_true).reshape(-1)
        assert result["ordinal"]["mean_absolute_grade_error"] == pytest.approx(np.abs(predicted - truth).mean())
        assert result["ordinal"]["quadratic_kappa"] == pytest.approx(sk_kappa(truth, predicted, weights="quadratic"))
    assert result["schema_version"] == METRICS_SCHEMA_VERSION == 2
    assert (result["n"], result["task"]) == (60, task.value)
    assert result["acc"] == accuracy_score(y_true, y_score, task=task)
    assert result["auc"] == roc_auc_score(y_true, y_score, task=task)
    assert same(result["ci"], bootstrap_ci(y_true, y_score, task=task, n_resamples=100, seed=3))
    assert same(result["per_class"], per_class_report(y_true, y_score, task=task, class_names=names))
    assert [c["name"] for c in result["per_class"]["classes"]] == names
    assert result["confusion"]["counts"] == confusion_matrix(y_true, y_score, task=task).tolist()
    assert np.allclose(result["confusion"]["normalized"],
                       confusion_matrix(y_true, y_score, task=task, normalize="true"), equal_nan=True)
    assert same(result["calibration"], calibration(y_true, y_score, task=task))
    assert len(result["roc"]) == len(result["pr"]) == (1 if task is Task.BINARY else NUM_CLASSES[task])
    skipped = evaluate_scores(y_true, y_score, task=task, class_names=names, n_bootstrap=0)
    assert skipped["ci"] == {}
    with pytest.raises(ValueError, match="n_bootstrap"):
        evaluate_scores(y_true, y_score, task=task, class_names=names, n_bootstrap=-1)
