"""CSV/TSV manifests: a table with one row per image, decoded once into uint8 arrays (and cached).

Clinical datasets come as a flat folder of images and a table: a path (or an id that names
the file), one label or several, often a patient or lesion id, the dataset's own split, and
metadata such as sex, age or site. ``csv:PATH`` reads such a table:

    lesion_id,image_id,dx,age,sex           csv:meta.csv  with  image_pattern images/{image_id}.jpg,
    HAM_0000118,ISIC_0027419,bkl,80,male                         label_col dx, group_col lesion_id

Options (:data:`medlens.data.spec.SOURCE_OPTION_KEYS`): ``image_col`` (a path relative to the
table's folder) or ``image_pattern`` (a path built from columns); ``label_col`` (one column, or
several 0/1 columns for multi-label) and ``label_sep`` (several labels in one cell); ``split_col``
(train/val/test); ``group_col`` (patient); ``task`` and ``class_order``. Every other column is
kept as metadata, by image id, for subgroup audits. Bad rows (a missing or unreadable file, an
empty label or group, an unknown split name, a file listed twice) are all named in one error,
or skipped and listed with ``skip_bad``.

The table is read with the standard library's ``csv`` module (a byte-order mark is dropped,
quoted fields keep their commas), so pandas is not a dependency of loading.

Example:
    >>> from medlens.data.manifest import load_manifest  # doctest: +SKIP
    >>> data = load_manifest("../shared/data/ham10000/HAM10000_metadata.csv", size=28,
    ...                      options={"image_pattern": "images/{image_id}.jpg", "label_col": "dx",
    ...                               "group_col": "lesion_id"})  # doctest: +SKIP
    >>> len(set(data.metadata.groups)), data.class_names[:3]  # doctest: +SKIP
    (7470, ('akiec', 'bcc', 'bkl'))
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import string
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlens.data.download import cache_root
from medlens.data.readers import SUPPORTED_SUFFIXES, file_suffix

MANIFEST_CACHE_VERSION = 1
# Column names taken as the image path / label when the options name none (common spellings).
_IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name")
_LABEL_COLUMNS = ("label", "labels", "class", "target")
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f", ""}
# Split names as tables on the web spell them (the same as split folder names).
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "dev": "val", "test": "test", "testing": "test"}


@dataclass
class Metadata:
    """Per-image facts besides pixels and labels, by image id.

    Attributes:
        ids: ``(N,)`` image ids (the same strings as the splits' ``ids``).
        groups: ``(N,)`` patient (or lesion) ids, or None without a group column.
        group_name: the group column's name (``lesion_id``; ``group`` for a folder's regex).
        columns: ``{name: (N,) strings}``, ``""`` where the table had no value.
    """

    ids: np.ndarray
    groups: np.ndarray | None = None
    group_name: str = ""
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def rows_of(self, ids) -> np.ndarray:
        """Row index of each id in ``ids``.

        Raises:
            ValueError: an id that is not in this table (named).
        """
        where = {str(i): row for row, i in enumerate(self.ids.tolist())}
        try:
            return np.asarray([where[str(i)] for i in ids], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"image id {exc.args[0]!r} has no metadata row") from None

    def take(self, ids) -> Metadata:
        """The rows of ``ids``, in that order."""
        rows = self.rows_of(ids)
        return Metadata(ids=self.ids[rows], groups=None if self.groups is None else self.groups[rows],
                        group_name=self.group_name, columns={k: v[rows] for k, v in self.columns.items()})

    def to_record(self) -> dict:
        return {"ids": self.ids.tolist(), "groups": None if self.groups is None else self.groups.tolist(),
                "group_name": self.group_name, "columns": {k: v.tolist() for k, v in self.columns.items()}}

    @classmethod
    def from_record(cls, record: dict) -> Metadata:
        groups = record.get("groups")
        return cls(ids=np.asarray(record["ids"], dtype=str),
                   groups=None if groups is None else np.asarray(groups, dtype=str),
                   group_name=record.get("group_name", ""),
                   columns={k: np.asarray(v, dtype=str) for k, v in record.get("columns", {}).items()})


@dataclass
class ManifestData:
    """Decoded contents of a manifest.

    Attributes:
        images: uint8 ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        labels: int64 ``(N,)`` class ids, or uint8 ``(N, K)`` 0/1 rows (multi-label).
        ids: ``(N,)`` image paths relative to the table's folder (posix), the identity of each image.
        split_of: ``{split: row indices}`` from the split column; empty without one.
        class_names: class (or label) names in id order.
        task: ``binary``, ``multiclass``, ``ordinal`` or ``multilabel``.
        duplicates: ``(N,)`` ids shared by byte-identical images (``splits.duplicate_groups``).
        metadata: the :class:`Metadata` (groups and other columns).
        bad_rows: ``[(row and file, reason)]`` skipped with ``skip_bad``.
        fingerprint: hex digest of the table, the files and the options (also the cache key).
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    split_of: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    task: str
    duplicates: np.ndarray
    metadata: Metadata
    bad_rows: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str = ""


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV or TSV file (BOM dropped; ``.tsv``/``.tab`` or a tab-only header: tabs).

    Raises:
        ValueError: an empty file, a header with empty or repeated names, or a file that is not UTF-8 text.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"csv:{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    first = text.split("\n", 1)[0]
    tabs = file_suffix(path.name) in (".tsv", ".tab") or ("\t" in first and "," not in first)
    delimiter = "\t" if tabs else ";" if (";" in first and "," not in first) else ","
    rows = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if row]
    if not rows:
        raise ValueError(f"csv:{path} is empty; expected a header row and one row per image")
    header = [name.strip() for name in rows[0]]
    if "" in header or len(set(header)) != len(header):
        repeated = sorted({h for h in header if header.count(h) > 1})
        raise ValueError(f"csv:{path} header {header} has " + (f"repeated names {repeated}" if repeated
                                                               else "an empty column name"))
    return header, [[cell.strip() for cell in row] for row in rows[1:]]


def _pattern_fields(pattern: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None]
    except ValueError as exc:
        raise ValueError(f"image_pattern {pattern!r} is not a valid pattern ({exc}); write columns in braces, "
                         "e.g. images/{image_id}.jpg") from None


def _columns(header: list[str], options: Mapping, where: str) -> dict:
    """Which column plays which part; every named column must exist (the header listed otherwise)."""
    def need(name: str, what: str) -> str:
        if name not in header:
            raise ValueError(f"{where}: no column {name!r} ({what}); columns: {', '.join(header)}")
        return name

    pattern = options.get("image_pattern")
    if pattern and options.get("image_col"):
        raise ValueError(f"{where}: give image_col or image_pattern, not both")
    if pattern:
        fields = [need(name, "in image_pattern") for name in _pattern_fields(pattern)]
        if not fields:
            raise ValueError(f"image_pattern {pattern!r} names no column; write one in braces, e.g. "
                             "images/{image_id}.jpg")
        image_col = None
    else:
        image_col = options.get("image_col") or next((c for c in header if c.lower() in _IMAGE_COLUMNS), None)
        if image_col is None:
            raise ValueError(f"{where}: name the image column (--image-col) or a path pattern "
                             f"(--image-pattern 'images/{{id}}.png'); columns: {', '.join(header)}")
        fields = [need(image_col, "image_col")]
    labels = options.get("label_col") or [c for c in header if c.lower() in _LABEL_COLUMNS][:1]
    if not labels:
        raise ValueError(f"{where}: name the label column (--label-col); columns: {', '.join(header)}")
    labels = [need(name, "label_col") for name in labels]
    split_col = need(options["split_col"], "split_col") if options.get("split_col") else None
    group_col = need(options["group_col"], "group_col") if options.get("group_col") else None
    used = {*fields, *labels, split_col, group_col}
    return {"image_col": image_col, "pattern": pattern, "labels": labels, "split": split_col, "group": group_col,
            "metadata": [c for c in header if c not in used]}


def _sorted_names(values: set[str]) -> list[str]:
    """Class names in grade order when all are numbers (``2`` before ``10``), else by name."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def _label_of(row: dict, cols: dict, options: Mapping) -> tuple[object, str | None]:
    """(label value, None) or (None, reason): a class name, or a set of positive label names."""
    names = cols["labels"]
    sep = options.get("label_sep")
    if len(names) > 1:
        positives = set()
        for name in names:
            value = row[name].lower()
            if value not in _TRUE | _FALSE:
                return None, f"label column {name} holds {row[name]!r}, not 0/1"
            if value in _TRUE:
                positives.add(name)
        return frozenset(positives), None
    value = row[names[0]]
    if not value:
        return None, f"empty label in column {names[0]}"
    if sep:
        return frozenset(v.strip() for v in value.split(sep) if v.strip()), None
    return value, None


def _classes_and_task(values: list, cols: dict, options: Mapping, where: str) -> tuple[tuple[str, ...], str]:
    multilabel = len(cols["labels"]) > 1 or bool(options.get("label_sep"))
    task = options.get("task")
    if multilabel:
        if task not in (None, "multilabel"):
            raise ValueError(f"{where}: several label columns (or label_sep) make a multilabel task, not {task}")
        present = set().union(*values) if values else set()
        names = list(cols["labels"]) if len(cols["labels"]) > 1 else _sorted_names(present)
        task = "multilabel"
    else:
        if task == "multilabel":
            raise ValueError(f"{where}: task multilabel needs several label columns (--label-col a,b,c) or a "
                             "separator of labels in one cell (--label-sep '|')")
        names = _sorted_names(set(values))
    order = options.get("class_order")
    if order:
        missing, extra = sorted(set(names) - set(order)), sorted(set(order) - set(names))
        if missing or len(set(order)) != len(order):
            raise ValueError(f"{where}: class_order {order} must list each class once; the labels hold "
                             f"{names}" + (f" (missing: {missing})" if missing else ""))
        if extra and not multilabel:
            warnings.warn(f"{where}: class_order names {extra}, which no row has", stacklevel=3)
        names = list(order)
    if len(names) < 2:
        raise ValueError(f"{where}: the labels hold {len(names)} class(es) ({names}); a classifier needs at least two")
    if task is None:
        task = "binary" if len(names) == 2 else "multiclass"
    if task == "binary" and len(names) != 2:
        raise ValueError(f"{where}: task binary needs two classes; the labels hold {len(names)}: {names}")
    return tuple(names), task


def load_manifest(
    path: str | os.PathLike,
    *,
    size: int | None = 64,
    channels: int | None = None,
    skip_bad: bool = False,
    options: Mapping[str, object] | None = None,
    workers: int | None = None,
    use_cache: bool = True,
) -> ManifestData:
    """Read a CSV/TSV manifest and decode its images into arrays.

    Args:
        path: the table; image paths are relative to its folder.
        size: edge every image is resized to (None: native sizes, which must agree). Default 64.
        channels: 1 or 3 to force; None: 3 if any image has colour, else 1.
        skip_bad: skip bad rows (listed in ``bad_rows``) instead of raising.
        options: the manifest options (see the module docstring), as checked by
            :func:`medlens.data.spec.check_source_options`.
        workers: decoding processes (default: all cores).
        use_cache: read / write the decoded arrays under ``cache_root()/manifests``.

    Returns:
        :class:`ManifestData`.

    Raises:
        FileNotFoundError: the table does not exist.
        ValueError: a named column that is not in the table, bad rows (all named, unless
            ``skip_bad``), fewer than two classes, mixed 2D and 3D files, a bad ``class_order``.
    """
    from medlens.data.folder import SPLIT_ALIASES, decode_files, stack_decoded
    from medlens.data.spec import check_source_options
    from medlens.data.splits import duplicate_groups

    path = Path(path).expanduser()
    where = f"csv:{path}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist" + (" (it is a folder; use folder:)" if path.is_dir() else ""))
    options = check_source_options(options)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3 (or unset to decide from the images), got {channels!r}")
    header, table = read_table(path)
    cols = _columns(header, options, where)
    base = path.parent
    bad: list[tuple[str, str]] = []
    entries = []  # (row number, relative path, label value, split, group, row dict)
    seen: dict[str, int] = {}
    for number, cells in enumerate(table, start=2):  # line 1 is the header
        if len(cells) != len(header):
            bad.append((f"line {number}", f"{len(cells)} fields, the header has {len(header)}"))
            continue
        row = dict(zip(header, cells, strict=True))
        rel = row[cols["image_col"]] if cols["image_col"] else cols["pattern"].format_map(row)
        rel = rel.replace("\\", "/")
        named = f"line {number} ({rel or 'no file'})"
        label, reason = _label_of(row, cols, options)
        split = None
        if reason is None and not rel:
            reason = "empty image path"
        if reason is None and cols["split"]:
            split = _SPLIT_NAMES.get(row[cols["split"]].lower()) or SPLIT_ALIASES.get(row[cols["split"]].lower())
            if split is None:
                reason = (f"unknown split {row[cols['split']]!r} in column {cols['split']} "
                          f"(valid: {', '.join(sorted(_SPLIT_NAMES))})")
        if reason is None and cols["group"] and not row[cols["group"]]:
            reason = f"empty group id in column {cols['group']}"
        if reason is None and file_suffix(rel) not in SUPPORTED_SUFFIXES:
            reason = f"unsupported file type {file_suffix(rel) or '(none)'}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        if reason is None and rel in seen:
            reason = f"the same file as line {seen[rel]}"
        if reason is None and not (base / rel).is_file():
            reason = "missing file"
        if reason is not None:
            bad.append((named, reason))
            continue
        seen[rel] = number
        entries.append((number, rel, label, split, row[cols["group"]] if cols["group"] else None, row))

    stamps = [(rel, (base / rel).stat().st_size, (base / rel).stat().st_mtime_ns) for _, rel, *_ in entries]
    key = hashlib.sha256(json.dumps(
        [MANIFEST_CACHE_VERSION, str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest(), options,
         size, channels, skip_bad, stamps], default=str).encode()).hexdigest()[:24]
    cache_dir = cache_root() / "manifests" / key
    if use_cache and (cache_dir / "meta.json").exists():
        return _load_cached(cache_dir, key)

    decoded = decode_files(base, [rel for _, rel, *_ in entries], size=size, workers=workers)
    for entry, (_, error, _) in zip(entries, decoded, strict=True):
        if error is not None:
            bad.append((f"line {entry[0]} ({entry[1]})", f"unreadable: {error}"))
    keep = [i for i, (_, error, _) in enumerate(decoded) if error is None]
    if bad and not skip_bad:
        bad.sort(key=lambda item: int(item[0].split()[1]))
        listed = "; ".join(f"{name}: {reason}" for name, reason in bad)
        raise ValueError(f"{len(bad)} bad row(s) in {where}: {listed}. Fix or remove them, or pass --skip-bad "
                         "(skip_bad=True) to leave them out and list them")
    if not keep:
        raise ValueError(f"no usable rows in {where}")
    entries = [entries[i] for i in keep]
    class_names, task = _classes_and_task([e[2] for e in entries], cols, options, where)
    if task == "multilabel":
        labels = np.array([[name in e[2] for name in class_names] for e in entries], dtype=np.uint8)
        unknown = sorted(set().union(*(e[2] for e in entries)) - set(class_names))
        if unknown:
            raise ValueError(f"{where}: labels {unknown} are not in class_order {list(class_names)}")
    else:
        labels = np.array([class_names.index(e[2]) for e in entries], dtype=np.int64)
    images = stack_decoded(decoded, keep, channels, where)
    del decoded
    ids = np.asarray([e[1] for e in entries])
    tags = np.asarray([e[3] or "" for e in entries])
    split_of = {s: np.flatnonzero(tags == s) for s in ("train", "val", "test") if (tags == s).any()}
    if cols["split"] and "train" not in split_of:
        raise ValueError(f"{where}: the split column {cols['split']} names no train rows; medlens needs a "
                         "training split (val and test are carved out of it when missing)")
    metadata = Metadata(
        ids=ids, groups=np.asarray([e[4] for e in entries]) if cols["group"] else None,
        group_name=cols["group"] or "",
        columns={name: np.asarray([e[5][name] for e in entries], dtype=str) for name in cols["metadata"]},
    )
    data = ManifestData(images=images, labels=labels, ids=ids, split_of=split_of, class_names=class_names, task=task,
                        duplicates=duplicate_groups(images), metadata=metadata, bad_rows=bad, fingerprint=key)
    if use_cache:
        _save_cached(cache_dir, data)
    return data


def _save_cached(cache_dir: Path, data: ManifestData) -> None:
    """One cache entry, whole or not at all (:func:`~medlens.data.folder.save_cache_entry`)."""
    from medlens.data.folder import save_cache_entry

    meta = {"class_names": list(data.class_names), "task": data.task,
            "split_of": {s: idx.tolist() for s, idx in data.split_of.items()},
            "bad_rows": data.bad_rows, "metadata": data.metadata.to_record()}
    save_cache_entry(cache_dir, {name: getattr(data, name) for name in ("images", "labels", "ids", "duplicates")},
                     meta)


def _load_cached(cache_dir: Path, key: str) -> ManifestData:
    meta = json.loads((cache_dir / "meta.json").read_text())
    return ManifestData(
        images=np.load(cache_dir / "images.npy", mmap_mode="r"), labels=np.load(cache_dir / "labels.npy"),
        ids=np.load(cache_dir / "ids.npy"),
        split_of={s: np.asarray(v, dtype=np.int64) for s, v in meta["split_of"].items()},
        class_names=tuple(meta["class_names"]), task=meta["task"], duplicates=np.load(cache_dir / "duplicates.npy"),
        metadata=Metadata.from_record(meta["metadata"]), bad_rows=[tuple(b) for b in meta["bad_rows"]],
        fingerprint=key,
    )


def is_numeric(values: np.ndarray) -> bool:
    """Whether every non-empty value reads as a finite number (and at least one does)."""
    seen = False
    for value in values.tolist():
        if value == "":
            continue
        try:
            if not math.isfinite(float(value)):
                return False
        except ValueError:
            return False
        seen = True
    return seen
