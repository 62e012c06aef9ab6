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


def merge_groups(*groupings: np.ndarray | None) -> np.ndarray:
    """``(N,)`` int ids of rows that must stay together under every grouping at once.

    Two rows share an id when some grouping puts them together, directly or through other rows
    (a patient's images, plus a byte-identical copy filed under another patient): the connected
    components of the graph whose edges join rows with equal ids (scipy's ``connected_components``).

    Args:
        groupings: ``(N,)`` arrays of ids (any dtype); None entries are ignored.

    Example:
        >>> merge_groups(np.array(["a", "a", "b", "c"]), np.array([0, 1, 1, 3])).tolist()
        [0, 0, 0, 1]
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    given = [np.asarray(g) for g in groupings if g is not None]
    if not given:
        raise ValueError("merge_groups needs at least one grouping")
    n = len(given[0])
    sources, targets = [np.arange(n)], [np.arange(n)]
    for grouping in given:
        _, first, inverse = np.unique(grouping, return_index=True, return_inverse=True)
        sources.append(np.arange(n))
        targets.append(first[inverse.reshape(-1)])  # each row joined to its group's first row
    rows, cols = np.concatenate(sources), np.concatenate(targets)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # Renumber by first appearance, so the ids do not depend on scipy's traversal order.
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse.reshape(-1)].astype(np.int64)


def _fold_count(shares: Sequence[float], n_groups: int) -> int:
    """Folds to cut so each share is a whole number of them (a 0.8/0.1/0.1 split: 10 folds).

    The smallest of 10, 20, 40, 100 where every share is whole (and at least one fold); else 20.
    Never more folds than groups.
    """
    for folds in (10, 20, 40, 100):
        counts = [share * folds for share in shares]
        if all(abs(c - round(c)) < 1e-6 and round(c) >= 1 for c in counts):
            return min(folds, n_groups)
    return min(20, n_groups)


def grouped_partition(
    labels: np.ndarray,
    groups: np.ndarray,
    shares: dict[str, float],
    *,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Rows cut into named parts of about ``shares``, every group in one part, stratified by label.

    scikit-learn's ``StratifiedGroupKFold`` cuts the rows into equal folds that keep groups whole
    and class ratios as even as the groups allow; each part then takes a whole number of folds
    (the last part named first: ``test``, then ``val``, the rest to the first part). A group's
    images are never split, so the achieved shares are met to within a group's size.

    Args:
        labels: ``(N,)`` class ids or ``(N, K)`` multi-label rows.
        groups: ``(N,)`` group ids (patients).
        shares: ``{part: fraction}`` in order, summing to 1, e.g. ``{"train": .8, "val": .1, "test": .1}``.
        seed: shuffles the order in which equal-sized groups are placed.
        class_names: names by class id for messages.

    Returns:
        ``{part: sorted row indices}``, disjoint, covering every row.

    Raises:
        ValueError: fewer groups than parts, or shares that do not sum to 1.

    Example:
        >>> labels = np.array([0, 1] * 50); groups = np.repeat(np.arange(50), 2)
        >>> parts = grouped_partition(labels, groups, {"train": .8, "val": .1, "test": .1})
        >>> [len(parts[s]) for s in ("train", "val", "test")]
        [80, 10, 10]
    """
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    labels, groups = np.asarray(labels), np.asarray(groups)
    names, values = list(shares), list(shares.values())
    if abs(sum(values) - 1) > 1e-6 or any(v <= 0 for v in values):
        raise ValueError(f"shares must be positive and sum to 1; got {shares}")
    n_groups = len(np.unique(groups))
    if n_groups < len(names):
        raise ValueError(f"a grouped {'/'.join(names)} split needs at least {len(names)} groups; "
                         f"the data has {n_groups}")
    folds = _fold_count(values, n_groups)
    key = stratify_key(labels, min_count=1)
    with warnings.catch_warnings():  # "least populated class has fewer members than folds": reported below
        warnings.simplefilter("ignore", UserWarning)
        cutter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        fold_rows = [val for _, val in cutter.split(np.zeros(len(key)), key, groups)]
    counts = [max(1, round(share * folds)) for share in values]
    while sum(counts) > folds:  # rounding gave more folds than exist: take from the largest part
        counts[int(np.argmax(counts))] -= 1
    counts[0] = folds - sum(counts[1:])
    parts, start = {}, 0
    for name, count in reversed(list(zip(names, counts, strict=True))):
        parts[name] = np.sort(np.concatenate(fold_rows[start:start + count])) if count else np.zeros(0, np.int64)
        start += count
    return {name: parts[name].astype(np.int64) for name in names}


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, *, ratios: tuple[float, float, float] = DEFAULT_RATIOS, seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Train/val/test with every group (patient) in one split, stratified as far as groups allow.

    See :func:`grouped_partition`; ``ratios`` as in :func:`stratified_split`.
    """
    train_r, val_r, test_r = parse_ratios(ratios)
    return grouped_partition(labels, groups, {"train": train_r, "val": val_r, "test": test_r}, seed=seed,
                             class_names=class_names)


def grouped_kfold(
    labels: np.ndarray, groups: np.ndarray, *, n_splits: int = 5, seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified group k-fold (scikit-learn's ``StratifiedGroupKFold``): ``(train rows, val rows)`` per fold.

    Every group's rows fall in one validation fold.

    Raises:
        ValueError: ``n_splits`` < 2 or more folds than groups.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"k-fold needs an integer number of folds >= 2, got {n_splits!r}")
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_splits}-fold grouped cross-validation needs at least {n_splits} groups; "
                         f"the data has {n_groups}")
    import warnings

    key = stratify_key(np.asarray(labels), min_count=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cutter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(np.sort(tr), np.sort(va)) for tr, va in cutter.split(np.zeros(len(key)), key, groups)]
