"""``resolve(spec)``: one entry point from a dataset spec string to train/val/test arrays.

Specs (source prefix as in timm's ``create_dataset``):

    breastmnist          MedMNIST dataset at 28 px, from the data root (downloaded if missing)
    breastmnist@64       ... at 64 px (2D: 28/64/128/224, 3D: 28/64)
    folder:PATH          a directory or .zip of class folders, optionally under train/val/test
    folder:PATH@128      ... resized to 128 px (default 64)
    npz:FILE.npz         a local file in the MedMNIST layout

Each prefix is a :class:`~medlens.data.spec.DataSource` in the source registry
(:mod:`medlens.data.spec`, where the three above are registered); their resolvers are the
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

import numpy as np

from medlens._io import atomic_path
from medlens.data.download import cached_md5, data_root, download, verify_md5
from medlens.data.npz import DEFAULT_MMAP_THRESHOLD, load_npz_arrays
from medlens.data.registry import SPLITS, DatasetInfo, Task, get_dataset_info, list_datasets
from medlens.data.spec import ResolveOptions, parse_spec
from medlens.data.splits import (
    DEFAULT_RATIOS,
    carve_validation,
    duplicate_groups,
    kfold_indices,
    parse_ratios,
    stratified_split,
)


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
    )
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
    """A directory or ``.zip`` of class folders, decoded at ``size`` px and split (see :func:`_folder_rows`)."""
    from medlens.data.folder import default_folder_size, load_folder
    from medlens.data.spec import DEFAULT_FOLDER_SIZE

    if size is None:  # neither the spec nor the caller chose: 64 for images, volumes their own (<= 64)
        size = default_folder_size(target, DEFAULT_FOLDER_SIZE)
    seed, ratios = options.seed, options.ratios
    data = load_folder(target, size=size, channels=options.channels, skip_bad=options.skip_bad)
    groups = data.groups
    rows, method = _folder_rows(data, ratios=ratios, seed=seed, groups=groups)
    images = data.images
    splits = {name: TensorSplit(images[rows[name]], data.labels[rows[name]], data.ids[rows[name]]) for name in SPLITS}
    n_channels, spatial_dims = images.shape[1], images.ndim - 2
    info = DatasetInfo(
        name=Path(target).name, task=Task.BINARY if len(data.class_names) == 2 else Task.MULTICLASS,
        class_names=data.class_names, n_channels=n_channels, spatial_dims=spatial_dims, sizes=(size,),
        split_sizes={name: len(s) for name, s in splits.items()}, source="folder",
    )
    fingerprint = hashlib.sha256(f"{data.fingerprint}|{method}|{seed}|{ratios}".encode()).hexdigest()[:24]
    return Source(spec=f"folder:{target}@{size}", info=info, size=size, splits=splits, split_method=method,
                  seed=seed, ratios=ratios, fingerprint=fingerprint, bad_files=data.bad_files,
                  warnings=_leak_warnings(rows, groups, data.ids))


def _folder_rows(data, *, ratios, seed, groups) -> tuple[dict[str, np.ndarray], str]:
    """Rows of each split: the folders' own, with what is missing carved out of train.

    Identical images (same ``groups`` id) are kept in one split wherever medlens splits.
    """
    present = dict(data.split_of)
    if not present:  # class folders at the top: medlens makes the whole split
        return stratified_split(data.labels, ratios=ratios, seed=seed, groups=groups,
                                class_names=data.class_names), "stratified"
    if set(present) == {"train"}:
        train = present["train"]
        parts = stratified_split(data.labels[train], ratios=ratios, seed=seed, groups=groups[train],
                                 class_names=data.class_names)
        return {name: train[idx] for name, idx in parts.items()}, "stratified"
    method = "folders"
    for missing, share in (("test", ratios[2]), ("val", ratios[1])):
        if missing not in present:
            present["train"], present[missing] = carve_validation(
                data.labels, present["train"], fraction=share / (ratios[0] + share), seed=seed, groups=groups,
                class_names=data.class_names)
            method += f"+{missing}"
    return present, method


def _leak_warnings(rows: dict[str, np.ndarray], groups: np.ndarray, ids: np.ndarray) -> list[str]:
    """Warn about identical images that the source's own folders put in two splits."""
    owner: dict[int, str] = {}
    first_id: dict[int, str] = {}
    clashes = []
    for name, idx in rows.items():
        for row in idx:
            group = int(groups[row])
            split = owner.setdefault(group, name)
            first_id.setdefault(group, str(ids[row]))
            if split != name:
                clashes.append(f"{first_id[group]} ({split}) = {ids[row]} ({name})")
    if not clashes:
        return []
    shown = "; ".join(clashes[:5]) + (f"; and {len(clashes) - 5} more" if len(clashes) > 5 else "")
    return [f"{len(clashes)} image(s) in the dataset's own split folders have an identical copy in "
            f"another split (test-set leakage): {shown}"]


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
    parts = kfold_indices(pool.labels, n_splits=folds, seed=seed, groups=groups,
                          class_names=source.info.class_names)
    train_rows, val_rows = parts[fold]
    method = f"{source.split_method}+fold{fold}/{folds}"
    fingerprint = hashlib.sha256(f"{source.fingerprint}|{method}|{seed}".encode()).hexdigest()[:24]
    splits = {"train": pool.subset(train_rows), "val": pool.subset(val_rows), "test": source.splits["test"]}
    return replace(source, splits=splits, split_method=method, seed=seed, fingerprint=fingerprint)
