"""Atomic writes: every file medlens writes appears whole under its final name, or not at all."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name is unique per process, so two writers never share it. On any error the
    temporary file (or folder) is removed and the error propagates; what was at ``path`` before
    stays untouched. Write through file handles (``np.save`` would append ``.npy`` to a name).
    A process killed mid-write (``kill -9``, a full disk that ends it) cannot clean up: the next
    write of the same file removes the temporary files that dead processes left beside it.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.NAME.tmpPID`` files beside ``path`` whose process no longer runs."""
    import glob

    prefix = f".{path.name}.tmp"
    for stale in path.parent.glob(glob.escape(prefix) + "*"):
        pid = stale.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or _process_alive(int(pid)):
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's), or we cannot tell: leave its file alone
    return True


def json_ready(value):
    """A copy fit for strict JSON: numpy scalars and arrays as Python values, NaN and infinities as ``None``.

    Example:
        >>> json_ready({"auc": float("nan"), "n": [1, 2.5]})
        {'auc': None, 'n': [1, 2.5]}
    """
    import math

    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy arrays and scalars, without importing numpy
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, value) -> Path:
    """Write ``value`` as strict, indented JSON (NaN as ``null``) under an atomic rename; returns the path."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_ready(value), indent=1, allow_nan=False) + "\n")
    return Path(path)


# SHA-256 of each file version hashed in this process, oldest first: a serve start asks for the
# weights' hash three times (export, its check at load, the model version) and reads them once.
_SHA256_CACHE: dict[tuple, str] = {}
_SHA256_CACHE_SIZE = 256
_SHA256_LOCK = threading.Lock()


def _hash_contents(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's contents, read in 1 MiB chunks (uncached)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's contents, computed once per version of the file per process.

    A version is the file's real path, device, inode, size and modification time (ns): a rewrite
    (an atomic rename brings a new inode) or any change of size or time is hashed afresh.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = target.write_text("done")
        >>> file_sha256(target)[:12]
        'a4c3ed04a95a'
    """
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    with _SHA256_LOCK:
        known = _SHA256_CACHE.get(key)
    if known is not None:
        return known
    digest = _hash_contents(path)
    with _SHA256_LOCK:
        _SHA256_CACHE[key] = digest
        while len(_SHA256_CACHE) > _SHA256_CACHE_SIZE:
            del _SHA256_CACHE[next(iter(_SHA256_CACHE))]
    return digest
