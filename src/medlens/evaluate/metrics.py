"""The official MedMNIST ACC and AUC, as pure functions on numpy arrays.

They follow the MedMNIST v2 evaluator (``medmnist/evaluator.py``: ``getACC`` / ``getAUC``), so
numbers are comparable with the published table:

* binary: AUC of the positive-class (label 1) score ``y_score[:, -1]`` (softmax ``(N, 2)`` or a
  sigmoid ``(N, 1)``); ACC thresholds that score at 0.5.
* multi-class and ordinal: AUC is the mean one-vs-rest AUC over classes; ACC of the argmax.
* multi-label: mean over labels of each label's AUC, and of each label's accuracy at 0.5.

Example:
    >>> import numpy as np
    >>> from medlens.data.registry import Task
    >>> y_true = np.array([0, 1, 1, 0]); y_score = np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3]])
    >>> roc_auc_score(y_true, y_score, task=Task.BINARY), accuracy_score(y_true, y_score, task=Task.BINARY)
    (1.0, 0.75)
"""

from __future__ import annotations

import numpy as np

from medlens.data.registry import Task


def _check(y_true: np.ndarray, y_score: np.ndarray, task: Task) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim != 2 or len(y_score) != len(y_true):
        raise ValueError(f"y_score must be (N, K) with N = len(y_true) = {len(y_true)}; got shape {y_score.shape}")
    if task.is_multilabel and y_true.shape != y_score.shape:
        raise ValueError(f"multi-label y_true must be (N, K) like y_score {y_score.shape}; got {y_true.shape}")
    if not task.is_multilabel:
        if not (y_true.ndim == 1 or (y_true.ndim == 2 and y_true.shape[1] == 1)):
            raise ValueError(f"y_true of a single-label task must be class ids (N,); got shape {y_true.shape}")
        y_true = y_true.reshape(-1).astype(np.int64)
    return y_true, y_score


def roc_auc_score(y_true: np.ndarray, y_score: np.ndarray, *, task: Task) -> float:
    """Official MedMNIST AUC (higher is better).

    Args:
        y_true: class ids ``(N,)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: probabilities ``(N, K)`` (softmax for single-label, sigmoid for multi-label).
        task: the dataset's :class:`Task`.

    Returns:
        The AUC; NaN when it is undefined (a class or label with no positive or no negative
        example: it is left out of the mean, and NaN if none is left).
    """
    from sklearn.metrics import roc_auc_score as sk_auc

    y_true, y_score = _check(y_true, y_score, task)
    if task is Task.BINARY:
        columns = [(y_true == 1, y_score[:, -1])]
    elif task.is_multilabel:
        columns = [(y_true[:, k] > 0, y_score[:, k]) for k in range(y_score.shape[1])]
    else:
        columns = [(y_true == k, y_score[:, k]) for k in range(y_score.shape[1])]
    values = [sk_auc(positive, score) for positive, score in columns if 0 < positive.sum() < len(positive)]
    return float(np.mean(values)) if values else float("nan")


def accuracy_score(y_true: np.ndarray, y_score: np.ndarray, *, task: Task, threshold: float = 0.5) -> float:
    """Official MedMNIST ACC (higher is better); arguments as in :func:`roc_auc_score`."""
    y_true, y_score = _check(y_true, y_score, task)
    if len(y_true) == 0:
        return float("nan")
    if task is Task.BINARY:
        return float(np.mean((y_score[:, -1] > threshold) == (y_true == 1)))
    if task.is_multilabel:
        return float(np.mean((y_score > threshold) == (y_true > 0)))
    return float(np.mean(y_score.argmax(axis=1) == y_true))
