"""Tests of ``medlens.data.registry``: every entry, agreement with the published facts, errors,
and (integration) every registry file present in ``../shared/data/medmnist``."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from medlens.data import registry as registry_mod
from medlens.data.download import md5sum
from medlens.data.registry import (
    SPLITS,
    DatasetInfo,
    RemoteFile,
    Task,
    get_dataset_info,
    list_datasets,
    medmnist_filename,
    register_dataset,
)

SHARED = Path(__file__).resolve().parents[3] / "shared"
REFERENCE = SHARED / "reference" / "medmnist_facts.json"
MEDMNIST_DIR = SHARED / "data" / "medmnist"

NAMES_2D = [
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
    "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
]
NAMES_3D = ["organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d"]
ALL_NAMES = NAMES_2D + NAMES_3D

# MedMNIST's free-text task strings, mapped here independently of the package's own table.
TASK_OF = {
    "binary-class": Task.BINARY,
    "multi-class": Task.MULTICLASS,
    "multi-label, binary-class": Task.MULTILABEL,
    "ordinal-regression": Task.ORDINAL,
}

# Files known to be in ../shared/data/medmnist (see shared/data/SOURCES.md).
KNOWN_LOCAL = [("breastmnist", 28), ("pneumoniamnist", 28), ("retinamnist", 28), ("adrenalmnist3d", 28),
               ("adrenalmnist3d", 64)]

# Published per-class counts (shared/data/SOURCES.md).
CLASS_COUNTS = {
    ("breastmnist", "train"): {0: 147, 1: 399},
    ("breastmnist", "test"): {0: 42, 1: 114},
    ("pneumoniamnist", "train"): {0: 1214, 1: 3494},
    ("retinamnist", "train"): {0: 486, 1: 128, 2: 206, 3: 194, 4: 66},
    ("adrenalmnist3d", "train"): {0: 929, 1: 259},
}


def _missing(what: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{what} is missing and CI=true", pytrace=False)
    pytest.skip(f"{what} not found")


def _local_files() -> list[tuple[str, int]]:
    """(name, size) of every registry file present in ../shared/data/medmnist, plus the known ones."""
    found = set(KNOWN_LOCAL)
    if MEDMNIST_DIR.is_dir():
        for name in list_datasets():
            for size, remote in get_dataset_info(name).files.items():
                if (MEDMNIST_DIR / remote.filename).is_file():
                    found.add((name, size))
    return sorted(found)


@pytest.fixture(scope="module")
def facts() -> dict:
    if not REFERENCE.is_file():
        _missing(str(REFERENCE))
    return json.loads(REFERENCE.read_text())


# --------------------------------------------------------------------------------------------
# the registry as a whole
# --------------------------------------------------------------------------------------------


def test_registry_holds_the_18_medmnist_datasets():
    assert list_datasets() == ALL_NAMES
    assert len(set(list_datasets())) == 18
    assert [n for n in list_datasets() if get_dataset_info(n).spatial_dims == 2] == NAMES_2D
    assert [n for n in list_datasets() if get_dataset_info(n).spatial_dims == 3] == NAMES_3D


def test_list_datasets_patterns():
    assert list_datasets("*3d") == NAMES_3D
    assert list_datasets("*3D") == NAMES_3D  # patterns are case-insensitive like names
    assert list_datasets("organ*") == ["organamnist", "organcmnist", "organsmnist", "organmnist3d"]
    assert list_datasets("breastmnist") == ["breastmnist"]
    assert list_datasets("nothing*") == []


def test_get_dataset_info_is_case_insensitive():
    assert get_dataset_info(" BreastMNIST ") is get_dataset_info("breastmnist")


def test_unknown_name_raises_listing_valid_names():
    with pytest.raises(ValueError) as info:
        get_dataset_info("breastmnsit")
    message = str(info.value)
    assert "breastmnsit" in message
    for name in ALL_NAMES:
        assert name in message
    assert "\n" not in message


def test_duplicate_registration_raises(monkeypatch):
    monkeypatch.setattr(registry_mod, "_REGISTRY", dict(registry_mod._REGISTRY))  # leave the real one alone
    with pytest.raises(ValueError, match="breastmnist"):
        register_dataset(get_dataset_info("breastmnist"))
    # a new name registers fine, and then it too is taken
    new = dataclasses.replace(get_dataset_info("breastmnist"), name="mybreast")
    assert register_dataset(new) is new
    assert get_dataset_info("mybreast") is new
    assert "mybreast" in list_datasets()
    with pytest.raises(ValueError, match="mybreast"):
        register_dataset(dataclasses.replace(new, class_names=("a", "b")))
    assert get_dataset_info("mybreast") is new  # the first registration stays


def test_records_are_immutable():
    info = get_dataset_info("breastmnist")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        info.files[28] = RemoteFile("http://x", "0" * 32, "x.npz")  # type: ignore[index]
    with pytest.raises(TypeError):
        info.split_sizes["train"] = 1  # type: ignore[index]


@pytest.mark.parametrize("size", [100, 0, 32, 512])
def test_unavailable_2d_size_names_valid_sizes(size):
    info = get_dataset_info("breastmnist")
    with pytest.raises(ValueError) as err:
        info.file(size)
    message = str(err.value)
    assert str(size) in message and "breastmnist" in message
    assert "28, 64, 128, 224" in message


@pytest.mark.parametrize("size", [128, 224, 100])
def test_unavailable_3d_size_names_valid_sizes(size):
    info = get_dataset_info("adrenalmnist3d")
    with pytest.raises(ValueError) as err:
        info.file(size)
    message = str(err.value)
    assert str(size) in message and "adrenalmnist3d" in message
    assert "28, 64" in message and "128" not in message.split("valid sizes")[-1]


def test_medmnist_filename():
    assert medmnist_filename("breastmnist", 28) == "breastmnist.npz"
    assert medmnist_filename("breastmnist", 224) == "breastmnist_224.npz"


def test_task_enum():
    assert {t.name for t in Task} == {"BINARY", "MULTICLASS", "MULTILABEL", "ORDINAL"}
    assert Task.MULTILABEL.is_multilabel
    assert not any(t.is_multilabel for t in Task if t is not Task.MULTILABEL)
    assert get_dataset_info("chestmnist").task is Task.MULTILABEL
    assert get_dataset_info("retinamnist").task is Task.ORDINAL
    assert get_dataset_info("breastmnist").task is Task.BINARY
    assert get_dataset_info("pathmnist").task is Task.MULTICLASS


# --------------------------------------------------------------------------------------------
# every entry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_entry_is_well_formed(name):
    info = get_dataset_info(name)
    assert isinstance(info, DatasetInfo)
    assert info.name == name
    assert info.source == "medmnist"
    assert isinstance(info.task, Task)
    assert len(info.class_names) >= 2
    assert all(isinstance(c, str) and c.strip() for c in info.class_names)
    assert len(set(info.class_names)) == len(info.class_names)
    assert info.n_classes == len(info.class_names)
    assert info.n_channels in (1, 3)
    if name in NAMES_3D:
        assert info.spatial_dims == 3
        assert info.n_channels == 1
        assert info.sizes == (28, 64)
    else:
        assert info.spatial_dims == 2
        assert info.sizes == (28, 64, 128, 224)
    assert tuple(info.split_sizes) == SPLITS
    assert all(isinstance(n, int) and n > 0 for n in info.split_sizes.values())
    assert info.license.startswith("CC BY")
    assert sorted(info.files) == list(info.sizes)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_entry_files(name):
    info = get_dataset_info(name)
    for size in info.sizes:
        remote = info.file(size)
        assert isinstance(remote, RemoteFile)
        assert remote is info.files[size]
        expected = f"{name}.npz" if size == 28 else f"{name}_{size}.npz"
        assert remote.filename == expected
        pattern = r"https://zenodo\.org/records/\d+/files/" + re.escape(expected) + r"\?download=1"
        assert re.fullmatch(pattern, remote.url)
        assert re.fullmatch(r"[0-9a-f]{32}", remote.md5)
    md5s = [info.files[s].md5 for s in info.sizes]
    assert len(set(md5s)) == len(md5s)


def test_md5s_and_urls_unique_across_registry():
    remotes = [r for n in list_datasets() for r in get_dataset_info(n).files.values()]
    assert len(remotes) == 12 * 4 + 6 * 2
    assert len({r.md5 for r in remotes}) == len(remotes)
    assert len({r.url for r in remotes}) == len(remotes)


def test_reference_lists_the_same_datasets(facts):
    assert list(facts) == list_datasets()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_entry_agrees_with_published_facts(facts, name):
    if name not in facts:
        pytest.fail(f"{name} is in the registry but not in {REFERENCE.name}")
    published = facts[name]
    info = get_dataset_info(name)
    assert info.task is TASK_OF[published["task"]]
    labels = published["label"]
    assert info.class_names == tuple(labels[str(i)] for i in range(len(labels)))
    assert info.n_channels == published["n_channels"]
    assert dict(info.split_sizes) == {s: published["n_samples"][s] for s in SPLITS}
    assert info.license == published["license"]
    published_sizes = sorted(int(k.split("_")[1]) if "_" in k else 28 for k in published if k.startswith("url"))
    assert list(info.sizes) == published_sizes
    for size in info.sizes:
        suffix = "" if size == 28 else f"_{size}"
        assert info.file(size).url == published[f"url{suffix}"], size
        assert info.file(size).md5 == published[f"MD5{suffix}"], size


# --------------------------------------------------------------------------------------------
# integration: the registry against the real files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resolved_sources(medmnist_root):
    """Resolve each (name, size) once per module (verify=False: the MD5 is checked by its own test)."""
    from medlens.data.source import resolve

    cache = {}

    def get(name: str, size: int):
        if (name, size) not in cache:
            path = medmnist_root / get_dataset_info(name).file(size).filename
            if not path.is_file():
                _missing(str(path))
            cache[name, size] = resolve(f"{name}@{size}", root=medmnist_root, verify=False, download_missing=False)
        return cache[name, size]

    return get


@pytest.mark.integration
def test_known_local_files_are_found():
    if not MEDMNIST_DIR.is_dir():
        _missing(str(MEDMNIST_DIR))
    assert set(KNOWN_LOCAL) <= set(_local_files())


@pytest.mark.integration
@pytest.mark.parametrize(("name", "size"), _local_files(), ids=[f"{n}@{s}" for n, s in _local_files()])
def test_local_file_matches_registry(resolved_sources, medmnist_root, name, size):
    info = get_dataset_info(name)
    path = medmnist_root / info.file(size).filename
    assert md5sum(path) == info.file(size).md5
    source = resolved_sources(name, size)
    assert source.info is info
    assert source.size == size
    assert source.split_method == "official"
    assert source.spec == f"{name}@{size}"
    assert list(source.splits) == list(SPLITS)
    for split in SPLITS:
        data = source.splits[split]
        n = info.split_sizes[split]
        assert len(data) == n
        assert data.images.dtype == np.uint8
        assert data.images.shape == (n, info.n_channels) + (size,) * info.spatial_dims
        assert data.labels.dtype == np.int64
        assert data.labels.shape == (n,)
        assert data.labels.min() >= 0 and data.labels.max() < info.n_classes
        assert data.ids.shape == (n,) and len(set(data.ids.tolist())) == n


@pytest.mark.integration
@pytest.mark.parametrize(("name", "split"), sorted(CLASS_COUNTS), ids=[f"{n}-{s}" for n, s in sorted(CLASS_COUNTS)])
def test_known_class_counts(resolved_sources, name, split):
    source = resolved_sources(name, 28)
    expected = CLASS_COUNTS[name, split]
    counts = source.class_counts()[split]
    assert dict(enumerate(counts.tolist())) == expected
    labels = source.splits[split].labels
    assert {int(k): int(v) for k, v in zip(*np.unique(labels, return_counts=True), strict=True)} == expected


@pytest.mark.integration
def test_adrenal_64_has_the_same_labels_as_28(resolved_sources):
    small, large = resolved_sources("adrenalmnist3d", 28), resolved_sources("adrenalmnist3d", 64)
    for split in SPLITS:
        np.testing.assert_array_equal(small.splits[split].labels, large.splits[split].labels)
