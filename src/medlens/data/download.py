"""Data root resolution and verified, resumable downloads of MedMNIST files.

Resolution order for the data root: an explicit ``root`` argument (``--root``), then
``$MEDLENS_DATA``, then ``~/.medlens/data``. A missing file is downloaded from its official URL
into ``<root>/<file>.part`` (resumed with an HTTP Range request when a partial file is there),
its MD5 checked, and only then renamed into place, so a file under its final name is always
complete and verified.

Written on urllib rather than ``requests``/``monai.apps.download_url`` because neither resumes a
partial file with a Range request, and this keeps ``medlens fetch`` free of heavy imports.

Example:
    >>> from medlens.data.download import data_root
    >>> data_root("/tmp/medmnist").name
    'medmnist'
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from medlens._io import atomic_path
from medlens.data.registry import RemoteFile

CHUNK = 1 << 20  # bytes read per network / disk step


class DownloadError(OSError):
    """A download failed or its checksum did not match; the message says what to do by hand."""


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data folder: ``root`` if given, else ``$MEDLENS_DATA``, else ``~/.medlens/data``.

    Nothing is created here (importing or resolving has no side effects).
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("MEDLENS_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".medlens" / "data"


def cache_root() -> Path:
    """Folder for derived files (decoded image folders, uncompressed arrays, MD5 stamps).

    ``$MEDLENS_CACHE`` if set, else ``~/.medlens/cache``. The data root may be read-only, so
    derived files never go there.
    """
    env = os.environ.get("MEDLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".medlens" / "cache"


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def cached_md5(path: str | os.PathLike) -> str:
    """MD5 of a local file, remembered under ``cache_root()/md5`` by path, size and mtime.

    An unchanged file is hashed once, not on every load (a 224-px file is several GB, about
    1.2 s per GB here). A changed size or modification time hashes it again.
    """
    path = Path(path)
    stat = path.stat()
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    stamp = cache_root() / "md5" / f"{key}.json"
    mark = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        record = json.loads(stamp.read_text())
        if {k: record.get(k) for k in mark} == mark and isinstance(record.get("md5"), str):
            return record["md5"]
    except (OSError, ValueError):
        pass
    digest = md5sum(path)
    try:
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps({**mark, "md5": digest}))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


def verify_md5(path: Path, expected: str, url: str) -> None:
    """Check a local file's MD5 (see :func:`cached_md5`).

    Raises:
        ValueError: the sums differ; the message names both sums and the URL to download from.
    """
    actual = cached_md5(path)
    if actual != expected:
        raise ValueError(
            f"{path} has MD5 {actual}, expected {expected}: the file is damaged or not the official "
            f"one; delete it to download again from {url}, or pass verify=False (--no-verify)"
        )


def _manual_hint(remote: RemoteFile, folder: Path) -> str:
    return (
        f"download {remote.url} by hand (expected MD5 {remote.md5}) and put it at "
        f"{folder / remote.filename}"
    )


# A mirror of the MedMNIST files (a proxy-reachable server, a local folder served over HTTP):
# files are fetched from ``$MEDLENS_MIRROR/<file name>`` instead of their official URL; the
# official MD5 is checked all the same.
MIRROR_ENV = "MEDLENS_MIRROR"


def source_url(remote: RemoteFile, url: str | None = None) -> str:
    """Where ``remote`` is downloaded from: ``url`` if given, else ``$MEDLENS_MIRROR/<file name>``
    when that is set, else the official URL."""
    if url:
        return url
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{remote.filename}"
    return remote.url


def download(
    remote: RemoteFile,
    folder: str | os.PathLike,
    *,
    url: str | None = None,
    attempts: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
    backoff: float = 1.0,
) -> Path:
    """Download ``remote`` into ``folder``, resuming a partial file, and verify its MD5.

    Args:
        remote: URL, MD5 and file name (from :meth:`DatasetInfo.file`).
        folder: destination folder; created if missing.
        url: download from here instead (default: :func:`source_url`: ``$MEDLENS_MIRROR`` or the
            official URL); the file must still have the official MD5.
        attempts: tries in all (>= 1); each one resumes where the last stopped.
        timeout: seconds without data before an attempt counts as dropped.
        progress: show a tqdm progress bar on stderr.
        backoff: seconds to wait before retrying after a server error (5xx, 429) or a refused
            connection, doubled each time; a connection dropped mid-transfer is resumed at once.

    Returns:
        Path of the verified file.

    Raises:
        DownloadError: unreachable URL, connection dropped on every attempt, or wrong MD5. The
            message names the URL, the expected MD5 and where to put the file by hand.
    """
    remote = dataclasses.replace(remote, url=source_url(remote, url))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / remote.filename
    part = folder / (remote.filename + ".part")
    last_error: Exception | None = None
    for attempt in range(max(1, attempts)):
        had = part.stat().st_size if part.exists() else 0
        try:
            _fetch_into(remote.url, part, timeout=timeout, progress=progress)
            last_error = None
            break
        except (OSError, http.client.HTTPException) as exc:  # URLError and HTTPError are OSErrors
            last_error = exc
            if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                break  # a 404/403 will not change on retry
            progressed = part.exists() and part.stat().st_size > had
            if not progressed and attempt + 1 < attempts:
                time.sleep(backoff * 2**attempt)
    if last_error is not None:
        kept = f"; {part.stat().st_size} bytes kept in {part} for a resume" if part.exists() else ""
        raise DownloadError(f"download of {remote.url} failed ({_reason(last_error)}){kept}; "
                            + _manual_hint(remote, folder))
    actual = md5sum(part)
    if actual != remote.md5:
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {remote.url}: got MD5 {actual}, expected {remote.md5} "
            f"(the bad file was removed); " + _manual_hint(remote, folder)
        )
    os.replace(part, final)
    return final


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``; raise on a short read."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "medlens"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) URLs from the registry or the user)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already whole (or longer): check it
            return
        raise
    with response:
        if have:
            start = _range_start(response) if response.status == 206 else None
            # A server may answer from an earlier offset (ranges aligned to blocks): keep the
            # partial file up to there. Anything else (200, or a later start): start over.
            have = start if start is not None and start <= have else 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = _progress_bar(part.name.removesuffix(".part"), total, have) if progress else None
        try:
            with open(part, "r+b" if have else "wb") as out:
                out.truncate(have)
                out.seek(have)
                # read1 returns what has arrived: bytes received before a stall are kept.
                while block := response.read1(CHUNK):
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    size = part.stat().st_size
    if total is not None and size < total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")


def _range_start(response) -> int | None:
    """First byte of a 206 response's ``Content-Range: bytes START-END/TOTAL``, or None."""
    value = response.headers.get("Content-Range", "")
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _progress_bar(name: str, total: int | None, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, file=sys.stderr, leave=False)
