"""Subgroup audit: the same metrics on each subgroup (sex, age band, site) beside the whole set.

A model can be good on average and poor for one group. :func:`subgroup_metrics` scores each
subgroup of one grouping: n, ACC, AUC, sensitivity and specificity (per class and macro),
stratified bootstrap 95% intervals of ACC and AUC, and each value's gap to the whole set.
Subgroups smaller than :data:`MIN_SUBGROUP_N` are kept in the table and marked ``too_small``
(no interval); hiding them would hide exactly the groups an audit is for.

Example:
    >>> import numpy as np
    >>> from medlens.data.registry import Task
    >>> y = np.array([0, 1] * 20); score = np.eye(2)[y] * 0.8 + 0.1
    >>> rows = subgroup_metrics(y, score, np.array(["f", "m"] * 20), task=Task.BINARY,
    ...                         class_names=["neg", "pos"], n_bootstrap=0)
    >>> [(r["value"], r["n"], r["acc"]) for r in rows]
    [('f', 20, 1.0), ('m', 20, 1.0)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medlens.data.registry import Task
from medlens.metrics.classification import (
    _undefined_is_nan,
    accuracy_score,
    bootstrap_ci,
    per_class_report,
    roc_auc_score,
)

# Smallest subgroup that gets a bootstrap interval. A percentile bootstrap of fewer than ~20
# samples under-covers badly (the resamples repeat the few samples there are; Efron & Tibshirani
# 1993, ch. 13), so smaller groups are reported with their point values and marked instead.
MIN_SUBGROUP_N = 20


def _rates(y_true: np.ndarray, y_score: np.ndarray, task: Task, class_names: Sequence[str]) -> dict:
    """Sensitivity (recall) and specificity per class and their macro means."""
    report = per_class_report(y_true, y_score, task=task, class_names=class_names)
    classes = [{"name": c["name"], "sensitivity": c["recall"], "specificity": c["specificity"],
                "support": int(c["support"])} for c in report["classes"]]
    return {"per_class": classes, "sensitivity": report["macro"]["recall"],
            "specificity": report["macro"]["specificity"]}


def subgroup_metrics(y_true, y_score, groups: np.ndarray, *, task: Task, class_names: Sequence[str],
                     n_bootstrap: int = 1000, seed: int = 0, min_n: int = MIN_SUBGROUP_N) -> list[dict]:
    """The metrics of each subgroup of one grouping, in order of the group values.

    Args:
        y_true: class ids ``(N,)`` or 0/1 ``(N, K)`` (multi-label).
        y_score: probabilities ``(N, K)``.
        groups: ``(N,)`` the subgroup of each sample (strings: ``"female"``, ``"[30, 60)"``).
        task: the :class:`Task`.
        class_names: one name per class or label.
        n_bootstrap: resamples for the intervals of ACC and AUC (0: none).
        seed: seed of the bootstrap.
        min_n: subgroups smaller than this get no interval and ``too_small`` True.

    Returns:
        One dict per subgroup: ``value``, ``n``, ``acc``, ``auc``, ``sensitivity``, ``specificity``
        (macro), ``per_class`` (name, sensitivity, specificity, support), ``ci`` (``{"acc": {...},
        "auc": {...}}`` as :func:`~medlens.metrics.bootstrap_ci`, empty when too small or
        ``n_bootstrap`` is 0), ``gap`` (ACC, AUC, sensitivity, specificity minus the whole set's),
        ``too_small``. Undefined values (AUC of a subgroup with one class) are NaN.

    Raises:
        ValueError: ``groups`` of another length than the labels.
    """
    y_true, y_score, groups = np.asarray(y_true), np.asarray(y_score), np.asarray(groups).astype(str)
    if len(groups) != len(y_true):
        raise ValueError(f"groups has {len(groups)} entries for {len(y_true)} samples")
    with _undefined_is_nan():
        whole = {"acc": accuracy_score(y_true, y_score, task=task), "auc": roc_auc_score(y_true, y_score, task=task),
                 **_rates(y_true, y_score, task, class_names)}
        rows = []
        for value in sorted(set(groups.tolist())):
            mask = groups == value
            truth, score = y_true[mask], y_score[mask]
            n = int(mask.sum())
            row = {"value": value, "n": n, "acc": accuracy_score(truth, score, task=task),
                   "auc": roc_auc_score(truth, score, task=task), **_rates(truth, score, task, class_names)}
            too_small = n < min_n
            row["ci"] = ({} if too_small or not n_bootstrap else
                         bootstrap_ci(truth, score, task=task, metrics=("acc", "auc"), n_resamples=n_bootstrap,
                                      seed=seed))
            row["gap"] = {key: float(row[key] - whole[key]) for key in ("acc", "auc", "sensitivity", "specificity")}
            row["too_small"] = too_small
            rows.append(row)
    return rows
