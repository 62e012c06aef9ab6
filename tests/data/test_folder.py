"""Tests for image folders and archives: medlens.data.folder.load_folder and resolve("folder:...").

Unit tests build tiny folders in tmp_path; integration tests (marked) use ../shared/data.
Every test that loads a folder points MEDLENS_CACHE at a temporary folder.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data import folder as folder_module
from medlens.data.folder import FolderData, load_folder
from medlens.data.source import load_split_ids, resolve
from medlens.data.splits import duplicate_groups
from helpers import single_line

SPLIT_NAMES = ("train", "val", "test")
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private MEDLENS_CACHE for the test; returns its path."""
    path = tmp_path / "cache"
    monkeypatch.setenv("MEDLENS_CACHE", str(path))
    return path


def _noise(rng: np.random.Generator, size: int = 16) -> np.ndarray:
    return rng.integers(0, 256, (size, size), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)
    return path


def _make_classes(root: Path, counts: dict[str, int], seed: int = 0, size: int = 16) -> None:
    """``root/<class>/<i>.png`` with distinct random grayscale images."""
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        for i in range(n):
            _save(root / cls / f"{i:03d}.png", _noise(rng, size))


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()



def _ids(source) -> dict[str, list[str]]:
    return {name: [str(i) for i in source.splits[name].ids] for name in SPLIT_NAMES}


def _check_source_partition(source, n_total: int) -> None:
    assert set(source.splits) == set(SPLIT_NAMES)
    all_ids = [i for name in SPLIT_NAMES for i in source.splits[name].ids]
    assert len(all_ids) == n_total
    assert len(set(all_ids)) == n_total, "an image id appears in two splits"
    for split in source.splits.values():
        assert len(split.images) == len(split.labels) == len(split.ids)
        assert split.images.dtype == np.uint8


# --------------------------------------------------------------------------------------------
# load_folder: layouts, formats, channels
# --------------------------------------------------------------------------------------------


def test_flat_class_folders_of_mixed_formats(tmp_path, cache):
    rng = np.random.default_rng(0)
    root = tmp_path / "ds"
    _save(root / "Benign" / "a.png", _noise(rng, 20))
    _save(root / "Benign" / "b.jpg", _noise(rng, 24), "JPEG")
    _save(root / "Benign" / "c.bmp", _noise(rng, 12), "BMP")
    _save(root / "Malignant" / "d.tiff", _noise(rng, 16), "TIFF")
    _save(root / "Malignant" / "e.png", _noise(rng, 16))
    data = load_folder(root, size=8)
    assert isinstance(data, FolderData)
    assert data.class_names == ("Benign", "Malignant")
    assert data.images.shape == (5, 1, 8, 8) and data.images.dtype == np.uint8
    assert data.spatial_dims == 2
    assert list(data.ids) == ["Benign/a.png", "Benign/b.jpg", "Benign/c.bmp",
                              "Malignant/d.tiff", "Malignant/e.png"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.labels.dtype == np.int64
    assert data.split_of == {}
    assert data.bad_files == []
    assert len(data.fingerprint) > 0


def test_pixels_are_the_decoded_files(tmp_path, cache):
    rng = np.random.default_rng(1)
    root = tmp_path / "ds"
    a = _noise(rng, 16)
    b = _noise(rng, 16)
    _save(root / "x" / "1.png", a)
    _save(root / "y" / "2.png", b)
    data = load_folder(root, size=16)
    np.testing.assert_array_equal(data.images[0, 0], a)
    np.testing.assert_array_equal(data.images[1, 0], b)


def test_default_size_is_64(tmp_path, cache):
    _make_classes(tmp_path / "ds", {"a": 1, "b": 1}, size=20)
    assert load_folder(tmp_path / "ds").images.shape == (2, 1, 64, 64)


def test_gray_rgb_files_give_one_channel(tmp_path, cache):
    rng = np.random.default_rng(2)
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        g = _noise(rng, 16)
        _save(root / cls / "rgb.png", np.stack([g, g, g], axis=-1))
    data = load_folder(root, size=16)
    assert data.images.shape == (2, 1, 16, 16)


def test_one_coloured_image_makes_the_dataset_three_channel(tmp_path, cache):
    rng = np.random.default_rng(3)
    root = tmp_path / "ds"
    gray = _noise(rng, 16)
    _save(root / "a" / "gray.png", gray)
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 0] = 200
    colour[..., 2] = 40
    _save(root / "b" / "red.png", colour)
    data = load_folder(root, size=16)
    assert data.images.shape == (2, 3, 16, 16)
    # gray image replicated over the three channels
    for c in range(3):
        np.testing.assert_array_equal(data.images[0, c], gray)
    # colour image kept channel by channel
    assert (data.images[1, 0] == 200).all()
    assert (data.images[1, 1] == 0).all()
    assert (data.images[1, 2] == 40).all()


def test_channels_forced(tmp_path, cache):
    root = tmp_path / "ds"
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[..., 0] = 255
    _save(root / "a" / "red.png", colour)
    _save(root / "b" / "gray.png", np.full((16, 16), 77, dtype=np.uint8))
    one = load_folder(root, size=16, channels=1)
    assert one.images.shape == (2, 1, 16, 16)
    assert (one.images[0, 0] == 76).all()  # ITU-R 601 luma of pure red: 0.299 * 255
    three = load_folder(root, size=16, channels=3)
    assert three.images.shape == (2, 3, 16, 16)
    assert (three.images[1] == 77).all()


def test_nested_files_and_hidden_files(tmp_path, cache):
    rng = np.random.default_rng(4)
    root = tmp_path / "ds"
    _make_classes(root, {"a": 2, "b": 2})
    _save(root / "a" / "sub" / "deep.png", _noise(rng))
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    (root / "b" / "Thumbs.db").write_bytes(b"junk")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"junk")
    data = load_folder(root, size=16)
    assert len(data.ids) == 5
    assert "a/sub/deep.png" in data.ids.tolist()
    assert data.labels[data.ids.tolist().index("a/sub/deep.png")] == 0


def test_volumes_folder_is_3d(tmp_path, cache):
    import nibabel as nib

    rng = np.random.default_rng(5)
    root = tmp_path / "vols"
    (root / "lesion").mkdir(parents=True)
    (root / "normal").mkdir(parents=True)
    for i in range(2):
        nib.save(nib.Nifti1Image(rng.normal(size=(10, 9, 8)).astype(np.float32), np.eye(4)),
                 root / "lesion" / f"v{i}.nii.gz")
    nib.save(nib.Nifti1Image(rng.normal(size=(6, 6, 6)).astype(np.float32), np.eye(4)),
             root / "normal" / "u.nii")
    np.save(root / "normal" / "w.npy", rng.normal(size=(5, 7, 9)).astype(np.float32))
    data = load_folder(root, size=8)
    assert data.images.shape == (4, 1, 8, 8, 8)
    assert data.spatial_dims == 3
    assert data.labels.tolist() == [0, 0, 1, 1]


def test_npy_2d_folder(tmp_path, cache):
    rng = np.random.default_rng(6)
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        np.save(root / cls / "s.npy", rng.normal(size=(12, 10)))
    data = load_folder(root, size=8)
    assert data.images.shape == (2, 1, 8, 8) and data.spatial_dims == 2


def _zip_of_classes(path: Path, wrapper: str | None, counts: dict[str, int], seed: int = 0,
                    suffix: str = ".jpeg") -> Path:
    rng = np.random.default_rng(seed)
    prefix = f"{wrapper}/" if wrapper else ""
    with zipfile.ZipFile(path, "w") as archive:
        if wrapper:
            archive.writestr(f"{prefix}", b"")  # a directory entry, as real zips have
        for cls, n in counts.items():
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(_noise(rng, 16)).save(buf, "JPEG" if suffix == ".jpeg" else "PNG")
                archive.writestr(f"{prefix}{cls}/{i:06d}{suffix}", buf.getvalue())
        archive.writestr(f"__MACOSX/{prefix}{next(iter(counts))}/._000000{suffix}", b"resource fork")
        archive.writestr(f"{prefix}.DS_Store", b"junk")
    return path


def test_zip_with_wrapping_folder(tmp_path, cache):
    archive = _zip_of_classes(tmp_path / "mm.zip", "medical_mnist", {"Hand": 3, "CXR": 4, "HeadCT": 2})
    data = load_folder(archive, size=8)
    assert data.class_names == ("CXR", "Hand", "HeadCT")
    assert data.images.shape == (9, 1, 8, 8)
    assert all(str(i).startswith("medical_mnist/") for i in data.ids)
    assert np.bincount(data.labels).tolist() == [4, 3, 2]


def test_zip_and_directory_give_the_same_arrays(tmp_path, cache):
    archive = _zip_of_classes(tmp_path / "x.zip", None, {"a": 3, "b": 3}, suffix=".png")
    root = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as z:
        z.extractall(root)
    from_zip = load_folder(archive, size=16)
    from_dir = load_folder(root, size=16)
    np.testing.assert_array_equal(from_zip.images, from_dir.images)
    np.testing.assert_array_equal(from_zip.ids, from_dir.ids)
    np.testing.assert_array_equal(from_zip.labels, from_dir.labels)


def test_zip_with_split_folders(tmp_path, cache):
    rng = np.random.default_rng(7)
    path = tmp_path / "s.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for split, n in (("train", 4), ("test", 2)):
            for cls in ("a", "b"):
                for i in range(n):
                    archive.writestr(f"wrap/{split}/{cls}/{i}.png", _png_bytes(_noise(rng)))
    data = load_folder(path, size=16)
    assert sorted(data.split_of) == ["test", "train"]
    assert len(data.split_of["train"]) == 8 and len(data.split_of["test"]) == 4
    assert all(str(data.ids[i]).startswith("wrap/test/") for i in data.split_of["test"])


def test_split_folders_are_recorded(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"a": 3, "b": 3}, seed=1)
    _make_classes(root / "val", {"a": 1, "b": 1}, seed=2)
    _make_classes(root / "test", {"a": 2, "b": 2}, seed=3)
    data = load_folder(root, size=16)
    assert {s: len(i) for s, i in data.split_of.items()} == {"train": 6, "val": 2, "test": 4}
    for split, rows in data.split_of.items():
        assert all(str(data.ids[r]).startswith(f"{split}/") for r in rows)


# --------------------------------------------------------------------------------------------
# load_folder: bad inputs
# --------------------------------------------------------------------------------------------


def test_missing_path(tmp_path, cache):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as info:
        load_folder(missing)
    message = single_line(info.value)
    assert str(missing) in message and "does not exist" in message


def test_empty_folder(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as info:
        load_folder(tmp_path / "empty")
    message = single_line(info.value)
    assert "no images found" in message and str(tmp_path / "empty") in message


def test_one_class_in_split_layout(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"OnlyOne": 3})
    _make_classes(root / "test", {"OnlyOne": 2}, seed=1)
    with pytest.raises(ValueError) as info:
        load_folder(root, size=16)
    message = single_line(info.value)
    assert "only one class" in message and "'OnlyOne'" in message


def test_one_class_flat_folder(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"OnlyOne": 3})
    with pytest.raises(ValueError) as info:
        load_folder(root, size=16)
    message = single_line(info.value)
    assert "one class" in message and "OnlyOne" in message


def test_val_and_test_without_train(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root / "val", {"a": 2, "b": 2})
    _make_classes(root / "test", {"a": 2, "b": 2}, seed=1)
    with pytest.raises(ValueError) as info:
        load_folder(root, size=16)
    assert "no train/ folder" in single_line(info.value)


def test_corrupt_png_is_named(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 3, "b": 3})
    good = (root / "b" / "001.png").read_bytes()
    (root / "b" / "001.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError) as info:
        load_folder(root, size=16)
    message = single_line(info.value)
    assert "1 unreadable file(s)" in message
    assert "b/001.png" in message
    assert "truncated" in message.lower()
    assert "skip_bad" in message  # says how to go on


def test_two_bad_files_named_in_one_message(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 3, "b": 3})
    (root / "a" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "b" / "002.png").write_bytes(b"")
    with pytest.raises(ValueError) as info:
        load_folder(root, size=16)
    message = single_line(info.value)
    assert "2 unreadable file(s)" in message
    assert "a/000.png" in message and "b/002.png" in message


def test_non_image_file_reported_as_unsupported(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 2, "b": 2})
    (root / "a" / "notes.txt").write_text("scanned on Tuesday")
    with pytest.raises(ValueError) as info:
        load_folder(root, size=16)
    message = single_line(info.value)
    assert "a/notes.txt" in message
    assert "unsupported file type '.txt'" in message


def test_skip_bad_loads_the_rest_and_lists_them(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("hello")
    good = (root / "b" / "001.png").read_bytes()
    (root / "b" / "001.png").write_bytes(good[: len(good) // 2])
    data = load_folder(root, size=16, skip_bad=True)
    assert len(data.ids) == 5
    assert "b/001.png" not in data.ids.tolist() and "a/notes.txt" not in data.ids.tolist()
    bad = dict(data.bad_files)
    assert set(bad) == {"a/notes.txt", "b/001.png"}
    assert "unsupported" in bad["a/notes.txt"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    # the cached copy remembers the bad files too
    again = load_folder(root, size=16, skip_bad=True)
    assert dict(again.bad_files) == bad


def test_skip_bad_with_nothing_readable(tmp_path, cache):
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.png").write_bytes(b"nope")
    with pytest.raises(ValueError) as info:
        load_folder(root, size=16, skip_bad=True)
    assert "no readable images" in single_line(info.value)


def test_plain_file_that_is_not_a_zip(tmp_path, cache):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError) as info:
        load_folder(path)
    message = single_line(info.value)
    assert str(path) in message and "not a .zip" in message


def test_mixing_2d_and_3d(tmp_path, cache):
    rng = np.random.default_rng(8)
    root = tmp_path / "ds"
    _save(root / "a" / "x.png", _noise(rng))
    (root / "b").mkdir()
    np.save(root / "b" / "v.npy", rng.normal(size=(6, 6, 6)))
    with pytest.raises(ValueError) as info:
        load_folder(root, size=8)
    message = single_line(info.value)
    assert "2D" in message and "3D" in message and str(root) in message


def test_native_sizes_must_agree_without_size(tmp_path, cache):
    rng = np.random.default_rng(9)
    root = tmp_path / "ds"
    _save(root / "a" / "x.png", _noise(rng, 10))
    _save(root / "b" / "y.png", _noise(rng, 12))
    with pytest.raises(ValueError) as info:
        load_folder(root, size=None)
    assert "different sizes" in single_line(info.value)


@pytest.mark.parametrize("size", [1, 0, -4, "x", 2.5])
def test_bad_size(tmp_path, cache, size):
    _make_classes(tmp_path / "ds", {"a": 1, "b": 1})
    with pytest.raises(ValueError) as info:
        load_folder(tmp_path / "ds", size=size)
    message = single_line(info.value)
    assert "size" in message and repr(size) in message


@pytest.mark.parametrize("channels", [2, 0, 4, "rgb"])
def test_bad_channels(tmp_path, cache, channels):
    _make_classes(tmp_path / "ds", {"a": 1, "b": 1})
    with pytest.raises(ValueError) as info:
        load_folder(tmp_path / "ds", channels=channels)
    message = single_line(info.value)
    assert "channels" in message and repr(channels) in message


# --------------------------------------------------------------------------------------------
# resolve("folder:..."): split methods
# --------------------------------------------------------------------------------------------


def test_resolve_flat_folder_is_stratified(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 40, "b": 20})
    source = resolve(f"folder:{root}@16", seed=0)
    assert source.split_method == "stratified"
    assert source.size == 16
    assert source.spec == f"folder:{root}@16"
    assert source.info.class_names == ("a", "b")
    assert source.info.n_channels == 1 and source.info.spatial_dims == 2
    assert source.ratios == pytest.approx((0.8, 0.1, 0.1))
    _check_source_partition(source, 60)
    assert source.splits["train"].images.shape[1:] == (1, 16, 16)
    counts = source.class_counts()
    assert counts["train"].tolist() == [32, 16]
    assert counts["val"].tolist() == [4, 2]
    assert counts["test"].tolist() == [4, 2]
    assert source.warnings == []
    assert source.info.split_sizes == {"train": 48, "val": 6, "test": 6}


def test_resolve_flat_folder_other_ratios(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 40, "b": 20})
    source = resolve(f"folder:{root}@16", seed=0, ratios="0.7/0.15/0.15")
    assert source.ratios == pytest.approx((0.7, 0.15, 0.15))
    _check_source_partition(source, 60)
    for name, r in zip(SPLIT_NAMES, (0.7, 0.15, 0.15), strict=True):
        got = source.splits[name].class_counts(2)
        assert abs(got[0] - r * 40) <= 1.5 and abs(got[1] - r * 20) <= 1.5, (name, got)


def test_resolve_labels_match_folders(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"cat": 10, "dog": 10})
    source = resolve(f"folder:{root}@16")
    for split in source.splits.values():
        for image_id, label in zip(split.ids, split.labels, strict=True):
            assert str(image_id).split("/")[0] == ("cat", "dog")[label]


def test_resolve_same_seed_same_split_other_seed_differs(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 30, "b": 30})
    a = _ids(resolve(f"folder:{root}@16", seed=0))
    b = _ids(resolve(f"folder:{root}@16", seed=0))
    c = _ids(resolve(f"folder:{root}@16", seed=1))
    assert a == b
    assert a != c


def test_resolve_train_test_layout_carves_val(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"a": 27, "b": 18}, seed=1)
    _make_classes(root / "test", {"a": 5, "b": 5}, seed=2)
    source = resolve(f"folder:{root}@16", seed=0)
    assert source.split_method == "folders+val"
    _check_source_partition(source, 55)
    ids = _ids(source)
    assert all(i.startswith("test/") for i in ids["test"]) and len(ids["test"]) == 10
    assert all(i.startswith("train/") for i in ids["train"] + ids["val"])
    assert len(ids["val"]) == 5  # 1/9 of train: train:val = 0.8:0.1
    assert source.splits["val"].class_counts(2).tolist() == [3, 2]


def test_resolve_train_val_test_layout_uses_folders(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"a": 6, "b": 6}, seed=1)
    _make_classes(root / "val", {"a": 2, "b": 2}, seed=2)
    _make_classes(root / "test", {"a": 3, "b": 3}, seed=3)
    source = resolve(f"folder:{root}@16")
    assert source.split_method == "folders"
    _check_source_partition(source, 22)
    for name in SPLIT_NAMES:
        assert all(str(i).startswith(f"{name}/") for i in source.splits[name].ids)
    assert [len(source.splits[s]) for s in SPLIT_NAMES] == [12, 4, 6]


def test_resolve_train_val_layout_carves_test(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"a": 20, "b": 20}, seed=1)
    _make_classes(root / "val", {"a": 2, "b": 2}, seed=2)
    source = resolve(f"folder:{root}@16")
    assert source.split_method == "folders+test"
    _check_source_partition(source, 44)
    assert all(str(i).startswith("val/") for i in source.splits["val"].ids)
    assert all(str(i).startswith("train/") for i in source.splits["test"].ids)
    assert len(source.splits["test"]) > 0


def test_resolve_train_only_layout_is_stratified(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"a": 20, "b": 20})
    source = resolve(f"folder:{root}@16")
    assert source.split_method == "stratified"
    _check_source_partition(source, 40)
    assert all(len(source.splits[s]) > 0 for s in SPLIT_NAMES)


def test_resolve_zip(tmp_path, cache):
    archive = _zip_of_classes(tmp_path / "mm.zip", "medical_mnist", {"Hand": 10, "CXR": 10})
    source = resolve(f"folder:{archive}@16")
    assert source.split_method == "stratified"
    assert source.info.class_names == ("CXR", "Hand")
    assert source.info.name == "mm.zip"
    _check_source_partition(source, 20)


def test_resolve_coloured_folder_has_three_channels(tmp_path, cache):
    rng = np.random.default_rng(10)
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        for i in range(10):
            _save(root / cls / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    source = resolve(f"folder:{root}@16")
    assert source.info.n_channels == 3
    assert source.splits["train"].images.shape[1:] == (3, 16, 16)
    gray = resolve(f"folder:{root}@16", channels=1)
    assert gray.info.n_channels == 1


def test_resolve_duplicates_in_flat_folder_stay_together(tmp_path, cache):
    rng = np.random.default_rng(11)
    root = tmp_path / "ds"
    _make_classes(root, {"a": 20, "b": 20})
    dup = _noise(rng)
    names = [f"dup{i}.png" for i in range(4)]
    for name in names:
        _save(root / "a" / name, dup)
    for seed in range(5):
        source = resolve(f"folder:{root}@16", seed=seed)
        homes = {name for name, split in source.splits.items()
                 for i in split.ids if str(i).split("/")[-1] in names}
        assert len(homes) == 1, f"seed {seed}: copies landed in {homes}"
        assert source.warnings == []


def test_resolve_skip_bad_lists_bad_files(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 10, "b": 10})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="b/broken.png"):
        resolve(f"folder:{root}@16")
    source = resolve(f"folder:{root}@16", skip_bad=True)
    assert [name for name, _ in source.bad_files] == ["b/broken.png"]
    _check_source_partition(source, 20)


def test_resolve_missing_folder(tmp_path, cache):
    with pytest.raises(FileNotFoundError) as info:
        resolve(f"folder:{tmp_path / 'missing'}")
    assert "missing" in single_line(info.value)


def test_resolve_plain_file(tmp_path, cache):
    path = tmp_path / "images.tar"
    path.write_bytes(b"\x00" * 600)
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{path}")
    assert "not a .zip" in single_line(info.value)


@pytest.mark.parametrize("kwargs", [{"size": 1}, {"size": "x"}])
def test_resolve_bad_size(tmp_path, cache, kwargs):
    _make_classes(tmp_path / "ds", {"a": 5, "b": 5})
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{tmp_path / 'ds'}", **kwargs)
    assert repr(kwargs["size"]) in single_line(info.value)


def test_resolve_spec_size_one_rejected(tmp_path, cache):
    _make_classes(tmp_path / "ds", {"a": 5, "b": 5})
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{tmp_path / 'ds'}@1")
    assert "got 1" in single_line(info.value)


def test_resolve_bad_channels(tmp_path, cache):
    _make_classes(tmp_path / "ds", {"a": 5, "b": 5})
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{tmp_path / 'ds'}@16", channels=2)
    assert "got 2" in single_line(info.value)


def test_resolve_bad_ratios(tmp_path, cache):
    _make_classes(tmp_path / "ds", {"a": 5, "b": 5})
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{tmp_path / 'ds'}@16", ratios="0.5/0.5")
    assert "'0.5/0.5'" in single_line(info.value)


def test_resolve_size_disagreeing_with_spec(tmp_path, cache):
    _make_classes(tmp_path / "ds", {"a": 5, "b": 5})
    with pytest.raises(ValueError, match="disagrees"):
        resolve(f"folder:{tmp_path / 'ds'}@16", size=32)


# --------------------------------------------------------------------------------------------
# cache, saved splits, leakage warnings
# --------------------------------------------------------------------------------------------


def test_resolve_twice_second_from_cache(tmp_path, cache, monkeypatch):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 15, "b": 15})
    first = resolve(f"folder:{root}@16", seed=2)
    entries = list((cache / "folders").glob("*/meta.json"))
    assert len(entries) == 1, "the decoded arrays should be cached under MEDLENS_CACHE/folders"

    def no_decoding(*args, **kwargs):
        raise AssertionError("files were decoded again although a cache entry exists")

    monkeypatch.setattr(folder_module, "_decode_all", no_decoding)
    second = resolve(f"folder:{root}@16", seed=2)
    assert _ids(first) == _ids(second)
    for name in SPLIT_NAMES:
        np.testing.assert_array_equal(first.splits[name].images, second.splits[name].images)
        np.testing.assert_array_equal(first.splits[name].labels, second.splits[name].labels)
    assert first.fingerprint == second.fingerprint
    assert len(list((cache / "folders").glob("*/meta.json"))) == 1


def test_cache_is_invalidated_by_a_changed_file(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 3, "b": 3})
    before = load_folder(root, size=16)
    new = np.full((16, 16), 9, dtype=np.uint8)
    _save(root / "a" / "000.png", new)
    os.utime(root / "a" / "000.png", ns=(1, 1))  # a different mtime even on coarse clocks
    after = load_folder(root, size=16)
    assert after.fingerprint != before.fingerprint
    np.testing.assert_array_equal(after.images[0, 0], new)
    assert len(list((cache / "folders").glob("*/meta.json"))) == 2


def test_cache_key_depends_on_size_and_channels(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 2, "b": 2})
    assert load_folder(root, size=16).images.shape == (4, 1, 16, 16)
    assert load_folder(root, size=8).images.shape == (4, 1, 8, 8)
    assert load_folder(root, size=8, channels=3).images.shape == (4, 3, 8, 8)
    assert len(list((cache / "folders").glob("*/meta.json"))) == 3


def test_use_cache_false_writes_nothing(tmp_path, cache):
    _make_classes(tmp_path / "ds", {"a": 2, "b": 2})
    load_folder(tmp_path / "ds", size=8, use_cache=False)
    assert not list(cache.glob("folders/*/meta.json"))


def test_save_splits_round_trip(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root, {"a": 15, "b": 15})
    source = resolve(f"folder:{root}@16", seed=5, ratios="0.7/0.15/0.15")
    written = source.save_splits(tmp_path / "out" / "nested" / "splits.json")
    assert written == tmp_path / "out" / "nested" / "splits.json"
    assert written.exists() and not written.with_name("splits.json.tmp").exists()
    assert load_split_ids(written) == _ids(source)
    record = json.loads(written.read_text())
    assert record["method"] == "stratified"
    assert record["seed"] == 5
    assert record["ratios"] == pytest.approx([0.7, 0.15, 0.15])
    assert record["fingerprint"] == source.fingerprint
    # another seed gives a different fingerprint
    assert resolve(f"folder:{root}@16", seed=6).fingerprint != source.fingerprint


def test_identical_images_in_train_and_test_warn_about_leakage(tmp_path, cache):
    rng = np.random.default_rng(12)
    root = tmp_path / "ds"
    _make_classes(root / "train", {"a": 10, "b": 10}, seed=1)
    _make_classes(root / "test", {"a": 3, "b": 3}, seed=2)
    copy = _noise(rng)
    _save(root / "train" / "a" / "patient7.png", copy)
    _save(root / "test" / "b" / "patient7_again.png", copy)
    source = resolve(f"folder:{root}@16")
    assert source.split_method == "folders+val"
    assert len(source.warnings) == 1
    warning = source.warnings[0]
    assert "\n" not in warning
    assert "leakage" in warning
    assert "1 image(s)" in warning
    assert "train/a/patient7.png" in warning and "test/b/patient7_again.png" in warning


def test_no_leakage_warning_for_distinct_split_folders(tmp_path, cache):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"a": 10, "b": 10}, seed=1)
    _make_classes(root / "test", {"a": 3, "b": 3}, seed=2)
    assert resolve(f"folder:{root}@16").warnings == []


# --------------------------------------------------------------------------------------------
# integration: the real data in ../shared/data
# --------------------------------------------------------------------------------------------


def _shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent")
    return path


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """MEDLENS_CACHE for a module-scoped fixture (monkeypatch is function-scoped)."""
    path = tmp_path_factory.mktemp("medlens_cache")
    old = os.environ.get("MEDLENS_CACHE")
    os.environ["MEDLENS_CACHE"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("MEDLENS_CACHE", None)
        else:
            os.environ["MEDLENS_CACHE"] = old


@pytest.fixture(scope="module")
def medical_mnist(module_cache):
    archive = _shared("medical_mnist/medical_mnist.zip")
    return resolve(f"folder:{archive}", seed=0)


@pytest.fixture(scope="module")
def covid19(module_cache):
    return resolve(f"folder:{_shared('covid19')}", seed=0)


@pytest.mark.integration
@pytest.mark.slow
def test_medical_mnist_counts_and_classes(medical_mnist):
    source = medical_mnist
    assert source.info.class_names == ("AbdomenCT", "BreastMRI", "CXR", "ChestCT", "Hand", "HeadCT")
    assert sum(len(source.splits[s]) for s in SPLIT_NAMES) == 58954
    assert source.split_method == "stratified"
    assert source.size == 64
    assert source.info.n_channels == 1
    for split in source.splits.values():
        assert split.images.shape[1:] == (1, 64, 64)
        assert split.images.dtype == np.uint8
    totals = sum(source.class_counts().values())
    assert totals.tolist() == [10000, 8954, 10000, 10000, 10000, 10000]
    # roughly 0.8 / 0.1 / 0.1 of every class
    for name, r in zip(SPLIT_NAMES, (0.8, 0.1, 0.1), strict=True):
        counts = source.class_counts()[name]
        assert np.all(np.abs(counts - r * totals) <= 0.01 * totals + 25), (name, counts)


@pytest.mark.integration
@pytest.mark.slow
def test_medical_mnist_no_id_or_pixels_in_two_splits(medical_mnist):
    source = medical_mnist
    ids = np.concatenate([source.splits[s].ids for s in SPLIT_NAMES])
    assert len(np.unique(ids)) == len(ids) == 58954
    images = np.concatenate([source.splits[s].images for s in SPLIT_NAMES])
    tags = np.concatenate([np.full(len(source.splits[s]), i) for i, s in enumerate(SPLIT_NAMES)])
    groups = duplicate_groups(images)
    # every group of identical images lies in one split
    order = np.argsort(groups, kind="stable")
    g_sorted, t_sorted = groups[order], tags[order]
    same_group = g_sorted[1:] == g_sorted[:-1]
    assert not np.any(same_group & (t_sorted[1:] != t_sorted[:-1])), "identical images in two splits"
    # No byte-identical copies across splits; near-identical ones are real here (MedNIST's CT classes
    # are neighbouring slices of few scans) and reported as such.
    assert source.leakage["identical"]["count"] == 0
    assert all("near-identical" in warning for warning in source.warnings)


@pytest.mark.integration
def test_covid19_folders_plus_val(covid19):
    source = covid19
    assert source.info.class_names == ("Covid", "Normal", "Viral Pneumonia")
    assert source.split_method == "folders+val"
    assert len(source.splits["train"]) + len(source.splits["val"]) == 251
    assert len(source.splits["test"]) == 66
    assert len(source.splits["val"]) > 0
    assert all(str(i).startswith("test/") for i in source.splits["test"].ids)
    assert source.class_counts()["test"].tolist() == [26, 20, 20]
    assert (source.class_counts()["train"] + source.class_counts()["val"]).tolist() == [111, 70, 70]


@pytest.mark.integration
def test_covid19_has_leakage_warning(covid19):
    warning = next(w for w in covid19.warnings if "byte-identical" in w)
    assert "leakage" in warning and "(test)" in warning


def test_non_numeric_size_after_at_is_a_bad_size(tmp_path):
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{tmp_path}@big")
    message = str(info.value)
    assert "bad size 'big'" in message and "\n" not in message


def test_folder_whose_name_contains_at_still_loads(tmp_path):
    root = tmp_path / "scans@v2"
    _make_classes(root, {"a": 10, "b": 10})
    source = resolve(f"folder:{root}@16")
    assert source.info.class_names == ("a", "b")


# --------------------------------------------------------------------------------------------
# layouts and failures found in review
# --------------------------------------------------------------------------------------------


def _zip_of(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _class_pngs(n: int = 4, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"{cls}/{i}.png": _png_bytes(_noise(rng)) for cls in ("A", "B") for i in range(n)}


def test_zip_member_with_bad_crc_is_named_not_a_traceback(tmp_path):
    members = _class_pngs()
    path = _zip_of(tmp_path / "x.zip", members)
    raw = bytearray(path.read_bytes())
    offset = raw.index(members["A/0.png"][20:40])  # inside the stored bytes of A/0.png
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as info:
        load_folder(path, size=16)
    message = single_line(info.value)
    assert "A/0.png" in message and "CRC" in message
    data = load_folder(path, size=16, skip_bad=True)
    assert [name for name, _ in data.bad_files] == ["A/0.png"] and len(data.labels) == 7


def test_windows_and_dot_slash_zip_names_are_normalised(tmp_path):
    members = _class_pngs()
    windows = {name.replace("/", "\\"): data for name, data in members.items()}
    dotted = {"./" + name: data for name, data in members.items()}
    for label, entries in (("windows", windows), ("dotted", dotted)):
        data = load_folder(_zip_of(tmp_path / f"{label}.zip", entries), size=16, use_cache=False)
        assert data.class_names == ("A", "B") and len(data.labels) == 8
        assert sorted(data.ids.tolist()) == sorted(members)


def test_train_folder_without_class_folders_is_a_clear_error(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    _save(root / "train" / "x1.png", _noise(rng))
    _make_classes(root / "test", {"A": 3, "B": 3})
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{root}@16")
    message = single_line(info.value)
    assert "train folder holds no class folders" in message


def test_skip_bad_that_empties_a_split_is_a_clear_error(tmp_path):
    root = tmp_path / "ds"
    for cls in ("A", "B"):
        (root / "train" / cls).mkdir(parents=True)
        (root / "train" / cls / "0.png").write_bytes(b"not a png")
    _make_classes(root / "test", {"A": 3, "B": 3})
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{root}@16", skip_bad=True)
    assert "no readable images left in the train folder" in single_line(info.value)


def test_valid_folder_is_the_validation_split(tmp_path):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"A": 10, "B": 10})
    _make_classes(root / "valid", {"A": 7, "B": 7}, seed=1)
    _make_classes(root / "test", {"A": 3, "B": 3}, seed=2)
    source = resolve(f"folder:{root}@16")
    assert source.split_method == "folders"
    assert [len(source.splits[s]) for s in SPLIT_NAMES] == [20, 14, 6]
    assert all(str(i).startswith("valid/") for i in source.splits["val"].ids)


def test_unknown_folder_beside_split_folders_is_an_error(tmp_path):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"A": 4, "B": 4})
    _make_classes(root / "test", {"A": 2, "B": 2}, seed=1)
    _make_classes(root / "holdout", {"A": 2, "B": 2}, seed=2)
    with pytest.raises(ValueError) as info:
        load_folder(root, size=16)
    message = single_line(info.value)
    assert "holdout/" in message and "train/" in message


def test_two_validation_folders_are_an_error(tmp_path):
    root = tmp_path / "ds"
    _make_classes(root / "train", {"A": 4, "B": 4})
    _make_classes(root / "val", {"A": 2, "B": 2}, seed=1)
    _make_classes(root / "validation", {"A": 2, "B": 2}, seed=2)
    with pytest.raises(ValueError, match="two val folders"):
        load_folder(root, size=16)


def test_unwritable_cache_warns_and_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("MEDLENS_CACHE", str(blocker / "cache"))
    root = tmp_path / "ds"
    _make_classes(root, {"A": 10, "B": 10})
    with pytest.warns(UserWarning, match="decode cache"):
        data = load_folder(root, size=16)
    assert len(data.labels) == 20


def test_split_errors_name_the_class_folder(tmp_path):
    root = tmp_path / "ds"
    _make_classes(root, {"Common": 20, "Rare": 1})
    with pytest.raises(ValueError) as info:
        resolve(f"folder:{root}@16")
    assert "class 'Rare' has 1" in single_line(info.value)
