"""Pure metric functions on numpy arrays (the lowest layer above ``data``; see ARCHITECTURE.md).

The functions live in :mod:`medlens.metrics.classification`; the public ones are listed here.

Example:
    >>> import numpy as np
    >>> from medlens.data.registry import Task
    >>> accuracy_score(np.array([0, 1]), np.array([[0.8, 0.2], [0.3, 0.7]]), task=Task.BINARY)
    1.0
"""

from medlens.metrics.classification import (
    BOOTSTRAP_METRICS,
    METRICS_SCHEMA_VERSION,
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
    mean_absolute_grade_error_loss,
    per_class_report,
    pr_curves,
    predicted_labels,
    roc_auc_score,
    roc_curves,
)

__all__ = [
    "BOOTSTRAP_METRICS", "METRICS_SCHEMA_VERSION", "accuracy_score", "balanced_accuracy_score", "bootstrap_ci",
    "brier_loss", "calibration", "cohen_kappa_score", "confusion_matrix", "evaluate_scores",
    "expected_calibration_error_loss", "f1_score", "mean_absolute_grade_error_loss", "per_class_report", "pr_curves",
    "predicted_labels", "roc_auc_score", "roc_curves",
]
