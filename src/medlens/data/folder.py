"""Image-folder and zip-archive datasets, decoded once into uint8 arrays (and cached).

Layouts understood, in a directory or a ``.zip`` (single wrapping folders are descended):

    ROOT/<class>/<image>                       no split: medlens makes one
    ROOT/{train,val,test}/<class>/<image>      any of the three present (train required)

Files are listed in sorted order, so the same folder gives the same arrays and splits on every
machine. Every file is decoded and resized once; the decoded arrays are cached under
``cache_root()/folders`` keyed by the listing (names, sizes, times), the size and channel choice.
Unreadable files are all reported by name in one error, or skipped and listed with ``skip_bad``;
so are entries of a folder that are not regular files (a FIFO, a device, a dangling symbolic link)
where an image is expected. Hidden files are ignored, dangling or not.

Archives are checked before a byte is inflated: an entry with an absolute path or a ``..``
component is refused (it would land in another class, or outside the dataset, if unpacked), and
so are members that declare more than :data:`MAX_MEMBER_BYTES`, archives whose members declare
more than :data:`MAX_TOTAL_BYTES` together, and members compressed more than
:data:`MAX_COMPRESSION_RATIO` to one (zip bombs). zipfile stops reading a member at the size it
declares (and checks its CRC), so the declared sizes bound what is inflated.

Example:
    >>> from medlens.data.folder import load_folder  # doctest: +SKIP
    >>> data = load_folder("../shared/data/covid19", size=64)  # doctest: +SKIP
    >>> data.class_names, sorted(data.split_of)  # doctest: +SKIP
    (('Covid', 'Normal', 'Viral Pneumonia'), ['test', 'train'])
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import stat as stat_kinds
import warnings
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medlens._io import atomic_path
from medlens.data.download import cache_root
from medlens.data.readers import (
    SUPPORTED_SUFFIXES,
    UnreadableImage,
    file_suffix,
    read_image,
)
from medlens.data.splits import duplicate_groups

SPLIT_FOLDERS = ("train", "val", "test")
# Folder names (lower case) taken as a split, as datasets on the web name them.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}
CACHE_VERSION = 2
_IGNORED_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}
_PARALLEL_MIN_FILES = 2000  # below this, process start-up costs more than it saves
_CHUNK = 1000
# Zip-bomb limits. A member: the largest medical image a folder dataset plausibly holds is a CT
# volume (512 x 512 x 1,000 int16 = 0.5 GB uncompressed); the decoder then needs a few times that.
MAX_MEMBER_BYTES = 1 << 30
# All members together (declared, uncompressed): 64 GiB is ~ 20 million 28-px PNGs or 60,000
# chest X-rays; an archive claiming more is refused before hours of inflating.
MAX_TOTAL_BYTES = 64 << 30
# Deflate reaches ~1,030:1 on constant data, what bombs are made of; images compress far less
# (PNG/JPEG ~1:1, raw CT/MR volumes 2-10:1, mostly empty masks up to ~100:1). Checked only for
# members over 1 MiB, where the ratio can cost memory.
MAX_COMPRESSION_RATIO = 200
_RATIO_MIN_BYTES = 1 << 20


@dataclass
class FolderData:
    """Decoded contents of a folder or archive.

    Attributes:
        images: uint8 ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        labels: int64 ``(N,)`` class ids, indices into ``class_names``.
        ids: ``(N,)`` relative file paths (posix), the identity of each image.
        split_of: ``{split: int array of row indices}`` for pre-split layouts; empty otherwise.
        class_names: sorted class folder names.
        groups: ``(N,)`` ids shared by byte-identical images (see ``splits.duplicate_groups``).
        bad_files: ``[(relative path, reason)]`` skipped with ``skip_bad``.
        fingerprint: hex digest of the listing and options (also the cache key).
    """

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    split_of: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    groups: np.ndarray
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def spatial_dims(self) -> int:
        return self.images.ndim - 2


class _Tree:
    """A directory or a zip archive seen as relative posix paths -> (size, modification time)."""

    def __init__(self, path: Path):
        self.path = path
        self.is_zip = path.is_file()
        if self.is_zip:
            if not zipfile.is_zipfile(path):
                raise ValueError(
                    f"folder:{path} is a file but not a .zip archive; give a directory of class "
                    "folders or a .zip of one"
                )
            self.members: dict[str, str] = {}  # normalised name -> name inside the archive
            self.entries = {}
            self.unreadable: dict[str, str] = {}  # relative path -> why it cannot be read (folders only)
            with zipfile.ZipFile(path) as archive:
                infos = [info for info in archive.infolist() if not info.is_dir()]
            _check_archive(path, infos)
            for info in infos:
                name = _normalise(info.filename)
                self.members[name] = info.filename
                self.entries[name] = (info.file_size, info.date_time)
        else:
            self.entries = {}
            self.unreadable = {}
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    full = Path(dirpath, name)
                    rel = full.relative_to(path).as_posix()
                    self.entries[rel], problem = _file_entry(full)
                    if problem is not None:
                        self.unreadable[rel] = problem


def _file_entry(full: Path) -> tuple[tuple[int, int], str | None]:
    """``((size, modification ns), None)`` of a regular file, or ``((-1, 0) or its stat, why it is never opened)``."""
    try:
        stat = full.stat()  # follows links: a dangling one raises
    except OSError as exc:
        return (-1, 0), ("a dangling symbolic link" if full.is_symlink() else exc.strerror or type(exc).__name__)
    if not stat_kinds.S_ISREG(stat.st_mode):
        # Reading a FIFO blocks for ever, a device may never end: never opened.
        return (stat.st_size, stat.st_mtime_ns), "not a regular file (a FIFO, socket or device)"
    return (stat.st_size, stat.st_mtime_ns), None


def _check_archive(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse unsafe entry names and zip bombs before anything is inflated (see the module docstring).

    Raises:
        ValueError: naming the entries (up to 5) and the limit they break.
    """
    def listed(names: list[str]) -> str:
        return ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    unsafe = []
    for info in infos:
        raw = info.filename.replace("\\", "/")
        if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") or ".." in raw.split("/"):
            unsafe.append(info.filename)
    if unsafe:
        raise ValueError(f"folder:{path} has entries with an absolute path or '..' ({listed(unsafe)}); they would "
                         "leave the dataset's layout (an absolute entry becomes a class of its own): rebuild the "
                         "archive with relative paths")
    large = [i.filename for i in infos if i.file_size > MAX_MEMBER_BYTES]
    if large:
        raise ValueError(f"folder:{path}: {listed(large)} inflate(s) to more than {MAX_MEMBER_BYTES >> 20:,} MiB each, "
                         "more than any image medlens reads (a zip bomb?)")
    dense = [i.filename for i in infos if i.file_size > _RATIO_MIN_BYTES
             and i.file_size > MAX_COMPRESSION_RATIO * max(i.compress_size, 1)]
    if dense:
        raise ValueError(f"folder:{path}: {listed(dense)} compressed more than {MAX_COMPRESSION_RATIO}:1, far more "
                         "than images compress (a zip bomb?); unpack the archive yourself if it is genuine")
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"folder:{path}: its members inflate to {total / (1 << 30):,.1f} GiB together, more than "
                         f"the limit of {MAX_TOTAL_BYTES >> 30} GiB (a zip bomb?); unpack it yourself if it is genuine")


def _normalise(name: str) -> str:
    """Zip member name as a relative posix path: ``.\\A\\x.png`` (Windows tools) -> ``A/x.png``."""
    name = name.replace("\\", "/").lstrip("/")
    while name.startswith("./"):
        name = name[2:].lstrip("/")
    return name


def _visible(rel: str) -> bool:
    parts = rel.split("/")
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts) and parts[-1].lower() not in _IGNORED_NAMES


def _subfolders(names: list[str], prefix: str) -> list[str]:
    """Immediate sub-folder names under ``prefix`` (``""`` for the top)."""
    found = set()
    for name in names:
        if name.startswith(prefix):
            rest = name[len(prefix):].split("/")
            if len(rest) > 1:
                found.add(rest[0])
    return sorted(found)


def _layout(names: list[str], where: str) -> tuple[str, dict[str, str]]:
    """Find the dataset root inside the tree: returns (prefix, {split or "": prefix of classes})."""
    prefix = ""
    while True:  # descend single wrapping folders (``medical_mnist/`` inside the zip)
        subs = _subfolders(names, prefix)
        top_files = [n for n in names if n.startswith(prefix) and "/" not in n[len(prefix):]]
        has_images = any(file_suffix(n) in SUPPORTED_SUFFIXES for n in top_files)
        # A lone sub-folder is a wrapper (``medical_mnist/`` in the zip) only if it holds no
        # images itself; otherwise it is a single class, which load_folder reports as such.
        inner = f"{prefix}{subs[0]}/" if len(subs) == 1 else ""
        inner_images = inner and any(
            n.startswith(inner) and "/" not in n[len(inner):] and file_suffix(n) in SUPPORTED_SUFFIXES for n in names)
        if len(subs) == 1 and not has_images and not inner_images and subs[0].lower() not in SPLIT_ALIASES:
            prefix = f"{prefix}{subs[0]}/"
            continue
        break
    splits: dict[str, str] = {}
    for sub in subs:
        split = SPLIT_ALIASES.get(sub.lower())
        if split is None:
            continue
        if split in splits:
            raise ValueError(f"{where} has two {split} folders ({splits[split].rstrip('/').rsplit('/', 1)[-1]}/ and "
                             f"{sub}/); keep one")
        splits[split] = f"{prefix}{sub}/"
    if not splits:
        return prefix, {"": prefix}
    if "train" not in splits:
        raise ValueError(f"{where} has {', '.join(s + '/' for s in subs)} but no train/ folder")
    others = [sub for sub in subs if sub.lower() not in SPLIT_ALIASES
              and any(n.startswith(f"{prefix}{sub}/") and file_suffix(n) in SUPPORTED_SUFFIXES for n in names)]
    if others:
        raise ValueError(f"{where} has split folders and also {', '.join(o + '/' for o in others)} with images; "
                         "split folders are train/, val/ (or valid/, validation/) and test/")
    return prefix, {split: splits[split] for split in SPLIT_FOLDERS if split in splits}


def _list_images(tree: _Tree, where: str) -> tuple[list[str], list[int], list[str], tuple[str, ...]]:
    """Walk the layout: (files, class ids, split tags, class names); files sorted."""
    names = sorted(n for n in tree.entries if _visible(n))
    _, splits = _layout(names, where)
    per_split: dict[str, dict[str, list[str]]] = {}
    for split, prefix in splits.items():
        classes = _subfolders(names, prefix)
        per_split[split] = {
            cls: [n for n in names if n.startswith(f"{prefix}{cls}/")] for cls in classes
        }
    for split, classes in per_split.items():
        if split and not any(classes.values()):
            raise ValueError(f"{where}: the {split} folder holds no class folders with images; expected "
                             f"{split}/<class>/image.png")
    class_names = tuple(sorted({c for classes in per_split.values() for c, f in classes.items() if f}))
    if not class_names:
        raise ValueError(
            f"no images found in {where}; expected class folders such as {where}/<class>/image.png "
            f"or {where}/train/<class>/image.png, with files of type {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if len(class_names) == 1:
        raise ValueError(
            f"only one class ({class_names[0]!r}) found in {where}; a classifier needs at least "
            "two class folders"
        )
    files, labels, tags = [], [], []
    for split, classes in per_split.items():
        for cls, members in classes.items():
            for name in members:
                files.append(name)
                labels.append(class_names.index(cls))
                tags.append(split)
    return files, labels, tags, class_names


# What reading one archive member can raise besides OSError: bad CRC, corrupt deflate stream,
# an unsupported compression method (Deflate64 from Windows Explorer), an encrypted member.
_MEMBER_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


def _decode_chunk(args: tuple[str, bool, list[tuple[str, str]], int | None]) -> list[tuple[object, str | None, int]]:
    """Worker: decode ``(stored name, name)`` pairs from the tree at ``path``.

    Returns (pixels or None, error or None, spatial dims) per file; a file that cannot be read
    or decoded is an error entry, never an exception, so every bad file can be named at once.
    """
    path, is_zip, names, size = args
    out = []
    archive = zipfile.ZipFile(path) if is_zip else None
    try:
        for stored, name in names:
            try:
                data = archive.read(stored) if archive else Path(path, stored).read_bytes()
                decoded = read_image(data, name, size=size)
                out.append((decoded.pixels, None, decoded.spatial_dims))
            except (UnreadableImage, OSError, *_MEMBER_ERRORS) as exc:
                out.append((None, f"{type(exc).__name__}: {exc}" if isinstance(exc, _MEMBER_ERRORS)
                            else str(exc) or type(exc).__name__, 0))
    finally:
        if archive:
            archive.close()
    return out


def _decode_all(tree: _Tree, names: list[str], size: int | None, workers: int):
    """Decoded ``(pixels, error, dims)`` per name; entries that cannot be opened are errors, never opened."""
    readable = [n for n in names if n not in tree.unreadable]
    decoded = dict(zip(readable, _decode_readable(tree, readable, size, workers), strict=True))
    return [decoded[n] if n in decoded else (None, tree.unreadable[n], 0) for n in names]


def _decode_readable(tree: _Tree, names: list[str], size: int | None, workers: int):
    pairs = [(tree.members[n] if tree.is_zip else n, n) for n in names]
    chunks = [(str(tree.path), tree.is_zip, pairs[i:i + _CHUNK], size) for i in range(0, len(pairs), _CHUNK)]
    if workers > 1 and len(names) >= _PARALLEL_MIN_FILES:
        import multiprocessing

        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            results = list(pool.map(_decode_chunk, chunks))
    else:
        results = [_decode_chunk(c) for c in chunks]
    return [item for chunk in results for item in chunk]


def decode_files(base: str | os.PathLike, names: list[str], *, size: int | None,
                 workers: int | None = None) -> list[tuple[object, str | None, int]]:
    """Decode files named relative to the directory ``base``, as folders are (in parallel when many).

    Used by the CSV manifest source, whose images are files beside the table rather than class folders.

    Args:
        base: directory the names are relative to.
        names: relative paths (posix).
        size: edge to resize to; None keeps native sizes.
        workers: decoding processes (default: all cores).

    Returns:
        ``(pixels or None, error or None, spatial dims)`` per name, in order; a file that cannot be
        read or decoded is an error entry, never an exception.
    """
    tree = _Tree.__new__(_Tree)  # a directory tree without walking it: the names are given
    tree.path, tree.is_zip, tree.members, tree.entries, tree.unreadable = Path(base), False, {}, {}, {}
    for name in names:  # as a walk would: links that lead nowhere and FIFOs are errors, never opened
        full = tree.path / name
        if os.path.lexists(full):  # a missing file is the decoder's "No such file" error
            tree.entries[name], problem = _file_entry(full)
            if problem is not None:
                tree.unreadable[name] = problem
    return _decode_all(tree, names, size, workers or os.cpu_count() or 1)


def stack_decoded(decoded: list[tuple], keep: list[int], channels: int | None, where: str) -> np.ndarray:
    """The ``keep`` entries of :func:`decode_files`-style ``(pixels, error, dims)`` as one ``(N, C, ...)`` array.

    Args:
        decoded: ``(pixels, error, spatial dims)`` per file.
        keep: indices of the readable entries, in order.
        channels: 1 or 3; None: 3 when any 2D image is colour, else 1.
        where: the dataset, for the error messages.

    Raises:
        ValueError: 2D images and 3D volumes mixed, or images of different sizes.
    """
    dims = {decoded[i][2] for i in keep}
    if len(dims) > 1:
        raise ValueError(f"{where} mixes 2D images and 3D volumes; use one kind per dataset")
    spatial_dims = dims.pop()
    pixels = [decoded[i][0] for i in keep]
    shapes = {p.shape[:2] if spatial_dims == 2 else p.shape for p in pixels}
    if len(shapes) > 1:
        raise ValueError(f"images in {where} have different sizes {sorted(shapes)[:4]}; pass a size to resize them")
    if channels is None:
        channels = 3 if any(p.ndim == 3 and spatial_dims == 2 for p in pixels) else 1
    return stack_channels(pixels, channels, spatial_dims)


def stack_channels(pixels: list[np.ndarray], channels: int, spatial_dims: int) -> np.ndarray:
    """Stack decoded images into ``(N, C, ...)`` with the dataset's channel count."""
    first = pixels[0]
    spatial = first.shape[:2] if (spatial_dims == 2) else first.shape
    out = np.empty((len(pixels), channels, *spatial), dtype=np.uint8)
    for i, px in enumerate(pixels):
        if spatial_dims == 2 and px.ndim == 3:  # colour (H, W, 3)
            out[i] = px.transpose(2, 0, 1) if channels == 3 else _luma(px)
        else:
            out[i] = px  # gray broadcasts over C
    return out


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of uint8 ``(H, W, 3)`` (what Pillow's ``convert('L')`` computes)."""
    return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).round().astype(np.uint8)


# 3D volumes at most this many voxels on their longest edge keep their own size by default:
# upsampling 28³ volumes to 64³ makes each 12x larger for no information (and 2D-sized batches of
# them filled 20 of 23 GB); larger volumes are resized down to it, MedMNIST's largest 3D size.
NATIVE_3D_MAX = 64


def default_folder_size(path: str | os.PathLike, default_2d: int) -> int:
    """The edge a folder's images are resized to when the spec and the caller give none.

    2D images: ``default_2d``. 3D volumes: the longest edge of the first readable volume when it
    is at most :data:`NATIVE_3D_MAX`, else :data:`NATIVE_3D_MAX`. One file is decoded to tell.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: as :func:`load_folder` for a folder it cannot list.
    """
    path = Path(path).expanduser()
    where = f"folder:{path}"
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist")
    tree = _Tree(path)
    files, _, _, _ = _list_images(tree, where)
    for pixels, error, dims in _decode_chunk((str(tree.path), tree.is_zip,
                                              [(tree.members[n] if tree.is_zip else n, n) for n in files[:8]], None)):
        if error is None:
            return min(max(pixels.shape), NATIVE_3D_MAX) if dims == 3 else default_2d
    return default_2d  # nothing readable among the first files: load_folder names them all


def load_folder(
    path: str | os.PathLike,
    *,
    size: int | None = 64,
    channels: int | None = None,
    skip_bad: bool = False,
    workers: int | None = None,
    use_cache: bool = True,
) -> FolderData:
    """Decode an image folder or zip archive into arrays.

    Args:
        path: a directory or a ``.zip`` in one of the layouts in the module docstring.
        size: edge length every image is resized to (``None``: keep native sizes, which must
            then agree). Default 64.
        channels: 1 or 3 to force; ``None`` decides once for the dataset: 3 if any image has
            colour, else 1.
        skip_bad: skip unreadable files (listed in ``bad_files``) instead of raising.
        workers: decoding processes; default: all cores.
        use_cache: read / write the decoded arrays under ``cache_root()/folders``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a directory or zip, no images, one class, unreadable files (all named),
            2D and 3D files mixed, bad ``size`` / ``channels``.
    """
    path = Path(path).expanduser()
    where = f"folder:{path}"
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist")
    if size is not None:
        try:
            size = operator.index(size)
        except TypeError:
            raise ValueError(f"size must be an integer of at least 2 pixels, got {size!r}") from None
        if size < 2:
            raise ValueError(f"size must be an integer of at least 2 pixels, got {size!r}")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3 (or unset to decide from the images), got {channels!r}")
    tree = _Tree(path)
    files, labels, tags, class_names = _list_images(tree, where)
    stat = path.stat()
    archive_stamp = (stat.st_size, stat.st_mtime_ns) if tree.is_zip else None
    key = hashlib.sha256(
        json.dumps([CACHE_VERSION, str(path.resolve()), archive_stamp, size, channels, skip_bad,
                    [(f, tree.entries[f]) for f in files]], default=str).encode()
    ).hexdigest()[:24]
    cache_dir = cache_root() / "folders" / key
    if use_cache and (cache_dir / "meta.json").exists():
        return _load_cached(cache_dir, key)

    decoded = _decode_all(tree, files, size, workers or os.cpu_count() or 1)
    bad = [(f, err) for f, (_, err, _) in zip(files, decoded, strict=True) if err is not None]
    if bad and not skip_bad:
        listed = "; ".join(f"{name} ({reason})" for name, reason in bad)
        raise ValueError(
            f"{len(bad)} unreadable file(s) in {where}: {listed}. Fix or remove them, or pass "
            "--skip-bad (skip_bad=True) to leave them out and list them"
        )
    keep = [i for i, (_, err, _) in enumerate(decoded) if err is None]
    if not keep:
        raise ValueError(f"no readable images in {where}")
    images = stack_decoded(decoded, keep, channels, where)
    del decoded
    tag_arr = np.asarray(tags)[keep]
    split_of = {s: np.flatnonzero(tag_arr == s) for s in SPLIT_FOLDERS if (tag_arr == s).any()}
    emptied = sorted({t for t in tags if t} - set(split_of))
    if emptied:
        raise ValueError(f"{where}: no readable images left in the {', '.join(emptied)} folder(s) after "
                         "skipping the unreadable ones")
    data = FolderData(
        images=images,
        labels=np.asarray(labels, dtype=np.int64)[keep],
        ids=np.asarray(files)[keep],
        split_of=split_of,
        class_names=class_names,
        groups=duplicate_groups(images),
        bad_files=bad,
        fingerprint=key,
    )
    if use_cache:
        _save_cached(cache_dir, data)
    return data


def _save_cached(cache_dir: Path, data: FolderData) -> None:
    """Write the decoded arrays as one cache entry (see :func:`save_cache_entry`)."""
    meta = {
        "class_names": list(data.class_names),
        "split_of": {s: idx.tolist() for s, idx in data.split_of.items()},
        "bad_files": data.bad_files,
    }
    save_cache_entry(cache_dir, {name: getattr(data, name) for name in ("images", "labels", "ids", "groups")}, meta)


def save_cache_entry(cache_dir: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``arrays`` (one ``NAME.npy`` each) and ``meta.json`` as one cache entry, whole or not at all.

    Shared by the sources that decode image files (folders, ``csv:`` manifests). A cache that
    cannot be written (read-only home, full disk) costs a decode next time, not this load: the
    failure is a warning and the decoded data is returned all the same.
    """
    try:
        with atomic_path(cache_dir) as tmp:
            tmp.mkdir()
            for name, array in arrays.items():
                with open(tmp / f"{name}.npy", "wb") as fh:
                    np.save(fh, array)
            (tmp / "meta.json").write_text(json.dumps(meta))
    except OSError as exc:
        if (cache_dir / "meta.json").exists():
            return  # another process cached the same entry first
        warnings.warn(f"could not write the decode cache in {cache_dir} ({exc}); the images will be "
                      "decoded again next time (set $MEDLENS_CACHE to a writable folder)", stacklevel=4)


def _load_cached(cache_dir: Path, key: str) -> FolderData:
    meta = json.loads((cache_dir / "meta.json").read_text())
    return FolderData(
        images=np.load(cache_dir / "images.npy", mmap_mode="r"),
        labels=np.load(cache_dir / "labels.npy"),
        ids=np.load(cache_dir / "ids.npy"),
        split_of={s: np.asarray(v, dtype=np.int64) for s, v in meta["split_of"].items()},
        class_names=tuple(meta["class_names"]),
        groups=np.load(cache_dir / "groups.npy"),
        bad_files=[tuple(b) for b in meta["bad_files"]],
        fingerprint=key,
    )
