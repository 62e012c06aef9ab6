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
        hashes = {name: perceptual_hashes(splits[name].images, digests[name]) for name in names}
        for later_index, later in enumerate(names):
            hit = np.zeros(len(hashes[later]), dtype=bool)
            for earlier in names[:later_index]:
                for start in range(0, len(hashes[later]), _CHUNK):
                    block = hashes[later][start:start + _CHUNK]
                    distance = np.bitwise_count(block[:, None] ^ hashes[earlier][None, :])  # (chunk, N_earlier)
                    for i, j in zip(*np.nonzero(distance <= near_bits), strict=True):
                        row = start + int(i)
                        if digests[later][row] == digests[earlier][int(j)]:
                            continue  # byte-identical: reported above
                        if not hit[row]:
                            near.append(f"{splits[earlier].ids[j]} ({earlier}) ~ {splits[later].ids[row]} ({later}), "
                                        f"{int(distance[i, j])} bits")
                        hit[row] = True
            near_images += int(hit.sum())
    report["near_identical"] = {"count": near_images, "max_bits": near_bits, "examples": _examples(near, near_images)}
    return report


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
