"""A quick look at a dataset: a montage PNG (a row of samples per class) and a count table.

Pillow and numpy only: ``medlens preview`` must not import torch, MONAI or Lightning.

Example:
    >>> from medlens.data import resolve  # doctest: +SKIP
    >>> from medlens.data.preview import count_table, montage
    >>> source = resolve("breastmnist")  # doctest: +SKIP
    >>> montage(source, per_class=6).save("breast.png")  # doctest: +SKIP
    >>> print(count_table(source))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medlens._io import atomic_path
from medlens._table import format_table
from medlens.data.registry import SPLITS
from medlens.data.source import Source

DEFAULT_IMBALANCE_RATIO = 2.0  # largest / smallest class count that triggers a warning
_TILE = 96  # pixels per sample tile in the montage
_LABEL_WIDTH = 220


def _tile(image: np.ndarray, view: str) -> np.ndarray:
    """One sample ``(C, H, W)`` or ``(C, D, H, W)`` -> a uint8 ``(H, W)`` or ``(H, W, 3)`` picture.

    3D volumes show the middle axial slice (``view="mid"``) or the maximum-intensity projection
    along depth (``view="mip"``).
    """
    if image.ndim == 4:  # (C, D, H, W)
        image = image[:, image.shape[1] // 2] if view == "mid" else image.max(axis=1)
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def montage(source: Source, *, per_class: int = 8, split: str = "train", view: str = "mid", seed: int = 0):
    """A Pillow image with one row per class: its name, count, and ``per_class`` random samples.

    Args:
        source: the resolved dataset.
        per_class: samples per row (1-32). Default 8.
        split: split to draw from (``train`` / ``val`` / ``test``). Default train.
        view: for 3D volumes, ``mid`` (middle slice) or ``mip`` (maximum-intensity projection).
        seed: which samples are drawn.

    Raises:
        ValueError: bad ``per_class``, ``split`` or ``view``.
    """
    from PIL import Image, ImageDraw

    if not isinstance(per_class, int) or not 1 <= per_class <= 32:
        raise ValueError(f"per_class must be an integer from 1 to 32, got {per_class!r}")
    if split not in source.splits:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(source.splits)}")
    if view not in ("mid", "mip"):
        raise ValueError(f"view must be 'mid' or 'mip', got {view!r}")
    data = source.splits[split]
    info = source.info
    rng = np.random.default_rng(seed)
    title_height = 30
    width = _LABEL_WIDTH + per_class * (_TILE + 4) + 4
    canvas = Image.new("RGB", (width, title_height + info.n_classes * (_TILE + 4) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    name_font, count_font = _font(16), _font(13)
    kind = "positives per label" if info.task.is_multilabel else "images per class"
    draw.text((8, 7), f"{source.spec}  ·  samples from {split}  ·  {kind}: train / val / test",
              fill="black", font=name_font)
    counts = source.class_counts()
    for row, class_name in enumerate(info.class_names):
        members = np.flatnonzero(data.labels[:, row] == 1 if data.labels.ndim == 2 else data.labels == row)
        top = title_height + row * (_TILE + 4)
        label = class_name if len(class_name) <= 24 else class_name[:23] + "…"
        per_split = " / ".join(f"{int(counts[s][row]):,}" for s in SPLITS if s in counts)
        draw.text((8, top + _TILE // 2 - 18), f"{row}: {label}", fill="black", font=name_font)
        draw.text((8, top + _TILE // 2 + 4), f"n = {per_split}", fill="dimgray", font=count_font)
        if len(members) == 0:
            continue
        chosen = np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        images, _ = data.take(chosen)
        for col, image in enumerate(images):
            tile = Image.fromarray(_tile(image, view)).resize((_TILE, _TILE), Image.Resampling.NEAREST)
            canvas.paste(tile.convert("RGB"), (_LABEL_WIDTH + col * (_TILE + 4), top))
    return canvas


def save_montage(source: Source, out: str | os.PathLike, **kwargs) -> Path:
    """Write :func:`montage` as PNG to ``out`` (temporary name, then rename). Returns the path."""
    image = montage(source, **kwargs)
    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG")
    return Path(out)


def imbalance_warning(source: Source, *, ratio: float = DEFAULT_IMBALANCE_RATIO) -> str | None:
    """A warning line when the training split's largest class outnumbers the smallest by > ``ratio``."""
    counts = source.class_counts().get("train")
    if counts is None or len(counts) < 2:
        return None
    low, high = int(counts.min()), int(counts.max())
    if low == 0:
        empty = [source.info.class_names[i] for i in np.flatnonzero(counts == 0)]
        return f"class(es) {', '.join(empty)} have no training images"
    if high / low > ratio:
        small = source.info.class_names[int(counts.argmin())]
        large = source.info.class_names[int(counts.argmax())]
        return (f"classes are imbalanced: {large!r} has {high:,} training images, {small!r} {low:,} "
                f"({high / low:.1f}x); consider class weights or oversampling when training")
    return None


def count_table(source: Source) -> str:
    """Images per class and per split, with totals, as aligned text."""
    counts = source.class_counts()
    splits = [s for s in SPLITS if s in counts]
    header = ["class"] + splits + ["total"]
    rows = []
    for i, name in enumerate(source.info.class_names):
        per = [int(counts[s][i]) for s in splits]
        rows.append([f"{i}: {name}"] + [f"{v:,}" for v in per] + [f"{sum(per):,}"])
    sizes = [len(source.splits[s]) for s in splits]
    label = "images" if not source.info.task.is_multilabel else "images (rows count positives)"
    rows.append([f"total {label}"] + [f"{v:,}" for v in sizes] + [f"{sum(sizes):,}"])
    return format_table(header, rows[:-1], footer=rows[-1])



def metadata_summary(source: Source, *, top: int = 5) -> list[str]:
    """Lines on the patients (groups) and the metadata columns of a source that has them.

    Groups: how many, images per group (min, median, max, and how many have more than one).
    Each column: numeric ones their range, median and missing count; others their most common
    values. Nothing for sources without metadata.
    """
    from medlens.data.manifest import is_numeric

    meta = source.metadata
    if meta is None:
        return []
    lines = []
    if meta.groups is not None:
        _, per_group = np.unique(meta.groups, return_counts=True)
        lines.append(f"groups ({meta.group_name}): {len(per_group):,} for {len(meta.groups):,} images; images per "
                     f"group min {per_group.min()}, median {np.median(per_group):g}, max {per_group.max()}; "
                     f"{int((per_group > 1).sum()):,} groups have more than one image")
    for name, values in meta.columns.items():
        missing = int((values == "").sum())
        gap = f", {missing:,} missing" if missing else ""
        if is_numeric(values):
            numbers = np.asarray([float(v) for v in values.tolist() if v != ""])
            lines.append(f"metadata {name}: numeric, {numbers.min():g} to {numbers.max():g}, median "
                         f"{np.median(numbers):g}{gap}")
        else:
            kinds, counts = np.unique(values[values != ""], return_counts=True)
            order = np.argsort(-counts, kind="stable")[:top]
            common = ", ".join(f"{kinds[i]} {counts[i]:,}" for i in order)
            more = f", ... ({len(kinds)} values)" if len(kinds) > top else ""
            lines.append(f"metadata {name}: {common}{more}{gap}")
    return lines
