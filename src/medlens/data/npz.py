"""Load MedMNIST-layout ``.npz`` files (2D and 3D, any size) without per-item file I/O.

A MedMNIST file holds ``{train,val,test}_{images,labels}``: images uint8 ``(N, H, W)``,
``(N, H, W, 3)`` or ``(N, D, H, W)``, labels ``(N, 1)`` or ``(N, K)`` for multi-label.

Small files are read into RAM (each array decompressed once, straight into its final buffer).
Files whose arrays exceed ``mmap_threshold`` bytes (PathMNIST at 224 px is 13.5 GB of pixels)
are streamed member by member, in chunks, into uncompressed ``.npy`` files under
``cache_root()/npz`` the first time, and memory-mapped from there: the pixels are never whole in
RAM, let alone twice. numpy cannot memory-map inside a deflated zip, hence the cache.

Example:
    >>> from medlens.data.npz import read_npz_header  # doctest: +SKIP
    >>> read_npz_header("breastmnist.npz")["train_images"]  # doctest: +SKIP
    ((546, 28, 28), dtype('uint8'))
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from medlens._io import atomic_path
from medlens.data.download import cache_root
from medlens.data.registry import SPLITS

REQUIRED_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
DEFAULT_MMAP_THRESHOLD = 2 << 30  # bytes of uncompressed arrays above which a file is mmapped
_STREAM_CHUNK = 16 << 20  # bytes decompressed per step: bounds the memory streaming takes
# What a damaged archive raises while reading: turned into one ValueError naming the file.
_DAMAGE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError)


class CacheWriteError(OSError):
    """The uncompressed cache could not be written (no space, read-only folder): not damage."""


def _read_member_header(fh) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    return np.lib.format.read_array_header_2_0(fh)


def read_npz_header(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of every array in an ``.npz`` without reading the data.

    Raises:
        ValueError: not a readable ``.npz`` archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            out = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as fh:
                    shape, fortran, dtype = _read_member_header(fh)
                out[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
            return out
    except _DAMAGE_ERRORS as exc:
        raise ValueError(f"{path} is not a readable .npz file ({exc})") from exc


def check_npz_keys(path: str | os.PathLike, header: dict) -> None:
    """``ValueError`` naming the missing keys when ``path`` lacks any MedMNIST key."""
    missing = [k for k in REQUIRED_KEYS if k not in header]
    if missing:
        raise ValueError(
            f"{path} is missing key(s) {', '.join(missing)}; a MedMNIST .npz needs "
            f"{', '.join(REQUIRED_KEYS)} (found: {', '.join(sorted(header)) or 'none'})"
        )


def load_npz_arrays(
    path: str | os.PathLike,
    *,
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
) -> dict[str, np.ndarray]:
    """The six MedMNIST arrays of ``path``, in RAM or memory-mapped (see module docstring).

    Args:
        path: the ``.npz`` file.
        mmap_threshold: total uncompressed bytes above which arrays are memory-mapped from an
            uncompressed cache instead of held in RAM. ``0`` always maps.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an ``.npz``, or a required key missing (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    header = read_npz_header(path)
    check_npz_keys(path, header)
    objects = [key for key in REQUIRED_KEYS if header[key][1].hasobject]
    if objects:
        raise ValueError(f"{path}: {', '.join(objects)} hold Python objects, not numbers; MedMNIST "
                         "arrays are uint8 images and integer labels")
    total = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in header.values())
    try:
        if total <= mmap_threshold:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in REQUIRED_KEYS}
        return _mmap_from_cache(path, total)
    except CacheWriteError:
        raise
    except _DAMAGE_ERRORS as exc:
        raise ValueError(
            f"{path} is damaged ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from exc


def _mmap_from_cache(path: Path, total: int) -> dict[str, np.ndarray]:
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / "npz" / f"{path.stem}-{tag}"
    arrays = {}
    with zipfile.ZipFile(path) as archive:
        for key in REQUIRED_KEYS:
            target = folder / f"{key}.npy"
            if not target.exists():
                _stream_member(archive, f"{key}.npy", target, total)
            arrays[key] = np.load(target, mmap_mode="r")
    return arrays


def _stream_member(archive: zipfile.ZipFile, member: str, target: Path, total: int) -> None:
    """Copy one ``.npy`` member, decompressing chunk by chunk, to ``target`` (bounded memory).

    The member already is a complete ``.npy`` file (header and data), so its bytes are copied
    as they are; the zip's CRC check catches a damaged member at the end of the read. Plain file
    writes (not writes into a memory map) turn a full disk into an error instead of a SIGBUS.
    """
    with archive.open(member) as source:
        try:
            with atomic_path(target) as tmp, open(tmp, "wb") as out:
                while block := source.read(_STREAM_CHUNK):  # damage errors propagate as they are
                    try:
                        out.write(block)
                    except OSError as exc:
                        raise _cache_error(target.parent, total, exc) from exc
        except (PermissionError, FileNotFoundError, NotADirectoryError) as exc:
            # the cache folder itself cannot be created or written
            raise _cache_error(target.parent, total, exc) from exc


def _cache_error(folder: Path, total: int, exc: OSError) -> CacheWriteError:
    return CacheWriteError(
        f"cannot write the uncompressed cache in {folder} ({type(exc).__name__}: {exc}); it needs "
        f"about {total / 2**30:.1f} GiB free; set $MEDLENS_CACHE to a writable folder with room"
    )
