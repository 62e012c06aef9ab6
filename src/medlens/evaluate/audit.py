"""Subgroup audit of an evaluation: predictions joined to the data's metadata by image id, per column.

``medlens evaluate RUN --by sex,age --bins age:0,30,60,120`` groups the evaluated images by each
named metadata column (a ``csv:`` manifest's other columns) and scores every subgroup with
:func:`medlens.metrics.subgroups.subgroup_metrics`. Text columns group by value; numeric
columns are cut into bins: given edges (``age:0,30,60,120`` -> ``[0, 30)``, ``[30, 60)``,
``[60, 120]``) or ``q``-quantiles of the evaluated split (``age:q4``, the default for a numeric
column: quartiles). Missing values form their own ``(missing)`` subgroup, values outside the
edges ``(outside bins)``: nothing is dropped, so the subgroups add up to the whole set.

Example:
    >>> import numpy as np
    >>> bin_labels(np.array(["25", "61", "", "30"]), [0, 30, 60, 120]).tolist()
    ['[0, 30)', '[60, 120]', '(missing)', '[30, 60)']
"""

from __future__ import annotations

import numpy as np

MISSING = "(missing)"
OUTSIDE = "(outside bins)"
DEFAULT_QUANTILES = 4
# A text column with more distinct values than this is an id, not a grouping (refused by name).
MAX_CATEGORIES = 50
AUTO = "auto"  # ``by=["auto"]``: every metadata column fit for an audit (what the report does by default)


def parse_bins(items: list[str] | None) -> dict[str, list[float] | int]:
    """``["age:0,30,60,120", "bmi:q5"]`` -> ``{"age": [0, 30, 60, 120], "bmi": 5}``.

    Raises:
        ValueError: not ``COLUMN:EDGES`` or ``COLUMN:qN``; edges not increasing numbers.
    """
    out: dict[str, list[float] | int] = {}
    for item in items or []:
        column, sep, spec = item.partition(":")
        if not sep or not column or not spec:
            raise ValueError(f"--bins expects COLUMN:EDGES (age:0,30,60,120) or COLUMN:qN (age:q4); got {item!r}")
        if spec.lower().startswith("q"):
            try:
                count = int(spec[1:])
            except ValueError:
                count = 0
            if count < 2:
                raise ValueError(f"--bins {item!r}: quantiles are qN with N >= 2, e.g. {column}:q4")
            out[column] = count
            continue
        try:
            edges = [float(v) for v in spec.split(",")]
        except ValueError:
            raise ValueError(f"--bins {item!r}: edges must be numbers, e.g. {column}:0,30,60,120") from None
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            raise ValueError(f"--bins {item!r}: give at least two increasing edges, e.g. {column}:0,30,60,120")
        out[column] = edges
    return out


def _edge(value: float) -> str:
    return f"{value:g}"


def bin_labels(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bin labels of numeric strings: ``[a, b)`` per bin, the last one closed ``[a, b]``."""
    labels = []
    for text in np.asarray(values).astype(str).tolist():
        if text == "":
            labels.append(MISSING)
            continue
        value = float(text)
        if value < edges[0] or value > edges[-1]:
            labels.append(OUTSIDE)
            continue
        index = min(int(np.searchsorted(edges, value, side="right")) - 1, len(edges) - 2)
        close = "]" if index == len(edges) - 2 else ")"
        labels.append(f"[{_edge(edges[index])}, {_edge(edges[index + 1])}{close}")
    return np.asarray(labels)


def subgroup_values(column: str, values: np.ndarray, bins: list[float] | int | None) -> tuple[np.ndarray, dict]:
    """The subgroup of each value and how it was made (``{"kind": "categorical"}`` or bins and edges).

    Raises:
        ValueError: bins for a column that is not numeric; a text column with more than
            :data:`MAX_CATEGORIES` values.
    """
    from medlens.data.manifest import is_numeric

    values = np.asarray(values).astype(str)
    numeric = is_numeric(values)
    if bins is not None and not numeric:
        raise ValueError(f"--bins {column}: column {column} is not numeric (values such as {values[0]!r})")
    if not numeric:
        distinct = len(set(values.tolist()))
        if distinct > MAX_CATEGORIES:
            raise ValueError(f"column {column} has {distinct} distinct values: an id, not a subgroup; give --bins "
                             f"for numbers, or a column with at most {MAX_CATEGORIES} values")
        return np.where(values == "", MISSING, values), {"kind": "categorical"}
    if bins is None or isinstance(bins, int):
        count = DEFAULT_QUANTILES if bins is None else bins
        present = np.asarray([float(v) for v in values.tolist() if v != ""])
        edges = np.unique(np.quantile(present, np.linspace(0, 1, count + 1))).tolist()
        if len(edges) < 2:
            edges = [edges[0], edges[0]]
            return np.where(values == "", MISSING, f"[{_edge(edges[0])}]"), {"kind": "quantiles", "quantiles": count,
                                                                              "edges": edges}
        return bin_labels(values, edges), {"kind": "quantiles", "quantiles": count, "edges": edges}
    return bin_labels(values, list(bins)), {"kind": "bins", "edges": list(bins)}


def audit(metadata, ids, y_true, y_score, *, columns: list[str], bins: dict | None = None, task, class_names,
          n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """The subgroup audit of predictions on images ``ids``, for each metadata column in ``columns``.

    Args:
        metadata: the source's :class:`~medlens.data.manifest.Metadata`.
        ids: ``(N,)`` image ids of the predictions, in their order.
        y_true: true labels ``(N,)`` or ``(N, K)``.
        y_score: probabilities ``(N, K)``.
        columns: metadata column names, or ``["auto"]``: every column that is numeric or has at
            most :data:`MAX_CATEGORIES` values (the others listed under ``skipped``).
        bins: ``{column: edges or quantile count}`` (see :func:`parse_bins`).
        task: the task; class_names: the model's class names.
        n_bootstrap: resamples of the intervals; seed: their seed.

    Returns:
        ``{"min_n": ..., "columns": {column: {"kind", ["edges", "quantiles"], "groups": [per-subgroup
        rows of subgroup_metrics]}}}``.

    Raises:
        ValueError: a column the data does not have (the available ones listed), bins for a
            column not audited.
    """
    from medlens.metrics.subgroups import MIN_SUBGROUP_N, subgroup_metrics

    bins = bins or {}
    available = sorted(metadata.columns) if metadata is not None else []
    if metadata is None or not available:
        raise ValueError("--by needs data with metadata columns (a csv: manifest); this data has none")
    skipped = []
    if columns == [AUTO]:  # every column fit for an audit: numbers, and text with few values
        from medlens.data.manifest import is_numeric

        columns = [c for c in metadata.columns
                   if is_numeric(metadata.columns[c]) or len(set(metadata.columns[c].tolist())) <= MAX_CATEGORIES]
        skipped = [c for c in metadata.columns if c not in columns]
    unknown = [c for c in columns if c not in metadata.columns]
    if unknown:
        raise ValueError(f"no metadata column {unknown[0]!r}; the data has {', '.join(available)}")
    stray = sorted(set(bins) - set(columns))
    if stray:
        raise ValueError(f"--bins names {', '.join(stray)}, which --by does not audit")
    rows = metadata.rows_of(ids)
    out = {"min_n": MIN_SUBGROUP_N, "columns": {}, **({"skipped": skipped} if skipped else {})}
    for column in columns:
        labels, how = subgroup_values(column, metadata.columns[column][rows], bins.get(column))
        groups = subgroup_metrics(y_true, y_score, labels, task=task, class_names=class_names,
                                  n_bootstrap=n_bootstrap, seed=seed)
        out["columns"][column] = {**how, "groups": groups}
    return out


def format_audit(subgroups: dict) -> str:
    """The printed subgroup table: one row per subgroup with n, ACC, AUC (95% CI), sensitivity, specificity, gaps."""
    from medlens._table import format_table

    def num(value) -> str:
        return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"

    rows = []
    for column, entry in subgroups["columns"].items():
        for group in entry["groups"]:
            ci = group["ci"].get("auc") or {}
            interval = f" [{num(ci['lower'])}, {num(ci['upper'])}]" if ci else ""
            rows.append([column, group["value"] + (" *" if group["too_small"] else ""), str(group["n"]),
                         num(group["acc"]), num(group["auc"]) + interval, num(group["sensitivity"]),
                         num(group["specificity"]), f"{group['gap']['acc']:+.3f}" if np.isfinite(group["gap"]["acc"])
                         else "-", f"{group['gap']['auc']:+.3f}" if np.isfinite(group["gap"]["auc"]) else "-"])
    table = format_table(["column", "subgroup", "n", "ACC", "AUC [95% CI]", "sens", "spec", "ΔACC", "ΔAUC"], rows)
    return (f"subgroups (sensitivity and specificity are macro means over classes; Δ: minus the whole set; "
            f"* fewer than {subgroups['min_n']} images, no interval)\n{table}")
