"""Unit tests for medlens.evaluate.metrics: the official MedMNIST ACC and AUC on every task."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score as sk_accuracy
from sklearn.metrics import roc_auc_score as sk_auc

from medlens.data.registry import Task
from medlens.evaluate.metrics import accuracy_score, roc_auc_score
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
    """``getACC`` of the MedMNIST evaluator, transcribed."""
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
    assert roc_auc_score(y_true, y_score, task=Task.BINARY) == pytest.approx(0.75)
    # predictions at > 0.5: 0, 0, 0, 1
    assert accuracy_score(y_true, y_score, task=Task.BINARY) == pytest.approx(0.75)
    assert accuracy_score(y_true, y_score, task=Task.BINARY, threshold=0.3) == pytest.approx(0.75)  # 0,1,1,1
    assert accuracy_score(y_true, y_score, task=Task.BINARY, threshold=0.05) == pytest.approx(0.5)


def test_binary_ties_and_the_threshold_is_strict():
    y_true = np.array([[0], [1], [0]])
    y_score = np.full((3, 2), 0.5)
    assert roc_auc_score(y_true, y_score, task=Task.BINARY) == 0.5
    assert accuracy_score(y_true, y_score, task=Task.BINARY) == pytest.approx(2 / 3)  # 0.5 is not > 0.5: all 0
    y_true = np.array([[0, 1], [1, 0], [0, 0]])
    assert accuracy_score(y_true, np.full((3, 2), 0.5), task=Task.MULTILABEL) == pytest.approx(4 / 6)


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
    assert roc_auc_score(y_true, y_score, task=task) == pytest.approx((1 + 2 / 3 + 0.875) / 3)
    # argmax 0, 1, 1, 2
    assert accuracy_score(y_true, y_score, task=task) == pytest.approx(0.75)


def test_multilabel_by_hand():
    y_true = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    y_score = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.4], [0.3, 0.7]])
    # label 0: 1.0; label 1: positives .6, .4 vs negatives .2, .7 -> 2 of 4 pairs
    assert roc_auc_score(y_true, y_score, task=Task.MULTILABEL) == pytest.approx(0.75)
    # label 0 all right, label 1 predicted 0, 1, 0, 1 vs 0, 1, 1, 0 -> 0.5
    assert accuracy_score(y_true, y_score, task=Task.MULTILABEL) == pytest.approx(0.75)


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
    assert roc_auc_score(y_true, y_score, task=task) == pytest.approx(reference_auc(y_true, y_score, task))
    assert accuracy_score(y_true, y_score, task=task) == pytest.approx(reference_acc(y_true, y_score, task))


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
    assert roc_auc_score(y_true, y_score, task=Task.MULTICLASS) == pytest.approx(expected)


def test_multilabel_leaves_a_constant_label_out_of_the_mean():
    y_true = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])  # labels 1 and 2 are constant
    y_score = np.array([[0.9, 0.5, 0.5], [0.1, 0.5, 0.5], [0.4, 0.5, 0.5], [0.6, 0.5, 0.5]])
    assert roc_auc_score(y_true, y_score, task=Task.MULTILABEL) == pytest.approx(sk_auc(y_true[:, 0], y_score[:, 0]))
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
