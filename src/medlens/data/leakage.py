"""Leakage checks across splits: shared patients, byte-identical images, near-identical images.

A test split that shares a patient, or an image, with the training split measures memory, not
skill. :func:`find_leakage` looks for three kinds, each with a count and examples:

- ``groups``: patient (or lesion) ids found in two splits. medlens's own splits never do this;
  a dataset's own split column can.
- ``identical``: byte-identical decoded images in two splits (BLAKE2b of the pixels).
- ``near_identical``: images whose perceptual hash differs by at most :data:`NEAR_DUPLICATE_BITS`
  of 64 bits, and that are not byte-identical: re-encoded, resized or slightly cropped copies.
  The hash is ``imagehash.phash`` (the DCT hash of Zauner 2010, as the pHash library computes
  it): a maintained implementation, rather than a hand-written DCT.

Example:
    >>> import numpy as np
    >>> from medlens.data.source import TensorSplit
    >>> rng = np.random.default_rng(0)
    >>> a = rng.integers(0, 255, (3, 1, 32, 32), dtype=np.uint8)
    >>> splits = {"train": TensorSplit(a, np.zeros(3, np.int64), np.array(["a", "b", "c"])),
    ...           "test": TensorSplit(a[:1].copy(), np.zeros(1, np.int64), np.array(["d"]))}
    >>> find_leakage(splits)["identical"]["count"]
    1
"""

from __future__ import annotations

import hashlib

import numpy as np

# Hamming distance (of 64 bits) up to which two perceptual hashes count as one image. Re-encoding
# and resizing move a DCT hash by a bit or two; scans of one modality look alike, so a looser cut
# flags distinct patients. Measured on HAM10000's lesion ids (data facts, no model or test score):
# of image pairs 0 bits apart all 18 are one lesion, at 2 bits 49 of 86, at 4 bits 47 of 329, so
# 4 bits would mostly flag different lesions. Every example is listed with its distance.
NEAR_DUPLICATE_BITS = 2
_EXAMPLES = 5
_ORDER = ("train", "val", "test")
_CHUNK = 2048
# Perceptual hashes by pixel digest, so a dataset's folds reuse its hashes (8 bytes per image;
# cleared past a million images).
_HASHES: dict[bytes, np.uint64] = {}
_HASHES_KEPT = 1_000_000  # rows of one split compared at once against another: a (2048, N) uint8 block


def _picture(image: np.ndarray):
    """``(C, H, W)`` or ``(C, D, H, W)`` uint8 -> a Pillow image (3D: the middle slice)."""
    from PIL import Image

    if image.ndim == 4:
        image = image[:, image.shape[1] // 2]
    return Image.fromarray(np.ascontiguousarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)))


def perceptual_hashes(images: np.ndarray, digests: list[bytes] | None = None) -> np.ndarray:
    """``(N,)`` uint64 64-bit DCT perceptual hashes (``imagehash.phash``) of uint8 ``(N, C, ...)`` images.

    With ``digests`` (the images' BLAKE2b digests), hashes already computed in this process are
    reused: the folds of one dataset are checked again without hashing every image again.
    """
    import imagehash

    out = np.empty(len(images), dtype=np.uint64)
    weights = (1 << np.arange(63, -1, -1, dtype=np.uint64))
    if len(_HASHES) > _HASHES_KEPT:
        _HASHES.clear()
    for i in range(len(images)):
        known = _HASHES.get(digests[i]) if digests is not None else None
        if known is None:
            bits = imagehash.phash(_picture(np.asarray(images[i]))).hash.reshape(-1).astype(np.uint64)
            known = np.bitwise_or.reduce(bits * weights)
            if digests is not None:
                _HASHES[digests[i]] = known
        out[i] = known
    return out


class _HashStore:
    """The perceptual hashes of one dataset's images on disk, so a warm load does not hash them again.

    Keyed by the set of pixel digests (``cache_root()/phash/<key>.npz``); loading fills the
    in-process table, saving writes what it holds for these digests (atomic rename). A cache that
    cannot be written costs the hashing next time, nothing else.
    """

    def __init__(self, digests: list[bytes]):
        from medlens.data.download import cache_root

        self.digests = digests
        key = hashlib.sha256(b"".join(sorted(digests))).hexdigest()[:24]
        self.path = cache_root() / "phash" / f"{key}.npz"
        if self.path.is_file():
            with np.load(self.path) as stored:  # digests as (N, 16) uint8 rows: bytes keep trailing zeros
                for row, value in zip(stored["digests"], stored["hashes"].tolist(), strict=True):
                    _HASHES[row.tobytes()] = np.uint64(value)
        self.loaded = self.path.is_file()

    def save(self) -> None:
        if self.loaded:
            return
        from medlens._io import atomic_path

        known = [d for d in self.digests if d in _HASHES]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, digests=np.frombuffer(b"".join(known), dtype=np.uint8).reshape(-1, 16),
                         hashes=np.asarray([_HASHES[d] for d in known], dtype=np.uint64))
        except OSError:
            pass  # a read-only cache: the hashes are computed again next time


def _digests(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(np.asarray(row).tobytes(), digest_size=16).digest() for row in images]


def _examples(items: list[str], count: int) -> list[str]:
    return items[:_EXAMPLES] + ([f"and {count - _EXAMPLES} more"] if count > _EXAMPLES else [])


def find_leakage(splits: dict, *, groups: dict[str, np.ndarray] | None = None, group_name: str = "",
                 near_bits: int = NEAR_DUPLICATE_BITS) -> dict:
    """Patients and images found in two splits.

    Args:
        splits: ``{name: TensorSplit}``.
        groups: ``{name: (N,) group ids of that split's rows}``; None: no group check.
        group_name: the group column's name, for the report.
        near_bits: Hamming distance of the perceptual hashes up to which images are near-identical.

    Returns:
        ``{"groups": {"column", "count", "images", "examples"} or None, "identical": {"count",
        "examples"}, "near_identical": {"count", "max_bits", "examples"}}``; counts are images of
        the later split (val, test) with a partner in an earlier one.
    """
    names = [name for name in _ORDER if name in splits and len(splits[name])]
    report: dict = {"groups": None}
    if groups is not None:
        where: dict[str, list[str]] = {}
        for name in names:
            for group in np.unique(groups[name]).tolist():
                where.setdefault(str(group), []).append(name)
        crossing = {g: s for g, s in where.items() if len(s) > 1}
        n_images = sum(int(np.isin(groups[name], list(crossing)).sum()) for name in names) if crossing else 0
        report["groups"] = {"column": group_name, "count": len(crossing), "images": n_images,
                            "examples": _examples([f"{g} ({', '.join(s)})" for g, s in sorted(crossing.items())],
                                                  len(crossing))}
    digests = {name: _digests(splits[name].images) for name in names}
    first_seen: dict[bytes, tuple[str, str]] = {}
    identical = []
    for name in names:
        ids = splits[name].ids
        for i, digest in enumerate(digests[name]):
            owner = first_seen.setdefault(digest, (name, str(ids[i])))
            if owner[0] != name:
                identical.append(f"{owner[1]} ({owner[0]}) = {ids[i]} ({name})")
    report["identical"] = {"count": len(identical), "examples": _examples(identical, len(identical))}
    near = []
    near_images = 0
    if splits and all(np.asarray(splits[n].images).ndim in (4, 5) for n in names):
        store = _HashStore([d for name in names for d in digests[name]])
        hashes = {name: perceptual_hashes(splits[name].images, digests[name]) for name in names}
        store.save()
        flat = np.concatenate([hashes[name] for name in names])
        split_of = np.concatenate([np.full(len(hashes[name]), k) for k, name in enumerate(names)])
        row_of = np.concatenate([np.arange(len(hashes[name])) for name in names])
        found: dict[int, tuple[int, int]] = {}  # later image (flat index) -> (earlier partner, distance)
        for a, b, distance in _close_pairs(flat, near_bits):
            first, second = (a, b) if split_of[a] < split_of[b] else (b, a)
            if split_of[first] == split_of[second]:
                continue
            if digests[names[split_of[first]]][row_of[first]] == digests[names[split_of[second]]][row_of[second]]:
                continue  # byte-identical: reported above
            if second not in found or (split_of[first], distance) < (split_of[found[second][0]], found[second][1]):
                found[second] = (first, distance)
        for second, (first, distance) in sorted(found.items()):
            earlier, later = names[split_of[first]], names[split_of[second]]
            near.append(f"{splits[earlier].ids[row_of[first]]} ({earlier}) ~ {splits[later].ids[row_of[second]]} "
                        f"({later}), {distance} bits")
        near_images = len(found)
    report["near_identical"] = {"count": near_images, "max_bits": near_bits, "examples": _examples(near, near_images)}
    return report


def _close_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for every pair ``i < j`` of 64-bit hashes at most ``max_bits`` apart.

    Pigeonhole banding instead of comparing all pairs (600 million for Medical MNIST's 59,000
    images): cut the 64 bits into ``max_bits + 1`` bands; two hashes that differ in at most
    ``max_bits`` bits agree exactly on at least one band, so only images sharing a band value
    are compared. The result is exact, not an approximation.
    """
    n_bands = max_bits + 1
    edges = np.linspace(0, 64, n_bands + 1).round().astype(int)
    pairs = []
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        key = (hashes >> np.uint64(low)) & np.uint64((1 << int(high - low)) - 1)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
            members = order[start:end]
            i, j = np.triu_indices(len(members), k=1)
            pairs.append(np.stack([members[i], members[j]], axis=1))
    if not pairs:
        return []
    both = np.concatenate(pairs)  # (M, 2), i < j within each run
    distance = np.bitwise_count(hashes[both[:, 0]] ^ hashes[both[:, 1]])
    close = both[distance <= max_bits].astype(np.int64)
    # a pair agreeing on several bands was found several times: one code per pair, then unique
    codes = np.unique(np.minimum(close[:, 0], close[:, 1]) * len(hashes) + np.maximum(close[:, 0], close[:, 1]))
    first, second = codes // len(hashes), codes % len(hashes)
    gaps = np.bitwise_count(hashes[first] ^ hashes[second])
    return [(int(a), int(b), int(d)) for a, b, d in zip(first, second, gaps, strict=True)]


def leakage_lines(report: dict) -> list[str]:
    """The warnings a report gives, one line per kind found (nothing when it is clean)."""
    lines = []
    groups = report.get("groups")
    if groups and groups["count"]:
        lines.append(f"{groups['count']} {groups['column'] or 'group'}(s) ({groups['images']} images) are in more "
                     f"than one split of the dataset's own split (patient leakage): {'; '.join(groups['examples'])}")
    identical = report.get("identical", {})
    if identical.get("count"):
        lines.append(f"{identical['count']} image(s) have a byte-identical copy in another split (test-set leakage): "
                     f"{'; '.join(identical['examples'])}")
    near = report.get("near_identical", {})
    if near.get("count"):
        lines.append(f"{near['count']} image(s) have a near-identical copy in another split (perceptual hash within "
                     f"{near['max_bits']} of 64 bits; re-encoded or resized copies): {'; '.join(near['examples'])}")
    return lines
