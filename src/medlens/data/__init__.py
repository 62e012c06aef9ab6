"""Data layer: dataset registry, MedMNIST files, image folders and archives, splits.

``resolve(spec)`` is the entry point. The names below are imported lazily so that
``import medlens.data`` stays free of numpy and scikit-learn until they are used.
"""

from medlens.data.registry import DatasetInfo, Task, get_dataset_info, list_datasets, register_dataset

__all__ = ["DatasetInfo", "Task", "get_dataset_info", "list_datasets", "register_dataset", "resolve",
           "Source", "TensorSplit"]


def __getattr__(name: str):
    if name in ("resolve", "Source", "TensorSplit"):
        from medlens.data import source

        return getattr(source, name)
    raise AttributeError(f"module 'medlens.data' has no attribute {name!r}")
