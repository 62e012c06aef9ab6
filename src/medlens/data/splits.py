"""Stratified, seeded splits and k-fold indices (scikit-learn underneath).

Given the same labels in the same order and the same seed, every function returns the same
indices on every run and machine (scikit-learn shuffles with ``RandomState(seed)``, which is
platform-independent); the folder loader lists files in sorted order for that reason.

Example:
    >>> import numpy as np
    >>> labels = np.array([0] * 80 + [1] * 20)
    >>> parts = stratified_split(labels, ratios=(0.7, 0.15, 0.15), seed=0)
    >>> [len(parts[s]) for s in ("train", "val", "test")]
    [70, 15, 15]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_RATIOS = (0.8, 0.1, 0.1)


def parse_ratios(text: str | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """``"0.7/0.15/0.15"`` (or ``"70/15/15"``, or a 3-tuple) to a validated (train, val, test).

    Raises:
        ValueError: not three positive numbers summing to 1 (or 100).
    """
    try:
        values = [float(v) for v in (text.replace(",", "/").split("/") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise ValueError(f"split ratios must be three numbers like 0.8/0.1/0.1, got {text!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"split ratios must be three positive numbers train/val/test like 0.8/0.1/0.1, got {text!r}")
    total = sum(values)
    if abs(total - 100) < 1e-6:
        values = [v / 100 for v in values]
    elif abs(total - 1) > 1e-6:
        raise ValueError(f"split ratios must sum to 1 (or 100), got {text!r} (sum {total:g})")
    return tuple(values)  # type: ignore[return-value]


def stratify_key(labels: np.ndarray, *, min_count: int = 2) -> np.ndarray:
    """A 1-D key to stratify on.

    Single-label ``(N,)`` labels are their own key. A multi-label ``(N, K)`` row is keyed by the
    rarest label it carries (``K`` when it has none), so every label's positives spread over the
    splits and there are at most ``K + 1`` strata (a label powerset has up to ``2**K`` and cannot
    be stratified on small data). Multi-label strata smaller than ``min_count`` are pooled into
    one key, because scikit-learn cannot stratify singletons.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels
    n_labels = labels.shape[1]
    order = np.argsort(labels.sum(axis=0), kind="stable")  # label ids, rarest first
    rank = np.empty(n_labels, dtype=np.int64)
    rank[order] = np.arange(n_labels)
    best = np.where(labels > 0, rank[None, :], n_labels).min(axis=1)  # rank of each row's rarest label
    key = np.where(best < n_labels, order[np.minimum(best, n_labels - 1)], n_labels)
    values, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    rare = counts[inverse.reshape(-1)] < min_count
    return np.where(rare, -1, key)


def _check_stratifiable(key: np.ndarray, need: int, what: str, class_names: Sequence[str] | None = None) -> None:
    values, counts = np.unique(key, return_counts=True)
    small = [(v, c) for v, c in zip(values, counts, strict=True) if c < need]
    if small:
        def name(v: int) -> str:
            known = class_names is not None and 0 <= v < len(class_names)
            return f"class {class_names[v]!r}" if known else f"class {v}"

        listed = ", ".join(f"{name(int(v))} has {c}" for v, c in small[:5])
        raise ValueError(f"{what} needs at least {need} images per class; {listed}")


def _check_room(key: np.ndarray, rows: int, what: str, gives: str) -> None:
    """A stratified part needs at least one row per stratum."""
    strata = len(np.unique(key))
    if rows < strata:
        raise ValueError(f"{what} {gives}, fewer than its {strata} classes; use more images or larger "
                         "val/test ratios")


def _representatives(rows: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """First row of each group among ``rows`` (all rows when there are no groups)."""
    if groups is None:
        return rows
    _, first = np.unique(groups[rows], return_index=True)
    return rows[np.sort(first)]


def _expand(chosen: np.ndarray, rows: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """All ``rows`` whose group has a representative in ``chosen`` (sorted)."""
    if groups is None:
        return np.sort(chosen)
    return np.sort(rows[np.isin(groups[rows], groups[chosen])])


def stratified_split(
    labels: np.ndarray,
    *,
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    seed: int = 0,
    groups: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Split row indices into train/val/test, stratified by class.

    Args:
        labels: ``(N,)`` class ids or ``(N, K)`` multi-label 0/1 rows.
        ratios: (train, val, test) fractions summing to 1. Default 0.8/0.1/0.1.
        seed: random seed; same seed and labels give the same split everywhere.
        groups: optional ``(N,)`` ids; rows sharing an id (identical images) always land in
            the same split. Splitting is stratified on one representative per group.
        class_names: optional names by class id, used in error messages.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted int64 arrays, disjoint, covering all.
    """
    from sklearn.model_selection import train_test_split

    train_r, val_r, test_r = parse_ratios(ratios)
    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    reps = _representatives(everything, groups)
    key = stratify_key(labels[reps], min_count=3)
    _check_stratifiable(key, 3, f"a stratified {train_r:g}/{val_r:g}/{test_r:g} split", class_names)
    # Whole counts, computed here: scikit-learn rounds a float test_size up (ceil), so
    # 0.15 / 0.85 of 85 rows would give 16 validation rows instead of 15.
    n = len(reps)
    n_test, n_val = max(1, round(n * test_r)), max(1, round(n * val_r))
    _check_room(key, min(n_test, n_val, n - n_test - n_val),
                f"a stratified {train_r:g}/{val_r:g}/{test_r:g} split of {n} images",
                f"gives {n - n_test - n_val} training, {n_val} validation and {n_test} test images")
    position = np.arange(n)
    rest, test = train_test_split(position, test_size=n_test, stratify=key, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=key[rest], random_state=seed)
    return {name: _expand(reps[part], everything, groups)
            for name, part in (("train", train), ("val", val), ("test", test))}


def carve_validation(
    labels: np.ndarray,
    train_index: np.ndarray,
    *,
    fraction: float = DEFAULT_RATIOS[1] / (DEFAULT_RATIOS[0] + DEFAULT_RATIOS[1]),
    seed: int = 0,
    groups: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Take a stratified validation part out of ``train_index`` (for train/test-only sources).

    Args:
        labels: labels of the whole dataset, ``(N,)`` or ``(N, K)``.
        train_index: rows of the training split.
        fraction: share of the training rows that becomes validation; default 1/9, which
            leaves train:val at 0.8:0.1 as in the default ratios.
        seed: random seed.
        groups: optional ``(N,)`` ids of identical images, kept on one side together.
        class_names: optional names by class id, used in error messages.

    Returns:
        (train rows, validation rows), sorted and disjoint.
    """
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be between 0 and 1, got {fraction!r}")
    train_index = np.asarray(train_index)
    reps = _representatives(train_index, groups)
    key = stratify_key(np.asarray(labels)[reps])
    _check_stratifiable(key, 2, "carving a stratified validation split from train", class_names)
    n_val = max(1, round(len(reps) * fraction))
    _check_room(key, min(n_val, len(reps) - n_val), f"carving {fraction:.3g} of {len(reps)} training images",
                f"gives {len(reps) - n_val} training and {n_val} validation images")
    train, val = train_test_split(reps, test_size=n_val, stratify=key, random_state=seed)
    return _expand(train, train_index, groups), _expand(val, train_index, groups)


def kfold_indices(
    labels: np.ndarray, *, n_splits: int = 5, seed: int = 0, groups: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold: a list of ``(train rows, validation rows)``, one pair per fold.

    Every row is in exactly one validation fold; folds are disjoint. Rows sharing a ``groups``
    id (identical images) fall in the same fold.

    Raises:
        ValueError: ``n_splits`` < 2, or a class with fewer than ``n_splits`` images.
    """
    from sklearn.model_selection import StratifiedKFold

    if not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"k-fold needs an integer number of folds >= 2, got {n_splits!r}")
    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    reps = _representatives(everything, groups)
    key = stratify_key(labels[reps], min_count=n_splits)
    _check_stratifiable(key, n_splits, f"{n_splits}-fold cross-validation", class_names)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(_expand(reps[tr], everything, groups), _expand(reps[va], everything, groups))
            for tr, va in folds.split(np.zeros(len(key)), key)]


def duplicate_groups(images: np.ndarray) -> np.ndarray:
    """``(N,)`` group ids: rows with byte-identical pixels share one id.

    Hashes each image (BLAKE2b, 128 bits) in one pass; a MedMNIST-sized array of 60,000 images
    takes well under a second.
    """
    import hashlib

    index: dict[bytes, int] = {}
    out = np.empty(len(images), dtype=np.int64)
    for i, row in enumerate(images):
        out[i] = index.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), i)
    return out
