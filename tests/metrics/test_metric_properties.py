"""Properties every metric of medlens.metrics shares, checked at once over a registry
(scikit-learn's ``metrics/tests/test_common.py``): invariance to the order of the samples, the value
of a perfect and of a constant predictor, and clear ``ValueError`` messages for bad input, on every
task type (binary with a softmax (N, 2) and with a sigmoid (N, 1) score)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from medlens.data.registry import Task
from medlens.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    bootstrap_ci,
    brier_loss,
    calibration,
    cohen_kappa_score,
    confusion_matrix,
    evaluate_scores,
    expected_calibration_error_loss,
    f1_score,
    per_class_report,
    pr_curves,
    roc_auc_score,
    roc_curves,
)
from helpers import single_line


@dataclass(frozen=True)
class Case:
    """One task type and score layout."""

    name: str
    task: Task
    columns: int

    @property
    def classes(self) -> int:
        return 2 if self.task is Task.BINARY else self.columns


CASES = [
    Case("binary", Task.BINARY, 2),
    Case("binary_sigmoid", Task.BINARY, 1),
    Case("multiclass", Task.MULTICLASS, 4),
    Case("ordinal", Task.ORDINAL, 5),
    Case("multilabel", Task.MULTILABEL, 3),
]


def problem(case: Case, n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Informative but imperfect probabilities; every class (every label value) present.

    Single-label labels come as (N, 1), as MedMNIST stores them."""
    rng = np.random.default_rng(seed)
    if case.task.is_multilabel:
        y_true = (rng.random((n, case.columns)) < 0.4).astype(np.uint8)
        y_true[0], y_true[1] = 1, 0
        return y_true, 1 / (1 + np.exp(-(rng.normal(size=y_true.shape) + 1.5 * y_true)))
    y_true = (np.arange(n) % case.classes)[rng.permutation(n)]
    logits = rng.normal(size=(n, case.classes))
    logits[np.arange(n), y_true] += 1.0
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true.reshape(n, 1), softmax[:, 1:] if case.columns == 1 else softmax


def perfect(y_true: np.ndarray, case: Case) -> np.ndarray:
    """Certain and right: one-hot rows, the 0/1 labels themselves, or the class-1 probability 0/1."""
    if case.task.is_multilabel:
        return y_true.astype(np.float64)
    one_hot = np.eye(case.classes)[y_true.reshape(-1)]
    return one_hot[:, 1:] if case.columns == 1 else one_hot


def prior(y_true: np.ndarray, case: Case) -> np.ndarray:
    """The constant predictor that scores every sample with the class (label) frequencies: (K,)."""
    if case.task.is_multilabel:
        return y_true.mean(axis=0)
    frequency = np.bincount(y_true.reshape(-1), minlength=case.classes) / len(y_true)
    return frequency[1:] if case.columns == 1 else frequency


def _as_events(q: np.ndarray, case: Case) -> np.ndarray:
    """The prior as the probability of each class or label (a sigmoid column p means (1 - p, p))."""
    return np.array([1 - q[0], q[0]]) if case.columns == 1 else q


def _majority_rate(q: np.ndarray, case: Case) -> float:
    # Always predicting the most frequent class is right for exactly its share of the samples
    # (multi-label: per label, the more frequent value).
    if case.task.is_multilabel:
        return float(np.mean(np.maximum(q, 1 - q)))
    return float(_as_events(q, case).max())


def _uncertainty(q: np.ndarray, case: Case) -> float:
    # Brier of the climatological forecast: sum over classes of q (1 - q) (multi-label: mean over labels).
    if case.task.is_multilabel:
        return float(np.mean(q * (1 - q)))
    return float(np.sum(q * (1 - q))) if case.columns > 1 else float(q[0] * (1 - q[0]))


def _chance_balanced_accuracy(q: np.ndarray, case: Case) -> float:
    # One class always predicted: recall 1 for it and 0 for the others, every class present.
    return 0.5 if case.task.is_multilabel else 1 / case.classes


@dataclass(frozen=True)
class Metric:
    """A registry entry: the metric, and what the constant prior predictor scores (None: no fixed value)."""

    function: Callable[..., float]
    constant: Callable[[np.ndarray, Case], float] | None
    empty_is_nan: bool = False


METRICS = {
    "roc_auc_score": Metric(roc_auc_score, lambda q, case: 0.5, empty_is_nan=True),
    "accuracy_score": Metric(accuracy_score, _majority_rate, empty_is_nan=True),
    "f1_score": Metric(f1_score, None),
    "weighted_f1_score": Metric(lambda y_true, y_score, *, task: f1_score(y_true, y_score, task=task,
                                                                          average="weighted"), None),
    "balanced_accuracy_score": Metric(balanced_accuracy_score, _chance_balanced_accuracy),
    "cohen_kappa_score": Metric(cohen_kappa_score, lambda q, case: 0.0),
    "brier_loss": Metric(brier_loss, _uncertainty),
    "expected_calibration_error_loss": Metric(expected_calibration_error_loss, lambda q, case: 0.0),
}


def bad_inputs(y_true: np.ndarray, y_score: np.ndarray, case: Case) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(what, y_true, y_score, regex the one-line message must match)."""
    n = len(y_true)
    with_nan = y_score.copy()
    with_nan[3, 0] = np.nan
    cases = [
        ("score_1d", y_true, y_score[:, 0], r"\(N, K\).*\(40,\)"),
        ("score_3d", y_true, y_score[:, :, None], r"\(N, K\).*\(40, \d+, 1\)"),
        ("fewer_scores", y_true, y_score[:-1], rf"N = len\(y_true\) = {n}.*\({n - 1}, {case.columns}\)"),
        ("non_finite", y_true, with_nan, r"finite.*nan.*row 3"),
    ]
    if case.task.is_multilabel:
        for value in (2, -1):
            labels = y_true.astype(np.int64).copy()
            labels[5, 1] = value
            cases.append((f"label_{value}", labels, y_score, rf"0/1.*\[{value}\]"))
        cases.append(("true_1d", y_true[:, 0], y_score, r"\(N, K\).*\(40,\)"))
    else:
        top = case.classes - 1
        for value in (case.classes, -1, 0.5):
            labels = y_true.astype(np.float64).copy()
            labels[5, 0] = value
            cases.append((f"label_{value}", labels, y_score, rf"\[{value}\].*0\.\.{top}"))
        cases.append(("one_hot_true", np.eye(case.classes)[y_true.reshape(-1)], y_score, r"class ids \(N,\)"))
    if case.task is Task.BINARY:
        cases.append(("three_columns", y_true, np.full((n, 3), 1 / 3), r"binary.*3 columns"))
    return cases


def empty(case: Case) -> tuple[np.ndarray, np.ndarray]:
    shape = (0, case.columns) if case.task.is_multilabel else (0,)
    return np.zeros(shape, dtype=np.int64), np.zeros((0, case.columns))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("name", list(METRICS))
def test_metric_properties(name, case):
    metric, task = METRICS[name], case.task
    higher_is_better = name.endswith("_score")
    assert higher_is_better or name.endswith("_loss"), "a metric is *_score (higher is better) or *_loss"
    values = []
    for seed in range(3):
        y_true, y_score = problem(case, seed=seed)
        kept = y_true.copy(), y_score.copy()
        value = metric.function(y_true, y_score, task=task)
        assert isinstance(value, float) and math.isfinite(value)
        assert np.array_equal(kept[0], y_true) and np.array_equal(kept[1], y_score)  # pure: inputs untouched
        values.append(value)

        # the order of the samples does not matter
        order = np.random.default_rng(seed + 100).permutation(len(y_true))
        assert metric.function(y_true[order], y_score[order], task=task) == pytest.approx(value, abs=1e-12)

        # a perfect predictor scores 1 (a loss 0), the best there is
        best = metric.function(y_true, perfect(y_true, case), task=task)
        assert best == pytest.approx(1.0 if higher_is_better else 0.0, abs=1e-12)
        assert (value <= best) if higher_is_better else (value >= best)

        # a constant predictor (the class frequencies for every sample): AUC 0.5, kappa 0, ECE 0, ...
        q = prior(y_true, case)
        constant = metric.function(y_true, np.tile(q, (len(y_true), 1)), task=task)
        if metric.constant is not None:
            assert constant == pytest.approx(metric.constant(q, case), abs=1e-9)
    assert len(set(values)) > 1  # the three problems differ, so the checks above can fail

    # bad shapes and labels outside the classes: ValueError, one line naming the bad value and what is valid
    y_true, y_score = problem(case)
    for what, bad_true, bad_score, pattern in bad_inputs(y_true, y_score, case):
        with pytest.raises(ValueError) as info:
            metric.function(bad_true, bad_score, task=task)
        message = single_line(info.value)
        assert re.search(pattern, message), f"{what}: {message!r} does not match {pattern!r}"
    if not higher_is_better:  # the calibration losses need probabilities
        with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
            metric.function(y_true, y_score + 1.0, task=task)

    # no samples: NaN where documented, else a clear error
    if metric.empty_is_nan:
        assert math.isnan(metric.function(*empty(case), task=task))
    else:
        with pytest.raises(ValueError, match="empty"):
            metric.function(*empty(case), task=task)


# --- the reports built on the metrics --------------------------------------------------------------


def _names(case: Case) -> list[str]:
    return [f"class {i}" for i in range(case.classes)]


REPORTS: dict[str, Callable[..., object]] = {
    "per_class_report": lambda y_true, y_score, case: per_class_report(y_true, y_score, task=case.task),
    "confusion_matrix": lambda y_true, y_score, case: confusion_matrix(y_true, y_score, task=case.task),
    "roc_curves": lambda y_true, y_score, case: roc_curves(y_true, y_score, task=case.task),
    "pr_curves": lambda y_true, y_score, case: pr_curves(y_true, y_score, task=case.task),
    "calibration": lambda y_true, y_score, case: calibration(y_true, y_score, task=case.task),
    "bootstrap_ci": lambda y_true, y_score, case: bootstrap_ci(y_true, y_score, task=case.task, n_resamples=20),
    "evaluate_scores": lambda y_true, y_score, case: evaluate_scores(y_true, y_score, task=case.task,
                                                                     class_names=_names(case), n_bootstrap=0),
}


def _numbers(value) -> list:
    """Every leaf of a (JSON-like) result in order, arrays flattened."""
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in [key, *_numbers(value[key])]]
    if isinstance(value, (list, tuple, np.ndarray)):
        return [leaf for item in value for leaf in _numbers(item)]
    return [value]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("name", list(REPORTS))
def test_reports_reject_bad_input(name, case):
    report = REPORTS[name]
    y_true, y_score = problem(case)
    json.dumps(report(y_true, y_score, case), default=lambda array: array.tolist())  # works on good input
    for what, bad_true, bad_score, pattern in bad_inputs(y_true, y_score, case):
        with pytest.raises(ValueError) as info:
            report(bad_true, bad_score, case)
        message = single_line(info.value)
        assert re.search(pattern, message), f"{what}: {message!r} does not match {pattern!r}"
    with pytest.raises(ValueError, match="empty"):
        report(*empty(case), case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_evaluation_does_not_depend_on_the_sample_order(case):
    y_true, y_score = problem(case, n=60, seed=1)
    order = np.random.default_rng(9).permutation(len(y_true))
    first = _numbers(REPORTS["evaluate_scores"](y_true, y_score, case))
    second = _numbers(REPORTS["evaluate_scores"](y_true[order], y_score[order], case))
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        if isinstance(a, float):
            assert b == pytest.approx(a, abs=1e-12, nan_ok=True)
        else:
            assert a == b
