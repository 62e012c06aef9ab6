"""``resolve(spec)``: one entry point from a dataset spec string to train/val/test arrays.

Specs (source prefix as in timm's ``create_dataset``):

    breastmnist          MedMNIST dataset at 28 px, from the data root (downloaded if missing)
    breastmnist@64       ... at 64 px (2D: 28/64/128/224, 3D: 28/64)
    folder:PATH          a directory or .zip of class folders, optionally under train/val/test
    folder:PATH@128      ... resized to 128 px (default 64)
    npz:FILE.npz         a local file in the MedMNIST layout
    csv:FILE.csv         a CSV/TSV manifest: image paths (or ids), labels, optional split, patient and
                         metadata columns (see :mod:`medlens.data.manifest`); default 64 px

Each prefix is a :class:`~medlens.data.spec.DataSource` in the source registry
(:mod:`medlens.data.spec`, where the four above are registered); their resolvers are the
``_resolve_*`` functions here, and a new source is one more ``register_source``.

Example:
    >>> from medlens.data import resolve  # doctest: +SKIP
    >>> source = resolve("breastmnist", root="../shared/data/medmnist")  # doctest: +SKIP
    >>> source.splits["train"].images.shape  # doctest: +SKIP
    (546, 1, 28, 28)
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medlens._io import atomic_path
from medlens.data.download import cached_md5, data_root, download, verify_md5
from medlens.data.npz import DEFAULT_MMAP_THRESHOLD, load_npz_arrays
from medlens.data.registry import SPLITS, DatasetInfo, Task, get_dataset_info, list_datasets
from medlens.data.spec import ResolveOptions, check_source_options, parse_spec
from medlens.data.splits import (
    DEFAULT_RATIOS,
    carve_validation,
    duplicate_groups,
    grouped_kfold,
    grouped_partition,
    grouped_split,
    kfold_indices,
    merge_groups,
    parse_ratios,
    stratified_split,
)

if TYPE_CHECKING:
    from medlens.data.manifest import Metadata


@dataclass
class TensorSplit:
    """One split held as arrays; batches are taken by index, never per-item file I/O.

    Attributes:
        images: uint8 ``(N, C, H, W)`` or ``(N, C, D, H, W)``; in RAM, memory-mapped, or a
            strided view of the file's own layout (MedMNIST stores RGB as ``(N, H, W, 3)``).
        labels: int64 ``(N,)`` class ids, or uint8 ``(N, K)`` 0/1 rows for multi-label tasks.
        ids: ``(N,)`` strings naming each image (relative file path, or ``split/index``).
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        assert len(self.images) == len(self.labels) == len(self.ids), "split arrays disagree in length"

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the rows ``index``: images ``(B, C, ...)`` uint8 and labels.

        The image copy keeps the storage's memory layout: RGB MedMNIST files come out
        channels-last in memory (what 2D convnets run fastest on), at the cost of one gather;
        forcing C order here would add a transpose that costs 13x the gather at 224 px.
        """
        index = np.asarray(index)
        return self.images[index], self.labels[index]

    def subset(self, index: np.ndarray) -> TensorSplit:
        """A new split holding only the rows ``index`` (copied)."""
        index = np.asarray(index)
        return TensorSplit(np.ascontiguousarray(self.images[index]), self.labels[index], self.ids[index])

    def class_counts(self, n_classes: int) -> np.ndarray:
        """Images per class ``(n_classes,)``; for multi-label, positives per label."""
        if self.labels.ndim == 2:
            return self.labels.sum(axis=0).astype(np.int64)
        return np.bincount(self.labels, minlength=n_classes)


@dataclass
class Source:
    """A resolved dataset: its facts, its splits, and how the splits were made.

    Attributes:
        spec: the spec string as resolved (``"breastmnist@28"``).
        info: the :class:`DatasetInfo` (built on the fly for folders and local ``.npz``).
        size: edge length of the images in pixels.
        splits: ``{"train": TensorSplit, "val": ..., "test": ...}``.
        split_method: ``official``, ``folders``, ``folders+val``, or ``stratified``.
        seed: seed used for any split medlens made.
        ratios: (train, val, test) ratios used when medlens split the data.
        fingerprint: hex digest identifying the data and the split.
        bad_files: ``[(file, reason)]`` skipped with ``skip_bad``.
        warnings: things a user should know (identical images in two splits).
        metadata: per-image groups (patients) and table columns (sex, age, site) by image id, for
            sources that have them (``csv:``, ``folder:`` with ``group_regex``); else None.
        leakage: the :func:`~medlens.data.leakage.find_leakage` report of the splits (sources
            that decode images); empty when not checked.
    """

    spec: str
    info: DatasetInfo
    size: int
    splits: dict[str, TensorSplit]
    split_method: str
    seed: int = 0
    ratios: tuple[float, float, float] = DEFAULT_RATIOS
    fingerprint: str = ""
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metadata: Metadata | None = None
    leakage: dict = field(default_factory=dict)

    def groups_of(self, split: str) -> np.ndarray | None:
        """``(N,)`` group (patient) ids of a split's rows, or None without groups."""
        if self.metadata is None or self.metadata.groups is None:
            return None
        return self.metadata.groups[self.metadata.rows_of(self.splits[split].ids)]

    def split_summary(self) -> list[str]:
        """Lines that say how the split came out: images (and groups) per split, share, class ratios."""
        total = sum(len(split) for split in self.splits.values()) or 1
        lines = []
        for name, split in self.splits.items():
            counts = split.class_counts(self.info.n_classes)
            ratios = ", ".join(f"{c} {n / max(1, len(split)):.1%}" for c, n in
                               zip(self.info.class_names, counts.tolist(), strict=True))
            groups = self.groups_of(name)
            grouped = "" if groups is None else f", {len(np.unique(groups))} {self.metadata.group_name or 'group'}s"
            lines.append(f"{name}: {len(split)} images ({len(split) / total:.1%}){grouped}; classes {ratios}")
        return lines

    def class_counts(self) -> dict[str, np.ndarray]:
        """``{split: counts per class}`` (positives per label for multi-label)."""
        return {name: split.class_counts(self.info.n_classes) for name, split in self.splits.items()}

    def save_splits(self, path: str | os.PathLike) -> Path:
        """Write the split (ids per split, method, seed, ratios) as JSON; atomic rename.

        Returns the path written. Reload with :func:`load_split_ids`.
        """
        record = {
            "spec": self.spec,
            "method": self.split_method,
            "seed": self.seed,
            "ratios": list(self.ratios),
            "fingerprint": self.fingerprint,
            "splits": {name: split.ids.tolist() for name, split in self.splits.items()},
        }
        if self.metadata is not None:
            if self.metadata.groups is not None:
                record["group_column"] = self.metadata.group_name
                record["groups"] = {name: self.groups_of(name).tolist() for name in self.splits}
            record["metadata_columns"] = sorted(self.metadata.columns)
        if self.leakage:
            record["leakage"] = self.leakage
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        return Path(path)


def load_split_ids(path: str | os.PathLike) -> dict[str, list[str]]:
    """The ids per split from a file written by :meth:`Source.save_splits`."""
    return json.loads(Path(path).read_text())["splits"]


def resolve(
    spec: str,
    *,
    root: str | os.PathLike | None = None,
    size: int | None = None,
    download_missing: bool = True,
    verify: bool = True,
    seed: int = 0,
    ratios: tuple[float, float, float] | str = DEFAULT_RATIOS,
    channels: int | None = None,
    skip_bad: bool = False,
    mmap_threshold: int | None = None,
    source_options: dict | None = None,
    unsplit: bool = False,
) -> Source:
    """Resolve a dataset spec into a :class:`Source` with train/val/test splits.

    Args:
        spec: see the module docstring.
        root: data root for MedMNIST files (else ``$MEDLENS_DATA``, else ``~/.medlens/data``).
        size: image edge in pixels; must agree with an ``@SIZE`` in the spec when both are
            given. Default: the source's (MedMNIST 28, folders 64, ``npz:`` the file's own).
        download_missing: download a missing MedMNIST file (else ``FileNotFoundError``).
        verify: check a MedMNIST file's MD5 (once per file version; remembered in the cache).
        seed: seed for splits medlens makes.
        ratios: train/val/test ratios for sources without a split, e.g. ``"0.7/0.15/0.15"``.
        channels: sources that decode images (``folder:``) only: force 1 or 3 channels.
        skip_bad: sources that decode images only: skip unreadable files and list them in ``bad_files``.
        mmap_threshold: bytes above which MedMNIST arrays are memory-mapped (default 2 GiB).
        source_options: ``csv:`` columns and, for ``csv:`` and ``folder:``, ``group_regex``,
            ``task`` and ``class_order`` (:func:`~medlens.data.spec.check_source_options`).
        unsplit: ``folder:`` and ``csv:`` only: every image in ``train``, val and test empty (for
            evaluating every image of an external dataset).

    Raises:
        ValueError: unknown dataset or source prefix (valid ones listed), unavailable size, bad
            file contents.
        FileNotFoundError: a missing path, or a missing file with downloading off.
        DownloadError: a failed download or checksum mismatch.
    """
    parsed = parse_spec(spec)
    if size is not None and parsed.size is not None and size != parsed.size:
        raise ValueError(f"size {size} disagrees with the size in dataset spec {spec!r}")
    if size is None:
        size = parsed.size if parsed.size is not None else parsed.source.default_size
    options = ResolveOptions(
        root=root, download_missing=download_missing, verify=verify, seed=seed, ratios=parse_ratios(ratios),
        channels=channels, skip_bad=skip_bad,
        mmap_threshold=DEFAULT_MMAP_THRESHOLD if mmap_threshold is None else mmap_threshold,
        source_options=check_source_options(source_options), unsplit=unsplit,
    )
    if options.source_options and parsed.source.prefix not in ("csv", "folder"):
        raise ValueError(f"options {', '.join(sorted(options.source_options))} apply to csv: and folder: data, "
                         f"not to {spec!r}")
    return parsed.source.resolve(parsed.target, size=size, options=options)


def _resolve_medmnist(name: str, *, size: int, options: ResolveOptions) -> Source:
    """A MedMNIST dataset at ``size`` px from the data root, downloaded if missing (and allowed)."""
    info = get_dataset_info(name)
    remote = info.file(size)
    folder = data_root(options.root)
    path = folder / remote.filename
    if not path.exists():
        if not options.download_missing:
            raise FileNotFoundError(
                f"{path} not found; run `medlens fetch {info.name} --size {size}` or download "
                f"{remote.url} (MD5 {remote.md5}) into {folder}"
            )
        download(remote, folder)
    elif options.verify:
        verify_md5(path, remote.md5, remote.url)
    arrays = load_npz_arrays(path, mmap_threshold=options.mmap_threshold)
    return _medmnist_source(f"{info.name}@{size}", info, arrays, size, fingerprint=remote.md5)


def _resolve_npz(target: str, *, size: int | None, options: ResolveOptions) -> Source:
    """A local file in the MedMNIST layout; ``size`` None accepts the file's own."""
    path = Path(target).expanduser()
    arrays = load_npz_arrays(path, mmap_threshold=options.mmap_threshold)
    info = _npz_info(path, arrays)
    return _medmnist_source(f"npz:{path}", info, arrays, size, fingerprint=cached_md5(path))


def _npz_info(path: Path, arrays: dict[str, np.ndarray]) -> DatasetInfo:
    """Facts of a local MedMNIST-layout file: the registry's when the name matches, else inferred."""
    stem = path.stem.split("_")[0].lower()
    if stem in list_datasets():
        return get_dataset_info(stem)
    images, labels = arrays["train_images"], arrays["train_labels"]
    labels2d = _as_2d(labels)
    if labels2d.shape[1] > 1:
        task, names = Task.MULTILABEL, tuple(f"label_{i}" for i in range(labels2d.shape[1]))
    else:
        all_labels = np.concatenate([arrays[f"{s}_labels"].reshape(-1) for s in SPLITS])
        n_classes = int(all_labels.max()) + 1 if all_labels.size else 0
        if n_classes < 2:
            raise ValueError(f"{path}: labels hold {n_classes} class(es); a classifier needs at least two")
        task = Task.BINARY if n_classes == 2 else Task.MULTICLASS
        names = tuple(str(i) for i in range(n_classes))
    rgb = images.ndim == 4 and images.shape[-1] == 3
    spatial_dims = 3 if images.ndim == 4 and not rgb else 2
    return DatasetInfo(
        name=path.stem, task=task, class_names=names, n_channels=3 if rgb else 1,
        spatial_dims=spatial_dims, sizes=(images.shape[1],),
        split_sizes={s: len(arrays[f"{s}_labels"]) for s in SPLITS}, source="npz",
    )


def _as_channels_first(images: np.ndarray, info: DatasetInfo, where: str) -> np.ndarray:
    """MedMNIST layout -> ``(N, C, ...)`` view (no copy)."""
    if info.spatial_dims == 2 and images.ndim == 3 and info.n_channels == 1:
        return images[:, None]
    if info.spatial_dims == 2 and images.ndim == 4 and images.shape[-1] == info.n_channels == 3:
        return images.transpose(0, 3, 1, 2)
    if info.spatial_dims == 3 and images.ndim == 4 and info.n_channels == 1:
        return images[:, None]
    expected = {2: "(N, H, W)" if info.n_channels == 1 else "(N, H, W, 3)", 3: "(N, D, H, W)"}[info.spatial_dims]
    raise ValueError(f"{where}: images have shape {images.shape}; {info.name} expects {expected}")


def _medmnist_source(spec: str, info: DatasetInfo, arrays: dict[str, np.ndarray], size: int | None,
                     *, fingerprint: str) -> Source:
    where = spec
    splits = {}
    for split in SPLITS:
        images = _as_channels_first(arrays[f"{split}_images"], info, where)
        edge = images.shape[2]
        if size is not None and images.shape[2:] != (size,) * info.spatial_dims:
            raise ValueError(
                f"{where}: {split} images are {'x'.join(map(str, images.shape[2:]))}, not {size} px; "
                f"the file does not hold the size asked for (available for {info.name}: "
                f"{', '.join(map(str, info.sizes))})"
            )
        if images.dtype != np.uint8:
            raise ValueError(f"{where}: {split} images have dtype {images.dtype}; MedMNIST files hold uint8")
        labels = np.asarray(arrays[f"{split}_labels"])
        if len(labels) != len(images):
            raise ValueError(f"{where}: {len(images)} {split} images but {len(labels)} labels")
        labels = _labels_for_task(labels, info, f"{where} {split}")
        ids = np.char.add(f"{split}/", np.arange(len(labels)).astype(str))
        splits[split] = TensorSplit(images, labels, ids)
    return Source(spec=spec, info=info, size=size or edge, splits=splits, split_method="official",
                  fingerprint=fingerprint)


def _as_2d(labels: np.ndarray) -> np.ndarray:
    """Labels as ``(N, K)``: ``(N,)`` -> ``(N, 1)``; works for empty splits too."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return labels[:, None]
    if labels.ndim != 2:
        raise ValueError(f"labels have shape {labels.shape}; expected (N,), (N, 1) or (N, K)")
    return labels


def _labels_for_task(labels: np.ndarray, info: DatasetInfo, where: str) -> np.ndarray:
    """MedMNIST ``(N, 1)``/``(N, K)`` labels -> int64 ``(N,)`` or uint8 ``(N, K)``; range-checked."""
    labels = _as_2d(labels)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise ValueError(f"{where}: labels must be whole numbers (class ids), found fractional values "
                         f"such as {labels[labels != np.round(labels)][0]:g}")
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"{where}: labels have dtype {labels.dtype}; expected integer class ids")
    if info.task is Task.MULTILABEL:
        if labels.shape[1] != info.n_classes or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{where}: multi-label rows must be 0/1 vectors of length {info.n_classes}, "
                             f"got shape {labels.shape}")
        return labels.astype(np.uint8)
    if labels.shape[1] != 1:
        raise ValueError(f"{where}: expected one label per image, got shape {labels.shape}")
    labels = labels[:, 0].astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= info.n_classes):
        raise ValueError(f"{where}: label values {labels.min()}..{labels.max()} outside 0..{info.n_classes - 1}")
    return labels


def _resolve_folder(target: str, *, size: int, options: ResolveOptions) -> Source:
    """A directory or ``.zip`` of class folders, decoded at ``size`` px and split (see :func:`_split_rows`)."""
    from medlens.data.folder import default_folder_size, load_folder
    from medlens.data.spec import DEFAULT_FOLDER_SIZE

    if size is None:  # neither the spec nor the caller chose: 64 for images, volumes their own (<= 64)
        size = default_folder_size(target, DEFAULT_FOLDER_SIZE)
    seed, ratios, extra = options.seed, options.ratios, options.source_options
    unknown = sorted(set(extra) - {"group_regex", "task", "class_order"})
    if unknown:
        raise ValueError(f"options {', '.join(unknown)} are for csv: manifests; folder: takes group_regex, task "
                         "and class_order")
    data = load_folder(target, size=size, channels=options.channels, skip_bad=options.skip_bad)
    class_names, labels = data.class_names, data.labels
    if extra.get("class_order"):
        class_names, labels = _reordered(class_names, labels, extra["class_order"], f"folder:{target}")
    task = _task_of(extra.get("task"), class_names, f"folder:{target}")
    metadata = None
    if extra.get("group_regex"):
        from medlens.data.manifest import Metadata

        metadata = Metadata(ids=data.ids, groups=_regex_groups(data.ids, extra["group_regex"], f"folder:{target}"),
                            group_name="group")
    groups = data.groups if metadata is None else merge_groups(data.groups, metadata.groups)
    rows, method = _split_rows(labels, data.split_of, class_names, ratios=ratios, seed=seed, groups=groups,
                               grouped=metadata is not None, unsplit=options.unsplit)
    images = data.images
    splits = {name: TensorSplit(images[rows[name]], labels[rows[name]], data.ids[rows[name]]) for name in SPLITS}
    n_channels, spatial_dims = images.shape[1], images.ndim - 2
    info = DatasetInfo(
        name=Path(target).name, task=task, class_names=class_names, n_channels=n_channels,
        spatial_dims=spatial_dims, sizes=(size,), split_sizes={name: len(s) for name, s in splits.items()},
        source="folder",
    )
    fingerprint = hashlib.sha256(f"{data.fingerprint}|{method}|{seed}|{ratios}|{sorted(extra.items())}".encode()
                                 ).hexdigest()[:24]
    source = Source(spec=f"folder:{target}@{size}", info=info, size=size, splits=splits, split_method=method,
                    seed=seed, ratios=ratios, fingerprint=fingerprint, bad_files=data.bad_files, metadata=metadata)
    return _checked(source)


def _reordered(class_names, labels, order, where: str):
    """Class ids renumbered to ``order`` (a permutation of ``class_names``)."""
    if sorted(order) != sorted(class_names):
        raise ValueError(f"{where}: class_order {list(order)} must list each class once; the classes are "
                         f"{list(class_names)}")
    remap = np.asarray([list(order).index(name) for name in class_names], dtype=np.int64)
    return tuple(order), remap[labels]


def _task_of(task: str | None, class_names, where: str) -> Task:
    """The task asked for (``binary``, ``multiclass``, ``ordinal``), else inferred from the class count."""
    if task is None:
        return Task.BINARY if len(class_names) == 2 else Task.MULTICLASS
    if task == "multilabel":
        raise ValueError(f"{where}: class folders hold one label per image; task multilabel needs a csv: manifest")
    if task == "binary" and len(class_names) != 2:
        raise ValueError(f"{where}: task binary needs two classes; found {len(class_names)}: {list(class_names)}")
    return Task(task)


def _regex_groups(ids: np.ndarray, pattern: str, where: str) -> np.ndarray:
    """Group ids from file names: the regex's first group (or whole match) searched in each name.

    Files it does not match are their own group (and listed in a warning); none matching is an error.
    """
    import re
    import warnings

    compiled = re.compile(pattern)
    out, unmatched = [], []
    for path in ids.tolist():
        name = path.rsplit("/", 1)[-1]
        match = compiled.search(name)
        if match is None:
            unmatched.append(path)
            out.append(f"\0{path}")  # a name of its own, unlike any matched id
        else:
            out.append(match.group(1) if compiled.groups else match.group(0))
    if len(unmatched) == len(ids):
        raise ValueError(f"{where}: group_regex {pattern!r} matches none of the file names (such as "
                         f"{ids[0].rsplit('/', 1)[-1]!r}); it is searched in each file name, and its first group "
                         "(or the whole match) is the patient id")
    if unmatched:
        warnings.warn(f"{where}: group_regex {pattern!r} does not match {len(unmatched)} file name(s) "
                      f"({', '.join(unmatched[:3])}{', ...' if len(unmatched) > 3 else ''}); each is its own group",
                      stacklevel=3)
    return np.asarray(out)


def _resolve_csv(target: str, *, size: int, options: ResolveOptions) -> Source:
    """A CSV/TSV manifest (:mod:`medlens.data.manifest`), decoded at ``size`` px and split, patients kept together."""
    from medlens.data.manifest import load_manifest

    seed, ratios = options.seed, options.ratios
    extra = {k: v for k, v in options.source_options.items() if k != "group_regex"}
    if "group_regex" in options.source_options:
        raise ValueError("group_regex is for folder: data; a csv: manifest names its patient column with group_col")
    data = load_manifest(target, size=size, channels=options.channels, skip_bad=options.skip_bad, options=extra)
    metadata = data.metadata
    grouped = metadata.groups is not None
    groups = merge_groups(data.duplicates, metadata.groups) if grouped else data.duplicates
    rows, method = _split_rows(data.labels, data.split_of, data.class_names, ratios=ratios, seed=seed, groups=groups,
                               grouped=grouped, own_split_is_final=True, unsplit=options.unsplit)
    splits = {name: TensorSplit(data.images[rows[name]], data.labels[rows[name]], data.ids[rows[name]])
              for name in SPLITS}
    images = data.images
    info = DatasetInfo(
        name=Path(target).stem, task=Task(data.task), class_names=data.class_names, n_channels=images.shape[1],
        spatial_dims=images.ndim - 2, sizes=(size,), split_sizes={name: len(s) for name, s in splits.items()},
        source="csv",
    )
    fingerprint = hashlib.sha256(f"{data.fingerprint}|{method}|{seed}|{ratios}".encode()).hexdigest()[:24]
    source = Source(spec=f"csv:{target}@{size}", info=info, size=size, splits=splits, split_method=method, seed=seed,
                    ratios=ratios, fingerprint=fingerprint, bad_files=data.bad_rows, metadata=metadata)
    return _checked(source)


def _checked(source: Source) -> Source:
    """``source`` with its leakage report and its warnings (patients, identical and near-identical images)."""
    from medlens.data.leakage import find_leakage, leakage_lines

    groups = None
    if source.metadata is not None and source.metadata.groups is not None:
        groups = {name: source.groups_of(name) for name in source.splits}
    report = find_leakage(source.splits, groups=groups, group_name=source.metadata.group_name if groups else "")
    kept = [w for w in source.warnings if w not in leakage_lines(source.leakage)] if source.leakage else source.warnings
    return replace(source, leakage=report, warnings=kept + leakage_lines(report))


def _split_rows(labels, split_of, class_names, *, ratios, seed, groups, grouped: bool,
                own_split_is_final: bool = False, unsplit: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """Rows of each split: the data's own, with what is missing carved out of train.

    ``groups`` (identical images, and patients when ``grouped``) are kept in one split wherever
    medlens splits; with patients, scikit-learn's ``StratifiedGroupKFold`` cuts the split
    (:func:`~medlens.data.splits.grouped_partition`), else one image per group is stratified on.
    """
    if unsplit:  # every image, in the order listed, as one split
        empty = np.zeros(0, dtype=np.int64)
        return {"train": np.arange(len(labels)), "val": empty, "test": empty}, "unsplit"
    present = dict(split_of)
    prefix = "grouped-" if grouped else ""
    if not present or set(present) == {"train"}:
        pool = present.get("train", np.arange(len(labels)))
        if grouped:
            parts = grouped_split(labels[pool], groups[pool], ratios=ratios, seed=seed, class_names=class_names)
        else:
            parts = stratified_split(labels[pool], ratios=ratios, seed=seed, groups=groups[pool],
                                     class_names=class_names)
        return {name: pool[idx] for name, idx in parts.items()}, f"{prefix}stratified"
    method = "column" if own_split_is_final else "folders"
    for missing, share in (("test", ratios[2]), ("val", ratios[1])):
        if missing not in present:
            train = present["train"]
            if grouped:
                fraction = share / (ratios[0] + share)
                parts = grouped_partition(labels[train], groups[train], {"train": 1 - fraction, missing: fraction},
                                          seed=seed, class_names=class_names)
                present["train"], present[missing] = train[parts["train"]], train[parts[missing]]
            else:
                present["train"], present[missing] = carve_validation(
                    labels, train, fraction=share / (ratios[0] + share), seed=seed, groups=groups,
                    class_names=class_names)
            method += f"+{prefix}{missing}"
    return present, method


def with_fold(source: Source, *, folds: int, fold: int, seed: int = 0) -> Source:
    """The ``fold``-th of ``folds`` stratified cross-validation splits of ``source``.

    Train and val are pooled and cut into ``folds`` stratified parts (identical images stay in
    one part); fold ``fold`` becomes the validation split and the rest the training split. The
    test split is left untouched, for a final check after model selection.

    Args:
        source: a resolved source.
        folds: number of folds, >= 2.
        fold: which fold validates, ``0 <= fold < folds``.
        seed: seed of the fold assignment (the same seed gives the same folds).

    Returns:
        A new :class:`Source` with ``split_method`` ``"<method>+fold<fold>/<folds>"``.

    Raises:
        ValueError: ``folds`` < 2, ``fold`` out of range, or a class with fewer than ``folds``
            images in train + val.
    """
    if not isinstance(fold, int) or not 0 <= fold < max(folds, 0):
        raise ValueError(f"fold must be an integer in 0..{folds - 1} for {folds}-fold cross-validation; got {fold!r}")
    train, val = source.splits["train"], source.splits["val"]
    images = np.concatenate([np.asarray(train.images), np.asarray(val.images)])
    pool = TensorSplit(images, np.concatenate([train.labels, val.labels]), np.concatenate([train.ids, val.ids]))
    groups = duplicate_groups(images)
    patients = None if source.metadata is None else source.metadata.groups
    if patients is not None:  # patients (lesions) stay in one fold: stratified group k-fold
        patients = np.concatenate([source.groups_of("train"), source.groups_of("val")])
        parts = grouped_kfold(pool.labels, merge_groups(groups, patients), n_splits=folds, seed=seed)
    else:
        parts = kfold_indices(pool.labels, n_splits=folds, seed=seed, groups=groups,
                              class_names=source.info.class_names)
    train_rows, val_rows = parts[fold]
    method = f"{source.split_method}+{'grouped-' if patients is not None else ''}fold{fold}/{folds}"
    fingerprint = hashlib.sha256(f"{source.fingerprint}|{method}|{seed}".encode()).hexdigest()[:24]
    splits = {"train": pool.subset(train_rows), "val": pool.subset(val_rows), "test": source.splits["test"]}
    folded = replace(source, splits=splits, split_method=method, seed=seed, fingerprint=fingerprint)
    return _checked(folded) if source.leakage else folded
