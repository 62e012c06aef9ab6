"""Class imbalance: loss weights and oversampling weights from the training labels.

Example:
    >>> import numpy as np
    >>> class_weights(np.array([0, 0, 0, 1]), 2)
    array([0.66666667, 2.        ])
    >>> oversample_weights(np.array([0, 0, 0, 1]), 2)
    array([0.33333333, 0.33333333, 0.33333333, 1.        ])
"""

from __future__ import annotations

import numpy as np

from medlens.data.splits import stratify_key


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``balanced`` loss weights, ``(n_classes,)``.

    Single-label: scikit-learn's ``compute_class_weight("balanced")``, ``n / (k * count)``.
    Multi-label ``(N, K)`` 0/1 rows: each label's ``negatives / positives``, the ``pos_weight``
    of a binary cross-entropy, which balances each label on its own.

    Raises:
        ValueError: a class (or label) has no training example, so no weight can balance it.
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    if labels.ndim == 2:
        positives = labels.sum(axis=0).astype(np.float64)
        if (positives == 0).any():
            raise ValueError(f"label {int(np.argmin(positives))} has no positive training example: "
                             "balanced class weights are undefined; use --class-weights none")
        return (len(labels) - positives) / positives
    counts = np.bincount(labels, minlength=n_classes)
    if (counts == 0).any():
        raise ValueError(f"class {int(np.argmin(counts))} has no training example: "
                         "balanced class weights are undefined; use --class-weights none")
    return compute_class_weight("balanced", classes=np.arange(n_classes), y=labels)


def oversample_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-image sampling weights ``(N,)`` that give every class the same expected share.

    Each image weighs ``1 / count(its class)``; a multi-label row counts as its rarest label
    (the same key the splits stratify on), and rows with no label as one more class.
    """
    key = stratify_key(np.asarray(labels), min_count=1)
    counts = np.bincount(key, minlength=n_classes + 1).astype(np.float64)
    return 1.0 / counts[key]
