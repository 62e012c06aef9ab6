"""Small assertions shared by the test modules (importable as ``helpers``; see pyproject's pythonpath)."""

from __future__ import annotations


def single_line(exc: BaseException) -> str:
    """The exception's message, asserting it is one non-empty line (the CLI prints it as is)."""
    text = str(exc)
    assert text and "\n" not in text, f"message should be one non-empty line: {text!r}"
    return text


# Every file of a finished single run folder (see the run-folder layout).
RUN_FILES = ["config.yaml", "splits.json", "history.csv", "train.log", "metrics.json",
             "checkpoints/best.safetensors", "checkpoints/best.json", "checkpoints/last.safetensors",
             "checkpoints/last.json", "checkpoints/resume.safetensors", "checkpoints/resume.json",
             "checkpoints/ood.safetensors", "checkpoints/ood.json"]


def quick_config(**sections):
    """A RunConfig for short test runs: 2 epochs of cnn_small, no MLflow, no progress bar (sections override)."""
    from medlens.engine.config import build_config

    sections.setdefault("train", {})
    sections["train"] = {"epochs": 2, "tracking_uri": "none", "progress": False, **sections["train"]}
    sections.setdefault("model", {"name": "cnn_small"})
    return build_config(sections)


def write_tiny_npz(path, *, sizes: tuple[int, int, int], edge: int):
    """A MedMNIST-layout ``.npz`` of random ``edge`` px images, labels alternating 0/1.

    Args:
        path: the file to write.
        sizes: images in (train, val, test).
        edge: image edge in pixels.

    Returns:
        ``path``.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, edge, edge), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(path, **arrays)
    return path


# The csv: options of HAM10000's metadata table (images by id, diagnosis, lesion groups).
HAM10000_OPTIONS = {"image_pattern": "images/{image_id}.jpg", "label_col": "dx", "group_col": "lesion_id"}
