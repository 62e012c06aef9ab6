"""Data layer: dataset registry, source registry, MedMNIST files, image folders and archives, splits.

``resolve(spec)`` is the entry point; ``parse_spec(spec)`` tells which registered source a spec
names. ``resolve``, ``Source`` and ``TensorSplit`` are imported lazily so that ``import
medlens.data`` stays free of numpy and scikit-learn until they are used.
"""

from medlens.data.registry import DatasetInfo, Task, get_dataset_info, list_datasets, register_dataset
from medlens.data.spec import DataSource, DatasetSpec, list_sources, parse_spec, register_source

__all__ = ["DataSource", "DatasetInfo", "DatasetSpec", "Task", "get_dataset_info", "list_datasets", "list_sources",
           "parse_spec", "register_dataset", "register_source", "resolve", "Source", "TensorSplit"]


def __getattr__(name: str):
    if name in ("resolve", "Source", "TensorSplit"):
        from medlens.data import source

        return getattr(source, name)
    raise AttributeError(f"module 'medlens.data' has no attribute {name!r}")
