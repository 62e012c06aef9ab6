"""Classification metrics as pure functions on numpy arrays.

Every function takes the data first and its options as keywords, and dispatches on the
:class:`~medlens.data.registry.Task`:

* ``y_true``: class ids ``(N,)`` or ``(N, 1)`` (integers ``0..K-1``; ``0/1`` for binary), or
  ``0/1`` indicators ``(N, K)`` for multi-label tasks.
* ``y_score``: finite scores ``(N, K)``: softmax probabilities for single-label tasks (binary also
  accepts one sigmoid column ``(N, 1)``, the score of class 1), sigmoids per label for multi-label.
  The calibration metrics (Brier, ECE) need probabilities: values in [0, 1], single-label rows
  summing to 1.

``*_score`` functions are higher-is-better, ``*_loss`` functions lower-is-better.

Decision rule (:func:`predicted_labels`), the one ``getACC`` of the MedMNIST v2 evaluator
(``medmnist/evaluator.py``) uses, shared by ACC and every report here:

* binary: class 1 where the positive-class score ``y_score[:, -1]`` is ``> threshold`` (strict),
  so a softmax ``(N, 2)`` and a sigmoid ``(N, 1)`` give the same labels;
* multi-class and ordinal: the argmax (the first column on ties); no threshold;
* multi-label: a label is present where its score is ``> threshold`` (strict, as the v2 evaluator's
  ``y_pre = y_score > threshold``; the v1 evaluator used ``np.where(y_score < threshold, 0, 1)``,
  which differs only for a score exactly at the threshold).

The official MedMNIST metrics (``getACC`` / ``getAUC``), so numbers compare with the published table:

* ACC (:func:`accuracy_score`): the fraction of samples whose predicted class is right; multi-label:
  the mean over labels of each label's accuracy.
* AUC (:func:`roc_auc_score`): binary, the ROC AUC of ``y_score[:, -1]``; multi-class and ordinal,
  the mean one-vs-rest ROC AUC over classes; multi-label, the mean per-label ROC AUC. One deliberate
  difference: a class or label with no positive or no negative sample (where the evaluator's
  scikit-learn call raises) is left out of the mean; NaN when none is left.

Further metrics (scikit-learn computes them wherever it has them):

* precision TP / (TP + FP), recall (sensitivity) TP / (TP + FN), specificity TN / (TN + FP) and
  F1 2TP / (2TP + FP + FN) of each class against the rest (multi-label: of each label); "macro" is
  the plain mean over classes, "weighted" the mean weighted by support (true samples of the class).
  A ratio with a zero denominator is NaN and is left out of the means (scikit-learn's
  ``zero_division=np.nan``), so nothing warns.
* balanced accuracy: the mean recall over the classes present in ``y_true``; multi-label: the mean
  over labels of each label's balanced accuracy.
* Cohen's kappa: 1 - sum(w * O) / sum(w * E), O the confusion matrix, E = outer(row sums, column
  sums) / N what chance agreement gives; w = 1 off the diagonal and 0 on it (plain), or
  w = (i - j)^2 (quadratic, used for ORDINAL tasks, where a near miss costs less). Multi-label:
  the mean of the per-label plain kappas. NaN when sum(w * E) = 0 (one class only, in both).
* Brier (:func:`brier_loss`): single-label, the mean over samples of sum over classes of
  (p_k - onehot_k)^2; a binary (N, 2) score uses that same one-hot form over both columns (twice
  the one-column value), a binary (N, 1) score the mean of (p - y)^2; multi-label, the mean over
  labels of each label's mean (p - y)^2.
* ECE, expected calibration error (:func:`expected_calibration_error_loss`): ``n_bins``
  equal-width bins on [0, 1] (bin b holds b/n < c <= (b+1)/n; the first also holds c = 0);
  ECE = sum over bins of n_b / n * |acc_b - conf_b|, with conf_b the mean confidence in the bin
  and acc_b the mean outcome. Single-label: the top-label confidence (the score of the predicted
  class; binary ``max(p, 1 - p)`` of the positive score p) and outcome 1 where the prediction is
  right. Multi-label: every (sample, label) probability of the positive event, and outcome 1 where
  the label is present.
* confidence intervals: a stratified percentile bootstrap, see :func:`bootstrap_ci`.

Empty input: :func:`roc_auc_score` and :func:`accuracy_score` return NaN (the training loop may
score an empty batch list), :func:`predicted_labels` an empty array; every other function raises
``ValueError``.

Example:
    >>> import numpy as np
    >>> from medlens.data.registry import Task
    >>> y_true = np.array([0, 1, 1, 0]); y_score = np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3]])
    >>> roc_auc_score(y_true, y_score, task=Task.BINARY), accuracy_score(y_true, y_score, task=Task.BINARY)
    (1.0, 0.75)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from medlens.data.registry import Task

METRICS_SCHEMA_VERSION = 2
"""Version of the dict :func:`evaluate_scores` returns; raised when its layout changes (2: ``ordinal``
for ordinal tasks; evaluations add ``external`` and ``subgroups``)."""

# Scores within this distance of a row sum of 1 count as probabilities (float32 softmax rows are
# off by ~1e-7; scikit-learn's own check, rtol = sqrt(eps), would warn on every real run).
_ROW_SUM_TOLERANCE = 1e-3
# Resamples are drawn in blocks of at most this many (resample, sample) cells, so memory stays
# bounded (a float64 block is 16 MB) on test sets of any size.
_BOOTSTRAP_BLOCK_CELLS = 2_000_000


# --- input checking ------------------------------------------------------------------------------


def _as_task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    try:
        return Task(task)
    except ValueError:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(t.value for t in Task)}") from None


def _show(values: np.ndarray, limit: int = 5) -> str:
    """``[3, 7]`` (at most ``limit`` values, then how many more; whole floats without ``.0``) for messages."""
    shown = ", ".join(repr(int(v)) if isinstance(v, float) and v.is_integer() else repr(v)
                      for v in values[:limit].tolist())
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"[{shown}]{more}"


def _check_scores(y_score, task: Task, *, n: int | None = None) -> np.ndarray:
    """``y_score`` as float64 ``(N, K)``, finite, with a column count the task allows."""
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim != 2 or (n is not None and len(y_score) != n):
        with_n = "" if n is None else f" with N = len(y_true) = {n}"
        raise ValueError(f"y_score must be (N, K){with_n}; got shape {y_score.shape}")
    k = y_score.shape[1]
    if task is Task.BINARY and k not in (1, 2):
        raise ValueError(f"binary y_score must have 1 column (score of class 1) or 2 (one per class); "
                         f"got {k} columns, shape {y_score.shape}")
    if task in (Task.MULTICLASS, Task.ORDINAL) and k < 2:
        raise ValueError(f"{task.value} y_score must have one column per class, at least 2; got shape {y_score.shape}")
    if task.is_multilabel and k < 1:
        raise ValueError(f"multi-label y_score must have one column per label; got shape {y_score.shape}")
    finite = np.isfinite(y_score)
    if not finite.all():
        row, column = np.argwhere(~finite)[0]
        raise ValueError(f"y_score must be finite; found {y_score[row, column]} at row {row}, column {column} "
                         f"({int((~finite).sum())} non-finite values in all)")
    return y_score


def _num_classes(y_score: np.ndarray, task: Task) -> int:
    """Classes of a single-label task (2 for binary, whatever its column count), labels of a multi-label one."""
    return 2 if task is Task.BINARY else y_score.shape[1]


def _check(y_true, y_score, task: Task, *, allow_empty: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (labels, scores) pair; return int64 labels ((N,) ids or (N, K) 0/1) and float64 scores."""
    task = _as_task(task)
    y_true = np.asarray(y_true)
    if y_true.ndim == 0:
        raise ValueError(f"y_true must be an array of labels; got the scalar {y_true.item()!r}")
    y_score = _check_scores(y_score, task, n=len(y_true))
    if y_true.dtype.kind not in "biuf":
        raise ValueError(f"y_true must hold numbers (class ids, or 0/1 for multi-label); got dtype {y_true.dtype}")
    if task.is_multilabel:
        if y_true.shape != y_score.shape:
            raise ValueError(f"multi-label y_true must be (N, K) like y_score {y_score.shape}; got {y_true.shape}")
        bad = np.setdiff1d(np.unique(y_true), [0, 1])
        if bad.size:
            raise ValueError(f"multi-label y_true must be 0/1 indicators; found the values {_show(bad)}")
    else:
        if not (y_true.ndim == 1 or (y_true.ndim == 2 and y_true.shape[1] == 1)):
            raise ValueError(f"y_true of a single-label task must be class ids (N,); got shape {y_true.shape}")
        y_true = y_true.reshape(-1)
        k = _num_classes(y_score, task)
        values = np.unique(y_true)
        # NaN fails every comparison, so `values != np.round(values)` catches it with the fractions.
        bad = values[(values < 0) | (values > k - 1) | (values != np.round(values))]
        if bad.size:
            of = "of a binary task" if task is Task.BINARY else f"of y_score's {k} columns"
            raise ValueError(f"y_true has the labels {_show(bad)} outside the classes 0..{k - 1} {of}")
    if not allow_empty and len(y_true) == 0:
        raise ValueError("y_true and y_score are empty (N = 0); need at least one sample")
    return y_true.astype(np.int64), y_score


def _check_threshold(threshold: float) -> float:
    if not (isinstance(threshold, (int, float, np.number)) and math.isfinite(threshold)):
        raise ValueError(f"threshold must be a finite number; got {threshold!r}")
    return float(threshold)


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a whole number >= 1; got {n_bins!r}")
    return int(n_bins)


def _check_probabilities(y_score: np.ndarray, task: Task) -> None:
    """Calibration needs probabilities: values in [0, 1]; single-label rows with K >= 2 summing to 1."""
    outside = (y_score < 0) | (y_score > 1)
    if outside.any():
        row, column = np.argwhere(outside)[0]
        raise ValueError(f"calibration needs probabilities in [0, 1]; y_score has {y_score[row, column]} "
                         f"at row {row}, column {column}")
    if not task.is_multilabel and y_score.shape[1] >= 2:
        off = np.abs(y_score.sum(axis=1) - 1.0) > _ROW_SUM_TOLERANCE
        if off.any():
            row = int(np.flatnonzero(off)[0])
            raise ValueError(f"calibration needs single-label rows of y_score that sum to 1 (softmax); "
                             f"row {row} sums to {y_score[row].sum()}")


def _class_names(class_names: Sequence[str] | None, k: int, task: Task) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(k)]
    names = [str(name) for name in class_names]
    if len(names) != k:
        what = "labels" if task.is_multilabel else "classes"
        raise ValueError(f"class_names has {len(names)} names {names} but the {task.value} task has {k} {what}")
    return names


@contextmanager
def _undefined_is_nan() -> Iterator[None]:
    """Silence scikit-learn's warnings for undefined values: they come back as NaN and are documented."""
    from sklearn.exceptions import UndefinedMetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        # balanced_accuracy_score: a predicted class absent from y_true has no recall; it is left out.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        # balanced_accuracy_score on one class only: its internal confusion matrix is 1 x 1, as it should be.
        warnings.filterwarnings("ignore", message="A single label was found in 'y_true' and 'y_pred'")
        yield


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def _nan_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over ``axis`` leaving NaN out; NaN where nothing is left (np.nanmean would warn)."""
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=axis)
    count = defined.sum(axis=axis)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _nan_average(values: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean leaving NaN values out, NaN when no weight is left (scikit-learn's NaN averaging)."""
    defined = ~np.isnan(values)
    weight = float(weights[defined].sum())
    return float(np.dot(values[defined], weights[defined]) / weight) if weight > 0 else float("nan")


# --- decision rule -------------------------------------------------------------------------------


def predicted_labels(y_score, *, task: Task, threshold: float = 0.5) -> np.ndarray:
    """The predicted labels, by the decision rule of the official ACC.

    Args:
        y_score: scores ``(N, K)``; binary ``(N, 1)`` or ``(N, 2)``.
        task: the dataset's :class:`Task`.
        threshold: binary: class 1 where ``y_score[:, -1] > threshold``; multi-label: a label is
            present where its score is ``> threshold``; not used by multi-class and ordinal
            tasks (argmax). Default 0.5.

    Returns:
        int64 class ids ``(N,)``, or 0/1 ``(N, K)`` for multi-label.

    Raises:
        ValueError: ``y_score`` is not a finite ``(N, K)`` array the task allows, or the threshold
            is not a finite number.

    Example:
        >>> predicted_labels(np.array([[.5, .5], [.2, .8]]), task=Task.BINARY).tolist()
        [0, 1]
        >>> predicted_labels(np.array([[.6, .5]]), task=Task.MULTILABEL).tolist()  # strict: 0.5 is absent
        [[1, 0]]
    """
    task = _as_task(task)
    y_score = _check_scores(y_score, task)
    threshold = _check_threshold(threshold)
    if task is Task.BINARY:
        return (y_score[:, -1] > threshold).astype(np.int64)
    if task.is_multilabel:
        return (y_score > threshold).astype(np.int64)
    return y_score.argmax(axis=1).astype(np.int64)


def _one_vs_rest(y_true: np.ndarray, y_score: np.ndarray, task: Task) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(class or label index, positives (N,) bool, its scores (N,)) for every curve/AUC column."""
    if task is Task.BINARY:
        return [(1, y_true == 1, y_score[:, -1])]
    if task.is_multilabel:
        return [(k, y_true[:, k] == 1, y_score[:, k]) for k in range(y_score.shape[1])]
    return [(k, y_true == k, y_score[:, k]) for k in range(y_score.shape[1])]


def _has_both(positive: np.ndarray) -> bool:
    return 0 < int(positive.sum()) < len(positive)


# --- the official MedMNIST metrics ---------------------------------------------------------------


def roc_auc_score(y_true, y_score, *, task: Task) -> float:
    """Official MedMNIST AUC (higher is better).

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)`` (softmax for single-label, sigmoid for multi-label; binary
            ``(N, 1)`` or ``(N, 2)``, only the last column is used).
        task: the dataset's :class:`Task`.

    Returns:
        The AUC; NaN when it is undefined (a class or label with no positive or no negative
        example is left out of the mean, and NaN if none is left), and for empty input.

    Raises:
        ValueError: bad shapes, non-finite scores, or labels outside the classes.

    Example:
        >>> roc_auc_score([0, 1, 1], [[.9, .1], [.4, .6], [.3, .7]], task=Task.BINARY)
        1.0
    """
    from sklearn.metrics import roc_auc_score as sk_roc_auc_score

    task = _as_task(task)
    y_true, y_score = _check(y_true, y_score, task)
    values = [sk_roc_auc_score(positive, score) for _, positive, score in _one_vs_rest(y_true, y_score, task)
              if _has_both(positive)]
    return float(np.mean(values)) if values else float("nan")


def accuracy_score(y_true, y_score, *, task: Task, threshold: float = 0.5) -> float:
    """Official MedMNIST ACC (higher is better).

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)``, as in :func:`roc_auc_score`.
        task: the dataset's :class:`Task`.
        threshold: the decision threshold of :func:`predicted_labels` (binary, multi-label).

    Returns:
        The fraction of right predictions (multi-label: the mean per-label accuracy); NaN for
        empty input.

    Raises:
        ValueError: bad shapes, non-finite scores, or labels outside the classes.

    Example:
        >>> accuracy_score([0, 1, 2], [[.5, .3, .2], [.1, .1, .8], [.2, .2, .6]], task=Task.MULTICLASS)
        0.6666666666666666
    """
    task = _as_task(task)
    y_true, y_score = _check(y_true, y_score, task)
    if len(y_true) == 0:
        return float("nan")
    # Multi-label: every label has N samples, so the mean over all cells is the mean per-label ACC.
    return float(np.mean(predicted_labels(y_score, task=task, threshold=threshold) == y_true))


# --- further scores ------------------------------------------------------------------------------


def _labels_and_predictions(y_true, y_score, task, threshold) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    y_true, y_score = _check(y_true, y_score, task, allow_empty=False)
    return y_true, y_score, predicted_labels(y_score, task=task, threshold=threshold), _num_classes(y_score, task)


def f1_score(y_true, y_score, *, task: Task, average: str = "macro", threshold: float = 0.5) -> float:
    """F1 averaged over classes (multi-label: over labels), higher is better.

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)``; labels come from :func:`predicted_labels`.
        task: the dataset's :class:`Task`.
        average: ``"macro"`` (plain mean over classes; binary: over both classes) or
            ``"weighted"`` (weighted by support). Default ``"macro"``.
        threshold: the decision threshold of :func:`predicted_labels`.

    Returns:
        The mean F1; a class with neither true nor predicted samples has no F1 and is left out.

    Raises:
        ValueError: bad shapes or labels, empty input, or an unknown ``average``.

    Example:
        >>> f1_score([0, 0, 1, 1], [[.8, .2], [.3, .7], [.4, .6], [.1, .9]], task=Task.BINARY)
        0.7333333333333334
    """
    from sklearn.metrics import f1_score as sk_f1_score

    if average not in ("macro", "weighted"):
        raise ValueError(f"average must be 'macro' or 'weighted'; got {average!r}")
    task = _as_task(task)
    y_true, _, y_pred, k = _labels_and_predictions(y_true, y_score, task, threshold)
    labels = None if task.is_multilabel else list(range(k))
    return float(sk_f1_score(y_true, y_pred, labels=labels, average=average, zero_division=np.nan))


def balanced_accuracy_score(y_true, y_score, *, task: Task, threshold: float = 0.5) -> float:
    """Balanced accuracy: mean recall over the classes present in ``y_true`` (higher is better).

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)``; labels come from :func:`predicted_labels`.
        task: the dataset's :class:`Task`.
        threshold: the decision threshold of :func:`predicted_labels`.

    Returns:
        Single-label: scikit-learn's ``balanced_accuracy_score``; multi-label: the mean over
        labels of each label's balanced accuracy.

    Raises:
        ValueError: bad shapes or labels, or empty input.

    Example:
        >>> balanced_accuracy_score([0, 0, 0, 1], [[.9, .1], [.8, .2], [.7, .3], [.6, .4]], task=Task.BINARY)
        0.5
    """
    from sklearn.metrics import balanced_accuracy_score as sk_balanced_accuracy

    task = _as_task(task)
    y_true, _, y_pred, _ = _labels_and_predictions(y_true, y_score, task, threshold)
    with _undefined_is_nan():
        if task.is_multilabel:
            return float(np.mean([sk_balanced_accuracy(y_true[:, k], y_pred[:, k]) for k in range(y_true.shape[1])]))
        return float(sk_balanced_accuracy(y_true, y_pred))


def _kappa_weights(task: Task) -> str | None:
    return "quadratic" if task is Task.ORDINAL else None


def cohen_kappa_score(y_true, y_score, *, task: Task, threshold: float = 0.5) -> float:
    """Cohen's kappa of predicted against true labels (higher is better; 1 perfect, 0 chance).

    Quadratic-weighted for ORDINAL tasks, plain otherwise.

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)``; labels come from :func:`predicted_labels`.
        task: the dataset's :class:`Task`.
        threshold: the decision threshold of :func:`predicted_labels`.

    Returns:
        The kappa; multi-label: the mean over labels of each label's plain kappa (labels where it
        is undefined are left out). NaN where it is undefined (chance agreement is total: one class
        only, in both the truth and the predictions).

    Raises:
        ValueError: bad shapes or labels, or empty input.

    Example:
        >>> cohen_kappa_score([0, 1, 2, 2], np.eye(3)[[0, 2, 2, 1]], task=Task.ORDINAL)  # 1 - 2 / 5.5
        0.6363636363636364
    """
    from sklearn.metrics import cohen_kappa_score as sk_kappa

    task = _as_task(task)
    y_true, _, y_pred, k = _labels_and_predictions(y_true, y_score, task, threshold)
    with _undefined_is_nan():
        if task.is_multilabel:
            per_label = np.array([sk_kappa(y_true[:, j], y_pred[:, j], labels=[0, 1]) for j in range(k)])
            return float(_nan_mean(per_label))
        return float(sk_kappa(y_true, y_pred, labels=list(range(k)), weights=_kappa_weights(task)))


def mean_absolute_grade_error_loss(y_true, y_score, *, task: Task) -> float:
    """Mean absolute difference between predicted and true grade (ordinal tasks; lower is better).

    The predicted grade is the arg-max class (:func:`predicted_labels`), so the metric is in class
    steps: 0 perfect, 1 one grade off on average.

    Args:
        y_true: grades as class ids ``(N,)`` or ``(N, 1)``.
        y_score: scores ``(N, K)``.
        task: :class:`Task` ORDINAL (or MULTICLASS whose class ids are grades).

    Raises:
        ValueError: a multi-label task, bad shapes or labels, or empty input.

    Example:
        >>> mean_absolute_grade_error_loss([0, 1, 2, 2], np.eye(3)[[0, 2, 2, 0]], task=Task.ORDINAL)
        0.75
    """
    task = _as_task(task)
    if task.is_multilabel:
        raise ValueError("mean absolute grade error is for ordinal (one grade per image) tasks, not multi-label")
    y_true, _, y_pred, _ = _labels_and_predictions(y_true, y_score, task, 0.5)
    return float(np.mean(np.abs(y_true.astype(np.int64) - y_pred.astype(np.int64))))


# --- calibration ---------------------------------------------------------------------------------


def brier_loss(y_true, y_score, *, task: Task) -> float:
    """Brier score (lower is better; 0 for one-hot right answers).

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: probabilities ``(N, K)`` in [0, 1], single-label rows summing to 1; binary
            ``(N, 1)`` (probability of class 1) or ``(N, 2)``.
        task: the dataset's :class:`Task`.

    Returns:
        Single-label with K >= 2 columns: mean over samples of sum over classes of
        (p_k - onehot_k)^2 (range [0, 2]); binary ``(N, 1)``: mean (p - y)^2; multi-label: mean
        over labels of each label's mean (p - y)^2.

    Raises:
        ValueError: bad shapes or labels, empty input, or scores that are not probabilities.

    Example:
        >>> brier_loss([1, 0], [[.2, .8], [.6, .4]], task=Task.BINARY)  # (2 * .04 + 2 * .16) / 2
        0.2
    """
    from sklearn.metrics import brier_score_loss

    task = _as_task(task)
    y_true, y_score = _check(y_true, y_score, task, allow_empty=False)
    _check_probabilities(y_score, task)
    if task.is_multilabel:
        # Every label has N samples: the mean over all cells is the mean of per-label means.
        return float(brier_score_loss(y_true.ravel(), y_score.ravel(), labels=[0, 1]))
    if y_score.shape[1] == 1:
        return float(brier_score_loss(y_true, y_score[:, 0], labels=[0, 1]))
    with warnings.catch_warnings():
        # Rows were checked to sum to 1 within _ROW_SUM_TOLERANCE; scikit-learn's far tighter test
        # would warn on every float32 softmax.
        warnings.filterwarnings("ignore", message="The y_prob values do not sum to one")
        return float(brier_score_loss(y_true, y_score, labels=list(range(y_score.shape[1])), scale_by_half=False))


def _confidence_and_outcome(y_true: np.ndarray, y_score: np.ndarray, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """What calibration bins: (confidence, outcome), each (N,) or, multi-label, (N, K)."""
    if task.is_multilabel:
        return y_score, y_true.astype(np.float64)
    if task is Task.BINARY:
        positive = y_score[:, -1]
        predicted = (positive > 0.5).astype(np.int64)  # the argmax of (1 - p, p), first on a tie
        confidence = np.where(predicted == 1, positive, 1.0 - positive)
    else:
        predicted = y_score.argmax(axis=1)
        confidence = y_score.max(axis=1)
    return confidence, (predicted == y_true).astype(np.float64)


def _bin_edges(n_bins: int) -> np.ndarray:
    return np.arange(n_bins + 1) / n_bins  # exactly b / n (np.linspace gives 0.6000000000000001 for 3/5)


def _bin_index(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each confidence: b with edges[b] < c <= edges[b + 1]; c = 0 goes to bin 0."""
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, len(edges) - 2)


def _calibration_table(y_true, y_score, task: Task,
                       n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: (edges (B+1,), count (B,), confidence sum (B,), outcome sum (B,))."""
    confidence, outcome = _confidence_and_outcome(y_true, y_score, task)
    edges = _bin_edges(n_bins)
    index = _bin_index(confidence.ravel(), edges)
    count = np.bincount(index, minlength=n_bins)
    return (edges, count, np.bincount(index, weights=confidence.ravel(), minlength=n_bins),
            np.bincount(index, weights=outcome.ravel(), minlength=n_bins))


def expected_calibration_error_loss(y_true, y_score, *, task: Task, n_bins: int = 15) -> float:
    """Expected calibration error, ECE (lower is better; 0 when every bin's confidence is its accuracy).

    Hand-written: scikit-learn has no ECE (``calibration_curve`` bins one binary probability and
    drops empty bins).

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: probabilities ``(N, K)``, as in :func:`brier_loss`.
        task: the dataset's :class:`Task`.
        n_bins: equal-width confidence bins on [0, 1]. Default 15.

    Returns:
        sum over bins of n_b / n * |acc_b - conf_b| (see the module docstring: top-label
        confidence for single-label tasks, every (sample, label) probability for multi-label).

    Raises:
        ValueError: bad shapes or labels, empty input, scores that are not probabilities, or
            ``n_bins`` < 1.

    Example:
        >>> ece = expected_calibration_error_loss([0, 1], [[.9, .1], [.7, .3]], task=Task.BINARY, n_bins=2)
        >>> round(ece, 12)  # one bin (0.5, 1]: confidence (.9 + .7) / 2 = .8, accuracy 1 / 2
        0.3
    """
    task = _as_task(task)
    n_bins = _check_n_bins(n_bins)
    y_true, y_score = _check(y_true, y_score, task, allow_empty=False)
    _check_probabilities(y_score, task)
    _, count, confidence_sum, outcome_sum = _calibration_table(y_true, y_score, task, n_bins)
    # n_b / n * |acc_b - conf_b| = |outcome sum - confidence sum| / n
    return float(np.abs(outcome_sum - confidence_sum).sum() / count.sum())


def calibration(y_true, y_score, *, task: Task, n_bins: int = 15) -> dict:
    """Calibration summary: ECE, Brier and the reliability-diagram bins.

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: probabilities ``(N, K)``, as in :func:`brier_loss`.
        task: the dataset's :class:`Task`.
        n_bins: equal-width confidence bins on [0, 1]. Default 15.

    Returns:
        ``{"ece": float, "brier": float, "bins": [{"lower", "upper", "count", "confidence",
        "accuracy"}, ...]}``, one bin dict per bin in order; "confidence" is the bin's mean
        confidence and "accuracy" its mean outcome (multi-label: the fraction of positives);
        both NaN for an empty bin (count 0).

    Raises:
        ValueError: as :func:`expected_calibration_error_loss`.

    Example:
        >>> result = calibration([0, 1], [[.9, .1], [.7, .3]], task=Task.BINARY, n_bins=2)
        >>> round(result["ece"], 12), result["bins"][1]["count"], result["bins"][1]["accuracy"]
        (0.3, 2, 0.5)
    """
    task = _as_task(task)
    n_bins = _check_n_bins(n_bins)
    y_true, y_score = _check(y_true, y_score, task, allow_empty=False)
    _check_probabilities(y_score, task)
    edges, count, confidence_sum, outcome_sum = _calibration_table(y_true, y_score, task, n_bins)
    mean_confidence, mean_outcome = _ratio(confidence_sum, count), _ratio(outcome_sum, count)
    bins = [{"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": int(count[b]),
             "confidence": float(mean_confidence[b]), "accuracy": float(mean_outcome[b])} for b in range(n_bins)]
    return {"ece": expected_calibration_error_loss(y_true, y_score, task=task, n_bins=n_bins),
            "brier": brier_loss(y_true, y_score, task=task), "bins": bins}


# --- reports -------------------------------------------------------------------------------------


def per_class_report(y_true, y_score, *, task: Task, class_names: Sequence[str] | None = None,
                     threshold: float = 0.5) -> dict:
    """Precision, recall, specificity and F1 per class, their averages, balanced accuracy and kappa.

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)``; labels come from :func:`predicted_labels`.
        task: the dataset's :class:`Task`.
        class_names: one name per class (binary: 2; multi-label: per label); default ``"0"``,
            ``"1"``, ...
        threshold: the decision threshold of :func:`predicted_labels`.

    Returns:
        ``{"classes": [{"name", "precision", "recall", "specificity", "f1", "support"}, ...],
        "macro": {"precision", "recall", "specificity", "f1"}, "weighted": {...},
        "balanced_accuracy": float, "kappa": float, "kappa_weights": "quadratic" | "none"}``;
        "classes" has one entry per class (binary: both) or per label, "support" is the number of
        true samples (int). Undefined values are NaN and left out of the averages.

    Raises:
        ValueError: bad shapes or labels, empty input, or ``class_names`` of the wrong length.

    Example:
        >>> report = per_class_report([0, 1, 1], [[.9, .1], [.2, .8], [.6, .4]], task=Task.BINARY)
        >>> report["classes"][1]["recall"], report["macro"]["specificity"], report["kappa_weights"]
        (0.5, 0.75, 'none')
    """
    from sklearn.metrics import (
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    task = _as_task(task)
    y_true, y_score, y_pred, k = _labels_and_predictions(y_true, y_score, task, threshold)
    names = _class_names(class_names, k, task)
    labels = None if task.is_multilabel else list(range(k))
    with _undefined_is_nan():
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=None, zero_division=np.nan)
        averages = {average: precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                             zero_division=np.nan)[:3]
                    for average in ("macro", "weighted")}
    # (K, 2, 2) one-vs-rest matrices [[TN, FP], [FN, TP]]
    tables = multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    specificity = _ratio(tables[:, 0, 0].astype(np.float64), tables[:, 0, :].sum(axis=1).astype(np.float64))
    classes = [{"name": names[j], "precision": float(precision[j]), "recall": float(recall[j]),
                "specificity": float(specificity[j]), "f1": float(f1[j]), "support": int(support[j])}
               for j in range(k)]
    summary = {}
    for average, (p, r, f) in averages.items():
        spec = (float(_nan_mean(specificity)) if average == "macro"
                else _nan_average(specificity, support.astype(np.float64)))
        summary[average] = {"precision": float(p), "recall": float(r), "specificity": spec, "f1": float(f)}
    return {"classes": classes, "macro": summary["macro"], "weighted": summary["weighted"],
            "balanced_accuracy": balanced_accuracy_score(y_true, y_score, task=task, threshold=threshold),
            "kappa": cohen_kappa_score(y_true, y_score, task=task, threshold=threshold),
            "kappa_weights": _kappa_weights(task) or "none"}


def confusion_matrix(y_true, y_score, *, task: Task, normalize: str | None = None,
                     threshold: float = 0.5) -> np.ndarray:
    """Confusion matrix of predicted against true labels.

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)``; labels come from :func:`predicted_labels`.
        task: the dataset's :class:`Task`.
        normalize: ``None`` for counts, or ``"true"`` to divide every row by its sum (a row with
            no samples becomes NaN).
        threshold: the decision threshold of :func:`predicted_labels`.

    Returns:
        Single-label: ``(K, K)``, rows the true class, columns the predicted class (binary K = 2).
        Multi-label: ``(K, 2, 2)``, per label ``[[TN, FP], [FN, TP]]`` (scikit-learn's
        ``multilabel_confusion_matrix``). int64 counts, or float64 when normalised.

    Raises:
        ValueError: bad shapes or labels, empty input, or an unknown ``normalize``.

    Example:
        >>> confusion_matrix([0, 1, 1], [[.9, .1], [.2, .8], [.6, .4]], task=Task.BINARY).tolist()
        [[1, 0], [1, 1]]
    """
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix
    from sklearn.metrics import multilabel_confusion_matrix

    if normalize not in (None, "true"):
        raise ValueError(f"normalize must be None or 'true'; got {normalize!r}")
    task = _as_task(task)
    y_true, _, y_pred, k = _labels_and_predictions(y_true, y_score, task, threshold)
    if task.is_multilabel:
        counts = multilabel_confusion_matrix(y_true, y_pred)
    else:
        counts = sk_confusion_matrix(y_true, y_pred, labels=list(range(k)))
    counts = counts.astype(np.int64)
    if normalize is None:
        return counts
    # scikit-learn's normalize="true" turns an empty row into zeros; NaN says "no samples".
    return _ratio(counts.astype(np.float64), counts.sum(axis=-1, keepdims=True).astype(np.float64))


def roc_curves(y_true, y_score, *, task: Task, class_names: Sequence[str] | None = None) -> list[dict]:
    """ROC curve of every class against the rest (binary: of class 1 only; multi-label: per label).

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)``; binary uses ``y_score[:, -1]``.
        task: the dataset's :class:`Task`.
        class_names: one name per class or label; default ``"0"``, ``"1"``, ...

    Returns:
        One dict per curve: ``{"name", "index", "fpr", "tpr", "thresholds", "auc"}`` with lists of
        floats (scikit-learn's ``roc_curve``, collinear points dropped; point i predicts positive
        where score >= thresholds[i]; the first threshold, above every score, is the largest
        score + 1 instead of scikit-learn's ``inf`` so the lists stay JSON-ready). A class with no
        positive or no negative sample gets empty lists and a NaN AUC.

    Raises:
        ValueError: bad shapes or labels, empty input, or ``class_names`` of the wrong length.

    Example:
        >>> curve, = roc_curves([0, 1, 1], [[.9, .1], [.4, .6], [.3, .7]], task=Task.BINARY)
        >>> curve["index"], curve["fpr"], curve["tpr"], curve["auc"]  # thresholds 1.7, .7, .6, .1
        (1, [0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 1.0], 1.0)
    """
    from sklearn.metrics import roc_auc_score as sk_roc_auc_score
    from sklearn.metrics import roc_curve

    task = _as_task(task)
    y_true, y_score = _check(y_true, y_score, task, allow_empty=False)
    names = _class_names(class_names, _num_classes(y_score, task), task)
    curves = []
    for index, positive, score in _one_vs_rest(y_true, y_score, task):
        curve = {"name": names[index], "index": index, "fpr": [], "tpr": [], "thresholds": [], "auc": float("nan")}
        if _has_both(positive):
            fpr, tpr, thresholds = roc_curve(positive.astype(np.int64), score)
            thresholds = np.where(np.isinf(thresholds), score.max() + 1.0, thresholds)
            curve.update(fpr=fpr.tolist(), tpr=tpr.tolist(), thresholds=thresholds.tolist(),
                         auc=float(sk_roc_auc_score(positive.astype(np.int64), score)))
        curves.append(curve)
    return curves


def pr_curves(y_true, y_score, *, task: Task, class_names: Sequence[str] | None = None) -> list[dict]:
    """Precision-recall curve of every class against the rest (binary: class 1; multi-label: per label).

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)``; binary uses ``y_score[:, -1]``.
        task: the dataset's :class:`Task`.
        class_names: one name per class or label; default ``"0"``, ``"1"``, ...

    Returns:
        One dict per curve: ``{"name", "index", "precision", "recall", "thresholds",
        "average_precision"}`` with lists of floats (scikit-learn's ``precision_recall_curve``
        with ``drop_intermediate=True``: precision and recall have one more point than
        thresholds, the final (recall 0, precision 1)). A class with no positive or no negative
        sample gets empty lists and NaN (as in :func:`roc_curves`).

    Raises:
        ValueError: bad shapes or labels, empty input, or ``class_names`` of the wrong length.

    Example:
        >>> curve, = pr_curves([0, 1, 1], [[.9, .1], [.4, .6], [.3, .7]], task=Task.BINARY)
        >>> curve["precision"], curve["recall"], curve["average_precision"]  # thresholds .1, .6, .7
        ([0.6666666666666666, 1.0, 1.0, 1.0], [1.0, 1.0, 0.5, 0.0], 1.0)
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    task = _as_task(task)
    y_true, y_score = _check(y_true, y_score, task, allow_empty=False)
    names = _class_names(class_names, _num_classes(y_score, task), task)
    curves = []
    for index, positive, score in _one_vs_rest(y_true, y_score, task):
        curve = {"name": names[index], "index": index, "precision": [], "recall": [], "thresholds": [],
                 "average_precision": float("nan")}
        if _has_both(positive):
            precision, recall, thresholds = precision_recall_curve(positive.astype(np.int64), score,
                                                                   drop_intermediate=True)
            curve.update(precision=precision.tolist(), recall=recall.tolist(), thresholds=thresholds.tolist(),
                         average_precision=float(average_precision_score(positive.astype(np.int64), score)))
        curves.append(curve)
    return curves


# --- the bootstrap -------------------------------------------------------------------------------
# Each _resampled_* function computes one metric on R resamples at once from a (R, N) matrix of
# how often each sample was drawn: a metric on a resample is the metric on the data with every
# sample weighted by its count. Calling scikit-learn once per resample would be 10-100 times slower.


def _indicators(y_true: np.ndarray, y_pred: np.ndarray, task: Task, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) indicators, each (N, K) float64: one-hot classes, or the multi-label 0/1."""
    if task.is_multilabel:
        return y_true.astype(np.float64), y_pred.astype(np.float64)
    eye = np.eye(k)
    return eye[y_true], eye[y_pred]


def _resampled_accuracy(y_true, y_score, y_pred, task, counts) -> np.ndarray:
    right = (y_pred == y_true).astype(np.float64)
    if task.is_multilabel:
        right = right.mean(axis=1)
    return counts @ right / counts.sum(axis=1)


def _weighted_auc(positive: np.ndarray, score: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mann-Whitney ROC AUC (ties count 1/2, as scikit-learn's) of every resample: (R,)."""
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # first of each tie group
    drawn = counts[:, order]  # (R, N)
    positives = np.add.reduceat(drawn * positive[order], starts, axis=1)  # (R, G) per tie group
    negatives = np.add.reduceat(drawn * ~positive[order], starts, axis=1)
    below = np.cumsum(negatives, axis=1) - negatives  # negatives scored strictly lower
    wins = np.sum(positives * (below + 0.5 * negatives), axis=1)
    return _ratio(wins, positives.sum(axis=1) * negatives.sum(axis=1))


def _resampled_auc(y_true, y_score, y_pred, task, counts) -> np.ndarray:
    columns = [_weighted_auc(positive, score, counts) for _, positive, score in _one_vs_rest(y_true, y_score, task)]
    return _nan_mean(np.stack(columns, axis=1))


def _resampled_macro_f1(y_true, y_score, y_pred, task, counts) -> np.ndarray:
    truth, predicted = _indicators(y_true, y_pred, task, _num_classes(y_score, task))
    true_count, predicted_count, hits = counts @ truth, counts @ predicted, counts @ (truth * predicted)
    return _nan_mean(_ratio(2 * hits, true_count + predicted_count))


def _resampled_balanced_accuracy(y_true, y_score, y_pred, task, counts) -> np.ndarray:
    truth, predicted = _indicators(y_true, y_pred, task, _num_classes(y_score, task))
    recall = _ratio(counts @ (truth * predicted), counts @ truth)  # (R, K)
    if not task.is_multilabel:
        return _nan_mean(recall)
    true_negative_rate = _ratio(counts @ ((1 - truth) * (1 - predicted)), counts @ (1 - truth))
    return _nan_mean(_nan_mean(np.stack([recall, true_negative_rate], axis=2)))


def _kappa_from_tables(tables: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Kappa of confusion tables (..., C, C) under a (C, C) weight matrix, NaN where undefined."""
    total = tables.sum(axis=(-2, -1))
    expected = tables.sum(axis=-1)[..., :, None] * tables.sum(axis=-2)[..., None, :]
    expected = _ratio(expected, total[..., None, None])
    return 1.0 - _ratio((weights * tables).sum(axis=(-2, -1)), (weights * expected).sum(axis=(-2, -1)))


def _resampled_kappa(y_true, y_score, y_pred, task, counts) -> np.ndarray:
    if task.is_multilabel:
        truth, predicted = y_true.astype(np.float64), y_pred.astype(np.float64)
        cells = [counts @ ((truth if t else 1 - truth) * (predicted if p else 1 - predicted))
                 for t in (0, 1) for p in (0, 1)]  # each (R, K)
        tables = np.stack(cells, axis=-1).reshape(*cells[0].shape, 2, 2)  # (R, K, 2, 2)
        return _nan_mean(_kappa_from_tables(tables, 1.0 - np.eye(2)))
    k = _num_classes(y_score, task)
    tables = (counts @ np.eye(k * k)[y_true * k + y_pred]).reshape(-1, k, k)  # (R, K true, K predicted)
    grid = np.arange(k, dtype=np.float64)
    weights = (grid[:, None] - grid[None, :]) ** 2 if _kappa_weights(task) == "quadratic" else 1.0 - np.eye(k)
    return _kappa_from_tables(tables, weights)


def _per_sample_brier(y_true: np.ndarray, y_score: np.ndarray, task: Task) -> np.ndarray:
    if task.is_multilabel:
        return np.mean((y_score - y_true) ** 2, axis=1)
    if y_score.shape[1] == 1:
        return (y_score[:, 0] - y_true) ** 2
    return np.sum((y_score - np.eye(y_score.shape[1])[y_true]) ** 2, axis=1)


def _resampled_brier(y_true, y_score, y_pred, task, counts) -> np.ndarray:
    return counts @ _per_sample_brier(y_true, y_score, task) / counts.sum(axis=1)


def _resampled_ece(y_true, y_score, y_pred, task, counts, n_bins: int = 15) -> np.ndarray:
    confidence, outcome = _confidence_and_outcome(y_true, y_score, task)
    confidence, outcome = confidence.reshape(len(y_true), -1), outcome.reshape(len(y_true), -1)  # (N, cells)
    index = _bin_index(confidence, _bin_edges(n_bins))
    sample = np.repeat(np.arange(len(y_true)), confidence.shape[1]) * n_bins + index.ravel()
    size = len(y_true) * n_bins
    # (N, B): each sample's confidence and outcome sums per bin, so a resample's are counts @ them
    confidence_per_bin = np.bincount(sample, weights=confidence.ravel(), minlength=size).reshape(-1, n_bins)
    outcome_per_bin = np.bincount(sample, weights=outcome.ravel(), minlength=size).reshape(-1, n_bins)
    gaps = np.abs(counts @ outcome_per_bin - counts @ confidence_per_bin).sum(axis=1)
    return gaps / (counts.sum(axis=1) * confidence.shape[1])


_Resampled = Callable[[np.ndarray, np.ndarray, np.ndarray, Task, np.ndarray], np.ndarray]


def _macro_f1_score(y_true, y_score, *, task: Task) -> float:
    return f1_score(y_true, y_score, task=task, average="macro")


# name -> (the metric on the full data, the same metric on count-weighted resamples)
_BOOTSTRAP: dict[str, tuple[Callable[..., float], _Resampled]] = {
    "acc": (accuracy_score, _resampled_accuracy),
    "auc": (roc_auc_score, _resampled_auc),
    "macro_f1": (_macro_f1_score, _resampled_macro_f1),
    "balanced_accuracy": (balanced_accuracy_score, _resampled_balanced_accuracy),
    "kappa": (cohen_kappa_score, _resampled_kappa),
    "brier": (brier_loss, _resampled_brier),
    "ece": (expected_calibration_error_loss, _resampled_ece),
}
BOOTSTRAP_METRICS = tuple(_BOOTSTRAP)
"""Metric names :func:`bootstrap_ci` knows."""


def _resampled_values(y_true: np.ndarray, y_score: np.ndarray, task: Task, names: Sequence[str],
                      counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each named metric on every row of ``counts`` (R, N): how often each sample is in a resample."""
    y_pred = predicted_labels(y_score, task=task)
    return {name: _BOOTSTRAP[name][1](y_true, y_score, y_pred, task, counts) for name in names}


def _strata(y_true: np.ndarray, task: Task) -> list[np.ndarray]:
    """Sample indices of each stratum: per class, or per multi-label combination (singletons pooled)."""
    if task.is_multilabel:
        _, key, size = np.unique(y_true, axis=0, return_inverse=True, return_counts=True)
        key = key.reshape(-1)
        # A combination seen once would be drawn as itself in every resample; pool those instead.
        key = np.where(size[key] >= 2, key, -1)
    else:
        key = y_true
    return [np.flatnonzero(key == value) for value in np.unique(key)]


def bootstrap_ci(y_true, y_score, *, task: Task, metrics: Sequence[str] = ("acc", "auc", "macro_f1"),
                 n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """Stratified percentile bootstrap confidence intervals.

    Every resample draws, with replacement, as many samples from each stratum as it holds, so the
    strata sizes stay fixed. Single-label strata are the classes (every class keeps its count).
    Multi-label strata are the label-combination rows; combinations seen only once are pooled into
    one shared stratum, so when every row is unique (the degenerate case) this is plain resampling
    of all samples. The interval is the (1 - level) / 2 and (1 + level) / 2 percentiles of the
    resampled values; resamples where a metric is undefined (NaN) are dropped for that metric.
    Resamples are weighted copies of the data, scored in one vectorised pass (1,000 resamples of 600
    samples for acc, auc and macro_f1 take a fraction of a second).

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: scores ``(N, K)`` (probabilities for "brier" and "ece").
        task: the dataset's :class:`Task`.
        metrics: names from :data:`BOOTSTRAP_METRICS`: "acc" (:func:`accuracy_score`), "auc"
            (:func:`roc_auc_score`), "macro_f1" (:func:`f1_score`, macro), "balanced_accuracy",
            "kappa", "brier" (:func:`brier_loss`), "ece" (15 bins). Default acc, auc, macro_f1.
        n_resamples: resamples to draw, >= 1. Default 1000.
        level: confidence level in (0, 1). Default 0.95.
        seed: seed of ``numpy.random.default_rng``; the same seed gives the same intervals.

    Returns:
        ``{name: {"value": the metric on the full data, "lower": float, "upper": float,
        "n_resamples": resamples where it was defined}}``; lower and upper are NaN when none was.

    Raises:
        ValueError: bad shapes or labels, empty input, an unknown metric name, ``n_resamples`` < 1
            or ``level`` outside (0, 1).

    Example:
        >>> y_true = np.array([0, 0, 0, 1, 1, 1]); y_score = np.eye(2)[[0, 0, 1, 1, 1, 0]]
        >>> ci = bootstrap_ci(y_true, y_score, task=Task.BINARY, metrics=("acc",), n_resamples=200)
        >>> ci["acc"]["lower"] <= ci["acc"]["value"] <= ci["acc"]["upper"], ci["acc"]["n_resamples"]
        (True, 200)
    """
    task = _as_task(task)
    names = list(metrics) if not isinstance(metrics, str) else [metrics]
    unknown = [name for name in names if name not in _BOOTSTRAP]
    if unknown or not names:
        raise ValueError(f"unknown bootstrap metrics {unknown or names}; valid: {', '.join(BOOTSTRAP_METRICS)}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a whole number >= 1; got {n_resamples!r}")
    if not (isinstance(level, (int, float, np.number)) and 0 < level < 1):
        raise ValueError(f"level must be a number in (0, 1), e.g. 0.95; got {level!r}")
    y_true, y_score = _check(y_true, y_score, task, allow_empty=False)
    if any(name in ("brier", "ece") for name in names):
        _check_probabilities(y_score, task)
    n = len(y_true)
    strata = _strata(y_true, task)
    rng = np.random.default_rng(seed)
    block = max(1, min(int(n_resamples), _BOOTSTRAP_BLOCK_CELLS // n))
    resampled: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, int(n_resamples), block):
        rows = min(block, int(n_resamples) - start)
        # (rows, N) indices: every stratum refilled from its own members
        drawn = np.concatenate([members[rng.integers(0, len(members), size=(rows, len(members)))]
                                for members in strata], axis=1)
        flat = (drawn + n * np.arange(rows)[:, None]).ravel()
        counts = np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)
        for name, values in _resampled_values(y_true, y_score, task, names, counts).items():
            resampled[name].append(values)
    result = {}
    for name in names:
        values = np.concatenate(resampled[name])
        values = values[~np.isnan(values)]
        lower, upper = (np.percentile(values, [50 * (1 - level), 50 * (1 + level)]) if len(values)
                        else (float("nan"), float("nan")))
        result[name] = {"value": float(_BOOTSTRAP[name][0](y_true, y_score, task=task)), "lower": float(lower),
                        "upper": float(upper), "n_resamples": int(len(values))}
    return result


# --- everything at once --------------------------------------------------------------------------


def evaluate_scores(y_true, y_score, *, task: Task, class_names: Sequence[str], n_bootstrap: int = 1000,
                    seed: int = 0, n_bins: int = 15) -> dict:
    """Every metric of this module on one set of predictions, as one JSON-ready dict.

    Args:
        y_true: class ids ``(N,)`` or ``(N, 1)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: probabilities ``(N, K)`` (softmax, or sigmoid per label; binary ``(N, 1)`` or
            ``(N, 2)``); calibration needs them in [0, 1] with single-label rows summing to 1.
        task: the dataset's :class:`Task`.
        class_names: one name per class (binary: 2) or per label.
        n_bootstrap: resamples for the confidence intervals of acc, auc and macro F1; 0 skips them.
        seed: seed of the bootstrap.
        n_bins: calibration bins.

    Returns:
        ``{"schema_version", "n", "task", "acc", "auc", "ci", "per_class", "confusion": {"counts",
        "normalized"}, "roc", "pr", "calibration"}``: Python ints, floats, strings, lists and
        dicts only; undefined values stay float NaN (whoever writes JSON decides how to spell them).
        See :func:`bootstrap_ci`, :func:`per_class_report`, :func:`confusion_matrix`,
        :func:`roc_curves`, :func:`pr_curves` and :func:`calibration`.

    Raises:
        ValueError: bad shapes or labels, empty input, scores that are not probabilities,
            ``class_names`` of the wrong length, or a negative ``n_bootstrap``.

    Example:
        >>> result = evaluate_scores([0, 1, 1, 0], [[.9, .1], [.2, .8], [.6, .4], [.7, .3]],
        ...                          task=Task.BINARY, class_names=["benign", "malignant"], n_bootstrap=0)
        >>> result["acc"], result["auc"], result["ci"], result["confusion"]["counts"]
        (0.75, 1.0, {}, [[2, 0], [1, 1]])
    """
    task = _as_task(task)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a whole number >= 0 (0 skips the intervals); got {n_bootstrap!r}")
    y_true, y_score = _check(y_true, y_score, task, allow_empty=False)
    names = _class_names(class_names, _num_classes(y_score, task), task)
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "n": int(len(y_true)),
        "task": task.value,
        "acc": accuracy_score(y_true, y_score, task=task),
        "auc": roc_auc_score(y_true, y_score, task=task),
        "ci": (bootstrap_ci(y_true, y_score, task=task, n_resamples=n_bootstrap, seed=seed) if n_bootstrap else {}),
        "per_class": per_class_report(y_true, y_score, task=task, class_names=names),
        "confusion": {"counts": confusion_matrix(y_true, y_score, task=task).tolist(),
                      "normalized": confusion_matrix(y_true, y_score, task=task, normalize="true").tolist()},
        "roc": roc_curves(y_true, y_score, task=task, class_names=names),
        "pr": pr_curves(y_true, y_score, task=task, class_names=names),
        "calibration": calibration(y_true, y_score, task=task, n_bins=n_bins),
        **({"ordinal": {"quadratic_kappa": cohen_kappa_score(y_true, y_score, task=task),
                        "mean_absolute_grade_error": mean_absolute_grade_error_loss(y_true, y_score, task=task)}}
           if task is Task.ORDINAL else {}),
    }
