"""Folders and archives as an attacker or an unlucky user makes them (issue 20): unsafe zip entries,
zip bombs, dangling links, FIFOs, non-finite pixels and multi-page TIFF files."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medlens.data import folder as folder_module
from medlens.data.folder import load_folder
from medlens.data.readers import read_image
from helpers import single_line


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("MEDLENS_CACHE", str(path))
    return path


def _png(seed: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _classes(root: Path, per_class: int = 3) -> Path:
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(_png(10 * c + i))
    return root


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _good_members() -> dict[str, bytes]:
    return {f"{c}/{i}.png": _png(10 * k + i) for k, c in enumerate(("a", "b")) for i in range(3)}


@pytest.mark.parametrize("entry", ["/abs/x.png", "a/../../escape.png", "../b/x.png", "C:/Windows/x.png"])
def test_absolute_and_dotdot_entries_are_refused_by_name(tmp_path, entry):
    """One '/abs/x.png' entry silently merged two classes and added a class 'abs'."""
    archive = _zip(tmp_path / "data.zip", {**_good_members(), entry: _png(99)})
    with pytest.raises(ValueError) as info:
        load_folder(archive, size=8)
    message = single_line(info.value)
    assert repr(entry) in message and "absolute path or '..'" in message


def test_a_member_declaring_too_many_bytes_is_refused_before_inflating(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "MAX_MEMBER_BYTES", 1 << 20)
    noise = np.random.default_rng(0).integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()  # incompressible
    archive = _zip(tmp_path / "data.zip", {**_good_members(), "a/big.png": noise})
    inflated = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, *a, **k: inflated.append(a) or b"")
    with pytest.raises(ValueError) as info:
        load_folder(archive, size=8)
    assert "'a/big.png' inflate(s) to more than 1 MiB each" in single_line(info.value)
    assert inflated == []  # refused from the central directory alone


def test_a_zip_bomb_member_is_refused_by_its_compression_ratio(tmp_path):
    """A 1.09 MB zip with a 1 GiB member drove preview to 2.14 GB; here 64 MiB of zeros (~64 KB zipped)."""
    archive = _zip(tmp_path / "bomb.zip", {**_good_members(), "b/bomb.png": bytes(64 << 20)})
    assert archive.stat().st_size < 200_000
    with pytest.raises(ValueError) as info:
        load_folder(archive, size=8)
    assert "'b/bomb.png' compressed more than 200:1" in single_line(info.value)


def test_members_declaring_too_much_together_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "MAX_TOTAL_BYTES", 1000)
    with pytest.raises(ValueError) as info:
        load_folder(_zip(tmp_path / "data.zip", _good_members()), size=8)
    assert "more than the limit of 0 GiB" in single_line(info.value)
    monkeypatch.setattr(folder_module, "MAX_TOTAL_BYTES", 64 << 30)
    assert len(load_folder(tmp_path / "data.zip", size=8).labels) == 6  # a normal archive loads


def test_a_dangling_link_is_an_error_naming_it_or_skipped_and_listed(tmp_path):
    root = _classes(tmp_path / "data")
    (root / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / ".hidden-link").symlink_to(tmp_path / "nowhere.txt")  # hidden: ignored, dangling or not
    (root / "b" / ".DS_Store").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError) as info:
        load_folder(root, size=8)
    message = single_line(info.value)
    assert "1 unreadable file(s)" in message and "a/gone.png (a dangling symbolic link)" in message
    data = load_folder(root, size=8, skip_bad=True)
    assert data.bad_files == [("a/gone.png", "a dangling symbolic link")] and len(data.labels) == 6


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_named_like_an_image_is_never_opened(tmp_path):
    """Reading a FIFO blocks for ever: the loader hung."""
    root = _classes(tmp_path / "data")
    os.mkfifo(root / "b" / "pipe.png")
    with pytest.raises(ValueError) as info:
        load_folder(root, size=8)
    assert "b/pipe.png (not a regular file" in single_line(info.value)
    assert load_folder(root, size=8, skip_bad=True).bad_files[0][0] == "b/pipe.png"


def test_non_finite_pixels_are_zeroed_with_a_warning_naming_the_file():
    values = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    values[0, :3] = [np.nan, np.inf, -np.inf]
    buffer = io.BytesIO()
    np.save(buffer, values)
    with pytest.warns(UserWarning, match=r"scan.npy: 3 NaN or infinite pixel value\(s\) of 64 set to 0"):
        assert read_image(buffer.getvalue(), "scan.npy", size=None).pixels.shape == (8, 8)


def test_a_multi_page_tiff_warns_that_only_the_first_page_is_used():
    pages = [Image.fromarray(np.full((8, 8), v, dtype=np.uint8)) for v in (10, 200)]
    buffer = io.BytesIO()
    pages[0].save(buffer, "TIFF", save_all=True, append_images=pages[1:])
    with pytest.warns(UserWarning, match=r"stack.tif: a multi-page TIFF \(2 pages\); only the first page is used"):
        assert (read_image(buffer.getvalue(), "stack.tif", size=None).pixels == 10).all()
