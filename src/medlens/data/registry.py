"""Dataset registry: one frozen :class:`DatasetInfo` per named dataset, with a :class:`Task` Enum.

Pure Python on purpose (no numpy, no torch): ``medlens datasets`` and ``medlens --help`` import
this module and must answer at once.

Example:
    >>> from medlens.data.registry import get_dataset_info, list_datasets
    >>> get_dataset_info("breastmnist").class_names
    ('malignant', 'normal, benign')
    >>> list_datasets("*3d")[:2]
    ['organmnist3d', 'nodulemnist3d']
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from medlens.data._medmnist_facts import MEDMNIST_FACTS

SPLITS = ("train", "val", "test")


class Task(enum.Enum):
    """The kind of prediction problem; drives labels dtype, loss, activation and metrics."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    ORDINAL = "ordinal"

    @property
    def is_multilabel(self) -> bool:
        return self is Task.MULTILABEL


# The only place where MedMNIST's free-text task strings are read.
_MEDMNIST_TASKS = {
    "binary-class": Task.BINARY,
    "multi-class": Task.MULTICLASS,
    "multi-label, binary-class": Task.MULTILABEL,
    "ordinal-regression": Task.ORDINAL,
}


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file: its official URL, MD5 and the file name it is stored under."""

    url: str
    md5: str
    filename: str


@dataclass(frozen=True)
class DatasetInfo:
    """Facts of one dataset.

    Attributes:
        name: registry name, lower case (``"breastmnist"``).
        task: the :class:`Task`.
        class_names: label names by class id (for multi-label: one name per label).
        n_channels: image channels, 1 or 3.
        spatial_dims: 2 for (C, H, W) images, 3 for (C, D, H, W) volumes.
        sizes: available edge lengths in pixels (2D: 28/64/128/224, 3D: 28/64).
        split_sizes: images per split, ``{"train": n, "val": n, "test": n}`` (empty when unknown).
        license: licence of the data as published.
        files: ``{size: RemoteFile}`` for downloadable sources (empty for local folders).
        source: ``"medmnist"`` for registry entries, ``"folder"`` / ``"npz"`` for local data.
    """

    name: str
    task: Task
    class_names: tuple[str, ...]
    n_channels: int
    spatial_dims: int
    sizes: tuple[int, ...]
    split_sizes: Mapping[str, int] = field(default_factory=dict)
    license: str = ""
    files: Mapping[int, RemoteFile] = field(default_factory=dict)
    source: str = "medmnist"

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def file(self, size: int) -> RemoteFile:
        """The remote file for ``size``; ``ValueError`` naming the valid sizes otherwise."""
        if size not in self.files:
            valid = ", ".join(str(s) for s in self.sizes)
            raise ValueError(f"size {size} is not available for {self.name}; valid sizes: {valid}")
        return self.files[size]


_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to the registry. A name already taken raises ``ValueError``."""
    if info.name in _REGISTRY:
        raise ValueError(f"dataset {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern`` (``"*3d"``), in registry order."""
    return [name for name in _REGISTRY if fnmatch.fnmatch(name, pattern.lower())]


def get_dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    key = name.strip().lower()
    if key not in _REGISTRY:
        from medlens.data.spec import list_sources  # only here: it loads the sources (numpy)

        local = ", ".join(source.usage for source in list_sources() if source.prefix)
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_REGISTRY)} (or a local source: {local})")
    return _REGISTRY[key]


def medmnist_filename(name: str, size: int) -> str:
    """Official file name: ``breastmnist.npz`` at 28 px, ``breastmnist_64.npz`` otherwise."""
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def _register_medmnist() -> None:
    for name, facts in MEDMNIST_FACTS.items():
        files = {
            size: RemoteFile(url=url, md5=md5, filename=medmnist_filename(name, size))
            for size, (url, md5) in facts["files"].items()
        }
        register_dataset(
            DatasetInfo(
                name=name,
                task=_MEDMNIST_TASKS[facts["task"]],
                class_names=tuple(facts["labels"]),
                n_channels=facts["n_channels"],
                spatial_dims=facts["spatial_dims"],
                sizes=tuple(sorted(files)),
                split_sizes=MappingProxyType(dict(zip(SPLITS, facts["split_sizes"], strict=True))),
                license=facts["license"],
                files=MappingProxyType(files),
            )
        )


_register_medmnist()
