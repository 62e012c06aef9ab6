"""Tests of MedMNIST-layout ``.npz`` loading (``medlens.data.npz`` and ``resolve("npz:...")``).

Unit tests write tiny files into ``tmp_path``; the last few use the real ``breastmnist.npz``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medlens.data import download as download_mod
from medlens.data.download import cache_root
from medlens.data.npz import REQUIRED_KEYS, load_npz_arrays, read_npz_header
from medlens.data.registry import Task, get_dataset_info
from medlens.data.source import resolve
from helpers import single_line

N = {"train": 12, "val": 5, "test": 6}
BREAST_MD5 = "750601b1f35ba3300ea97c75c52ff8f6"


def make_arrays(kind: str = "gray", *, edge: int = 28, n_classes: int = 2, n_labels: int = 4,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays in the MedMNIST layout; every class appears in every split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in N.items():
        shape = {"gray": (n, edge, edge), "rgb": (n, edge, edge, 3), "3d": (n, edge, edge, edge),
                 "multilabel": (n, edge, edge)}[kind]
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        if kind == "multilabel":
            labels = rng.integers(0, 2, size=(n, n_labels), dtype=np.uint8)
        else:
            labels = (np.arange(n) % n_classes).astype(np.uint8)[:, None]
        arrays[f"{split}_labels"] = labels
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------


def test_gray_2d(tmp_path):
    arrays = make_arrays("gray")
    path = write_npz(tmp_path / "gray.npz", arrays)
    source = resolve(f"npz:{path}")
    assert source.spec == f"npz:{path}"
    assert source.split_method == "official"
    assert source.size == 28
    info = source.info
    assert info.source == "npz"
    assert info.name == "gray"
    assert info.task is Task.BINARY
    assert info.class_names == ("0", "1")
    assert (info.n_channels, info.spatial_dims) == (1, 2)
    assert dict(info.split_sizes) == N
    for split, n in N.items():
        data = source.splits[split]
        assert data.images.shape == (n, 1, 28, 28)
        assert data.images.dtype == np.uint8
        np.testing.assert_array_equal(data.images[:, 0], arrays[f"{split}_images"])
        assert data.labels.dtype == np.int64 and data.labels.shape == (n,)
        np.testing.assert_array_equal(data.labels, arrays[f"{split}_labels"][:, 0])
        assert data.ids.tolist() == [f"{split}/{i}" for i in range(n)]


def test_rgb_2d_becomes_channels_first(tmp_path):
    arrays = make_arrays("rgb", n_classes=5)
    path = write_npz(tmp_path / "colour.npz", arrays)
    source = resolve(f"npz:{path}")
    assert source.info.n_channels == 3 and source.info.spatial_dims == 2
    assert source.info.task is Task.MULTICLASS
    assert source.info.n_classes == 5
    for split, n in N.items():
        images = source.splits[split].images
        assert images.shape == (n, 3, 28, 28)
        raw = arrays[f"{split}_images"]
        for c in range(3):
            np.testing.assert_array_equal(images[:, c], raw[..., c])
        batch, _ = source.splits[split].take(np.array([1, 0]))
        # a copy that keeps the file's channels-last memory layout (no per-batch transpose)
        assert batch.shape == (2, 3, 28, 28) and batch.strides[1] == 1
        assert not np.shares_memory(batch, images)
        np.testing.assert_array_equal(batch[0], raw[1].transpose(2, 0, 1))


def test_3d_becomes_n_1_d_h_w(tmp_path):
    arrays = make_arrays("3d", edge=8, n_classes=3)
    path = write_npz(tmp_path / "vol.npz", arrays)
    source = resolve(f"npz:{path}")
    assert (source.info.n_channels, source.info.spatial_dims) == (1, 3)
    assert source.info.task is Task.MULTICLASS
    assert source.size == 8
    for split, n in N.items():
        images = source.splits[split].images
        assert images.shape == (n, 1, 8, 8, 8)
        np.testing.assert_array_equal(images[:, 0], arrays[f"{split}_images"])


def test_multilabel(tmp_path):
    arrays = make_arrays("multilabel", n_labels=4)
    path = write_npz(tmp_path / "multi.npz", arrays)
    source = resolve(f"npz:{path}")
    assert source.info.task is Task.MULTILABEL
    assert source.info.n_classes == 4
    for split, n in N.items():
        labels = source.splits[split].labels
        assert labels.dtype == np.uint8 and labels.shape == (n, 4)
        np.testing.assert_array_equal(labels, arrays[f"{split}_labels"])
    counts = source.class_counts()["train"]
    np.testing.assert_array_equal(counts, arrays["train_labels"].sum(axis=0))


def test_multiclass_counts_classes_over_all_splits(tmp_path):
    """A class present only in the test split still counts."""
    arrays = make_arrays("gray", n_classes=2)
    arrays["test_labels"] = arrays["test_labels"].copy()
    arrays["test_labels"][0, 0] = 2
    path = write_npz(tmp_path / "three.npz", arrays)
    source = resolve(f"npz:{path}")
    assert source.info.task is Task.MULTICLASS
    assert source.info.n_classes == 3


def test_file_named_like_registry_dataset_takes_registry_facts(tmp_path):
    arrays = make_arrays("gray", n_classes=2)
    path = write_npz(tmp_path / "breastmnist.npz", arrays)
    source = resolve(f"npz:{path}")
    registry = get_dataset_info("breastmnist")
    assert source.info is registry
    assert source.info.class_names == ("malignant", "normal, benign")
    assert source.info.task is Task.BINARY
    assert len(source.splits["train"]) == N["train"]  # the file's own contents, not the registry's sizes


def test_file_named_like_registry_dataset_with_size_suffix(tmp_path):
    arrays = make_arrays("rgb", edge=16, n_classes=5)
    path = write_npz(tmp_path / "RetinaMNIST_16.npz", arrays)
    source = resolve(f"npz:{path}")
    assert source.info is get_dataset_info("retinamnist")
    assert source.info.task is Task.ORDINAL
    assert source.splits["train"].images.shape == (N["train"], 3, 16, 16)


def test_read_npz_header(tmp_path):
    arrays = make_arrays("rgb")
    path = write_npz(tmp_path / "h.npz", arrays)
    header = read_npz_header(path)
    assert set(header) == set(REQUIRED_KEYS)
    assert header["train_images"] == ((N["train"], 28, 28, 3), np.dtype(np.uint8))
    assert header["val_labels"] == ((N["val"], 1), np.dtype(np.uint8))


# --------------------------------------------------------------------------------------------
# errors: one clear line each
# --------------------------------------------------------------------------------------------


def test_missing_keys_are_named(tmp_path):
    arrays = make_arrays("gray")
    del arrays["val_labels"], arrays["test_images"]
    path = write_npz(tmp_path / "partial.npz", arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    message = single_line(err.value)
    missing_part = message.split(";")[0]
    assert "val_labels" in missing_part and "test_images" in missing_part
    assert "train_images" not in missing_part and "test_labels" not in missing_part
    assert str(path) in message


def test_npz_without_any_medmnist_key(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3), y=np.ones(2))
    with pytest.raises(ValueError) as err:
        load_npz_arrays(path)
    message = single_line(err.value)
    for key in REQUIRED_KEYS:
        assert key in message
    assert "found: x, y" in message


@pytest.mark.parametrize("content", [b"this is not a zip archive\n", b"", b"PK\x03\x04broken"])
def test_not_a_zip(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    message = single_line(err.value)
    assert str(path) in message and ".npz" in message


def test_plain_npy_under_npz_name(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a readable .npz"):
        resolve(f"npz:{path}")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        resolve(f"npz:{tmp_path / 'nothing.npz'}")


def test_labels_out_of_range_for_registry_classes(tmp_path):
    arrays = make_arrays("gray", n_classes=2)
    arrays["val_labels"] = arrays["val_labels"].copy()
    arrays["val_labels"][3, 0] = 7
    path = write_npz(tmp_path / "breastmnist.npz", arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    message = single_line(err.value)
    assert "val" in message and "7" in message and "0..1" in message


def test_negative_labels(tmp_path):
    arrays = make_arrays("gray", n_classes=3)
    arrays["train_labels"] = arrays["train_labels"].astype(np.int64)
    arrays["train_labels"][0, 0] = -1
    path = write_npz(tmp_path / "neg.npz", arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    assert "-1" in single_line(err.value)


def test_multilabel_values_must_be_0_or_1(tmp_path):
    arrays = make_arrays("multilabel", n_labels=3)
    arrays["test_labels"] = arrays["test_labels"].copy()
    arrays["test_labels"][0, 1] = 2
    path = write_npz(tmp_path / "ml.npz", arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    assert "0/1" in single_line(err.value)


def test_images_labels_length_mismatch(tmp_path):
    arrays = make_arrays("gray")
    arrays["train_labels"] = arrays["train_labels"][:-2]
    path = write_npz(tmp_path / "short.npz", arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    message = single_line(err.value)
    assert f"{N['train']} train images but {N['train'] - 2} labels" in message


def test_non_uint8_images(tmp_path):
    arrays = make_arrays("gray")
    arrays["train_images"] = arrays["train_images"].astype(np.float32)
    path = write_npz(tmp_path / "float.npz", arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    assert "float32" in single_line(err.value)


def test_registry_named_file_with_wrong_layout(tmp_path):
    """RGB pixels in a file named after a grayscale dataset: the message says what was expected."""
    path = write_npz(tmp_path / "breastmnist.npz", make_arrays("rgb"))
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    message = single_line(err.value)
    assert "(N, H, W)" in message and "breastmnist" in message


@pytest.mark.parametrize("how", ["argument", "spec"])
def test_wrong_size_for_npz(tmp_path, how):
    path = write_npz(tmp_path / "small.npz", make_arrays("gray", edge=28))
    with pytest.raises(ValueError) as err:
        if how == "argument":
            resolve(f"npz:{path}", size=64)
        else:
            resolve(f"npz:{path}@64")
    message = single_line(err.value)
    assert "64" in message and "28" in message


def test_right_size_for_npz(tmp_path):
    path = write_npz(tmp_path / "small.npz", make_arrays("gray", edge=28))
    assert resolve(f"npz:{path}@28").size == 28
    assert resolve(f"npz:{path}", size=28).size == 28


def test_size_argument_disagreeing_with_spec(tmp_path):
    path = write_npz(tmp_path / "small.npz", make_arrays("gray", edge=28))
    with pytest.raises(ValueError, match="disagrees"):
        resolve(f"npz:{path}@28", size=64)


def test_registry_name_with_file_of_wrong_size(tmp_path):
    """A 28-px file saved as breastmnist_64.npz is refused, naming the size asked for."""
    root = tmp_path / "root"
    write_npz(root / "breastmnist_64.npz", make_arrays("gray", edge=28))
    with pytest.raises(ValueError) as err:
        resolve("breastmnist@64", root=root, verify=False, download_missing=False)
    message = single_line(err.value)
    assert "64 px" in message and "28x28" in message
    assert "28, 64, 128, 224" in message  # the sizes that exist for breastmnist


def test_registry_name_with_bad_md5(tmp_path):
    root = tmp_path / "root"
    path = write_npz(root / "breastmnist.npz", make_arrays("gray"))
    with pytest.raises(ValueError) as err:
        resolve("breastmnist", root=root, download_missing=False)
    message = single_line(err.value)
    assert BREAST_MD5 in message
    assert download_mod.md5sum(path) in message
    assert get_dataset_info("breastmnist").file(28).url in message
    # the same file loads when verification is off (it is a valid MedMNIST layout)
    source = resolve("breastmnist", root=root, verify=False, download_missing=False)
    assert len(source.splits["train"]) == N["train"]


def test_bad_md5_is_never_remembered_as_good(tmp_path, monkeypatch):
    """The stamp remembers the file's own MD5, not "verified": a bad file fails every time."""
    root = tmp_path / "root"
    path = write_npz(root / "breastmnist.npz", make_arrays("gray"))
    calls = _count_md5(monkeypatch)
    for _ in range(2):
        with pytest.raises(ValueError, match=BREAST_MD5):
            resolve("breastmnist", root=root, download_missing=False)
    assert len(calls) == 1  # hashed once; the second check compares the remembered sum
    stamps = [json.loads(p.read_text()) for p in cache_root().glob("md5/*.json")]
    assert [s["md5"] for s in stamps] == [hashlib.md5(path.read_bytes()).hexdigest()]
    assert BREAST_MD5 not in json.dumps(stamps)


# --------------------------------------------------------------------------------------------
# memory-mapped path
# --------------------------------------------------------------------------------------------


def _is_memmap_backed(array: np.ndarray) -> bool:
    while array is not None:
        if isinstance(array, np.memmap):
            return True
        array = array.base if isinstance(array.base, np.ndarray) else None
    return False


def _cache_files() -> list[Path]:
    return sorted((cache_root() / "npz").glob("*/*.npy"))


@pytest.mark.parametrize("kind", ["gray", "rgb", "3d", "multilabel"])
def test_mmap_equals_in_ram(tmp_path, kind):
    path = write_npz(tmp_path / f"{kind}.npz", make_arrays(kind, edge=8 if kind == "3d" else 28))
    in_ram = load_npz_arrays(path)
    assert not any(_is_memmap_backed(a) for a in in_ram.values())
    assert _cache_files() == []  # the in-RAM path writes nothing
    mapped = load_npz_arrays(path, mmap_threshold=0)
    assert set(mapped) == set(REQUIRED_KEYS)
    for key in REQUIRED_KEYS:
        assert _is_memmap_backed(mapped[key]), key
        assert mapped[key].dtype == in_ram[key].dtype
        np.testing.assert_array_equal(mapped[key], in_ram[key])
    files = _cache_files()
    assert sorted(f.name for f in files) == sorted(f"{k}.npy" for k in REQUIRED_KEYS)
    assert all(f.parent.name.startswith(f"{kind}-") for f in files)
    assert str(files[0]).startswith(os.environ["MEDLENS_CACHE"])
    assert not list((cache_root() / "npz").glob("*/*.tmp*"))


def test_mmap_cache_is_reused(tmp_path):
    path = write_npz(tmp_path / "reuse.npz", make_arrays("gray"))
    first = load_npz_arrays(path, mmap_threshold=0)
    files = _cache_files()
    stamps = {f: f.stat().st_mtime_ns for f in files}
    time.sleep(0.02)
    second = load_npz_arrays(path, mmap_threshold=0)
    assert _cache_files() == files
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    for key in REQUIRED_KEYS:
        np.testing.assert_array_equal(first[key], second[key])


def test_mmap_cache_follows_a_changed_file(tmp_path):
    """Rewriting the source file must not serve the old cached arrays."""
    path = tmp_path / "changing.npz"
    write_npz(path, make_arrays("gray", seed=1))
    load_npz_arrays(path, mmap_threshold=0)
    new = make_arrays("gray", seed=2)
    time.sleep(0.02)
    write_npz(path, new)
    mapped = load_npz_arrays(path, mmap_threshold=0)
    for key in REQUIRED_KEYS:
        np.testing.assert_array_equal(mapped[key], new[key])


def test_resolve_with_mmap_threshold(tmp_path):
    arrays = make_arrays("rgb", n_classes=3)
    path = write_npz(tmp_path / "rgbmap.npz", arrays)
    source = resolve(f"npz:{path}", mmap_threshold=0)
    images = source.splits["train"].images
    assert _is_memmap_backed(images)
    assert images.shape == (N["train"], 3, 28, 28)
    np.testing.assert_array_equal(images, arrays["train_images"].transpose(0, 3, 1, 2))
    batch, labels = source.splits["train"].take(np.array([0, 5]))
    assert not _is_memmap_backed(batch) and batch.strides[1] == 1
    np.testing.assert_array_equal(labels, arrays["train_labels"][[0, 5], 0])


def test_mmap_of_empty_split(tmp_path):
    arrays = make_arrays("gray")
    arrays["val_images"] = arrays["val_images"][:0]
    arrays["val_labels"] = arrays["val_labels"][:0]
    path = write_npz(tmp_path / "emptyval.npz", arrays)
    mapped = load_npz_arrays(path, mmap_threshold=0)
    assert mapped["val_images"].shape == (0, 28, 28)
    np.testing.assert_array_equal(mapped["train_images"], arrays["train_images"])


def test_header_lists_every_member(tmp_path):
    path = write_npz(tmp_path / "h.npz", make_arrays("gray"))
    header = read_npz_header(path)
    with zipfile.ZipFile(path) as archive:
        assert sorted(f"{k}.npy" for k in header) == sorted(archive.namelist())


# --------------------------------------------------------------------------------------------
# MD5 verification is remembered (integration: real breastmnist.npz)
# --------------------------------------------------------------------------------------------


def _count_md5(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = download_mod.md5sum

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(download_mod, "md5sum", counting)
    return calls


@pytest.fixture
def breast_copy(medmnist_root, tmp_path) -> Path:
    source = medmnist_root / "breastmnist.npz"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy2(source, root / "breastmnist.npz")
    return root


@pytest.mark.integration
def test_verified_md5_is_not_recomputed(breast_copy, monkeypatch):
    calls = _count_md5(monkeypatch)
    first = resolve("breastmnist", root=breast_copy, download_missing=False)
    assert len(calls) == 1
    second = resolve("breastmnist", root=breast_copy, download_missing=False)
    assert len(calls) == 1
    assert len(first.splits["train"]) == len(second.splits["train"]) == 546
    stamps = list((cache_root() / "md5").glob("*.json"))
    assert len(stamps) == 1


@pytest.mark.integration
def test_changed_file_is_verified_again(breast_copy, monkeypatch):
    calls = _count_md5(monkeypatch)
    path = breast_copy / "breastmnist.npz"
    resolve("breastmnist", root=breast_copy, download_missing=False)
    assert len(calls) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    resolve("breastmnist", root=breast_copy, download_missing=False)
    assert len(calls) == 2
    # a damaged file after a good check is caught
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=BREAST_MD5):
        resolve("breastmnist", root=breast_copy, download_missing=False)


@pytest.mark.integration
def test_verify_false_skips_md5(breast_copy, monkeypatch):
    calls = _count_md5(monkeypatch)
    resolve("breastmnist", root=breast_copy, verify=False, download_missing=False)
    assert calls == []


@pytest.mark.integration
def test_real_file_mmap_equals_in_ram(medmnist_root):
    path = medmnist_root / "breastmnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    in_ram = load_npz_arrays(path)
    mapped = load_npz_arrays(path, mmap_threshold=0)
    for key in REQUIRED_KEYS:
        assert _is_memmap_backed(mapped[key])
        np.testing.assert_array_equal(mapped[key], in_ram[key])
    assert in_ram["train_images"].shape == (546, 28, 28)
    # nothing is written next to the (possibly read-only) data
    assert sorted(p.name for p in medmnist_root.iterdir() if p.name.startswith("breastmnist")) == ["breastmnist.npz"]


# --------------------------------------------------------------------------------------------
# damaged archives (valid zip directory, corrupt compressed data)
# --------------------------------------------------------------------------------------------


def _damage_first_member(path: Path, *, at: str) -> Path:
    """Flip bytes inside the compressed data of the first member; the zip directory stays valid."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    offset = start + (info.compress_size // 2 if at == "middle" else 0)
    for k in range(40 if at == "start" else 200):
        data[offset + k] ^= 0xFF if at == "start" else 0x5A
    damaged = path.with_name(f"damaged_{at}.npz")
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.parametrize("at", ["middle", "start"])
@pytest.mark.parametrize("mmap_threshold", [None, 0], ids=["ram", "mmap"])
def test_damaged_archive_is_a_value_error(tmp_path, at, mmap_threshold):
    path = write_npz(tmp_path / "big.npz", make_arrays("gray", edge=64))
    damaged = _damage_first_member(path, at=at)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{damaged}", mmap_threshold=mmap_threshold)
    assert str(damaged) in single_line(err.value)


def test_failed_mmap_streaming_leaves_no_temporary_file(tmp_path):
    path = write_npz(tmp_path / "big.npz", make_arrays("gray", edge=64))
    damaged = _damage_first_member(path, at="middle")
    with pytest.raises(ValueError):
        load_npz_arrays(damaged, mmap_threshold=0)
    assert list((cache_root() / "npz").glob("*/*.tmp*")) == []


# --------------------------------------------------------------------------------------------
# cases found in review
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mmap_threshold", [None, 0], ids=["ram", "mmap"])
def test_empty_split_resolves(tmp_path, mmap_threshold):
    arrays = make_arrays("gray")
    arrays["val_images"] = arrays["val_images"][:0]
    arrays["val_labels"] = arrays["val_labels"][:0]
    path = write_npz(tmp_path / "noval.npz", arrays)
    source = resolve(f"npz:{path}", mmap_threshold=mmap_threshold)
    assert len(source.splits["val"]) == 0 and source.splits["val"].images.shape == (0, 1, 28, 28)
    assert len(source.splits["train"]) == N["train"]


def test_fractional_labels_are_refused(tmp_path):
    arrays = make_arrays("gray")
    arrays["train_labels"] = arrays["train_labels"].astype(np.float32)
    arrays["train_labels"][2, 0] = 0.7
    path = write_npz(tmp_path / "frac.npz", arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    assert "whole numbers" in single_line(err.value) and "0.7" in str(err.value)


def test_one_class_npz_is_refused(tmp_path):
    arrays = make_arrays("gray", n_classes=1)
    path = write_npz(tmp_path / "one.npz", arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    assert "1 class" in single_line(err.value) and "at least two" in str(err.value)


def test_object_arrays_are_named_not_called_damage(tmp_path):
    arrays = make_arrays("gray")
    arrays["test_labels"] = np.array([{"label": 1}] * N["test"], dtype=object)
    path = tmp_path / "objects.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as err:
        resolve(f"npz:{path}")
    message = single_line(err.value)
    assert "test_labels" in message and "objects" in message and "damaged" not in message


def test_unwritable_cache_is_not_reported_as_a_damaged_file(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MEDLENS_CACHE", str(blocker / "cache"))
    path = write_npz(tmp_path / "fine.npz", make_arrays("gray"))
    with pytest.raises(OSError) as err:
        load_npz_arrays(path, mmap_threshold=0)
    message = single_line(err.value)
    assert "cache" in message and "MEDLENS_CACHE" in message and "damaged" not in message
