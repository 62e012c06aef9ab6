"""Predict (and explain) image files with a :class:`~medlens.serve.predictor.Predictor`: rows per file.

Privacy: a prediction row holds the path the user gave and the model's outputs, nothing read
from the file (DICOM headers carry names, ids and dates of patients).
"""

from __future__ import annotations

import sys
from pathlib import Path


def _overlay_name(path: Path, taken: set[str]) -> str:
    """``<stem>_gradcam.png``, with ``_2``, ``_3``, ... added when two inputs share a stem."""
    from medlens.data.readers import file_suffix

    suffix = file_suffix(path.name)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    name, number = f"{stem}_gradcam.png", 1
    while name in taken:
        number += 1
        name = f"{stem}_{number}_gradcam.png"
    taken.add(name)
    return name


def _write_bytes(path: Path, data: bytes) -> None:
    from medlens._io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def predict_files(predictor, paths: list[Path], *, explain_dir: Path | None = None, progress: bool = False,
                  method: str = "gradcam", layer: str | None = None, target: int | None = None):
    """Predict every file; collect a row per predicted file and a reason per failed one.

    Args:
        predictor: a :class:`~medlens.serve.predictor.Predictor` (its ``batch_size`` is used).
        paths: files to predict, in output order.
        explain_dir: write a Grad-CAM figure ``<stem>_gradcam.png`` per predicted file here, with
            the predicted class and probability written on it; 3D: the three orthogonal middle
            slices (None: none).
        progress: show a tqdm bar on stderr.
        method: ``gradcam`` or ``gradcampp``.
        layer: dotted name of the layer to explain (None: the model's default).
        target: class index to explain (None: each file's predicted class).

    Returns:
        ``(rows, failed)``: rows are dicts ``file, predicted, probability, p_<class>...`` (then
        ``ood_score, ood`` when the run has an out-of-distribution detector) in the order of
        ``paths``; ``failed`` is ``[(path as given, reason)]``.
    """
    import numpy as np
    from tqdm import tqdm

    from medlens.explain.render import explanation_png
    from medlens.serve.predictor import InputError

    names = predictor.card.class_names
    rows: list[dict] = []
    failed: list[tuple[str, str]] = []
    overlays: set[str] = set()
    with tqdm(total=len(paths), disable=not progress, file=sys.stderr, unit="file", desc="predict") as bar:
        for start in range(0, len(paths), predictor.batch_size):
            chunk = paths[start:start + predictor.batch_size]
            ready, images = [], []
            for path in chunk:
                try:
                    images.append(predictor.prepare(path.read_bytes(), str(path)))
                    ready.append(path)
                except InputError as exc:
                    failed.append((str(path), str(exc)))
                except OSError as exc:
                    failed.append((str(path), f"{path}: {exc.strerror or type(exc).__name__}"))
            if images:
                batch = np.stack(images)  # (B, C, *spatial)
                probabilities, ood_scores = predictor.predict_with_ood(batch)  # (B, K), (B,) or None
                for i, (path, image, probs) in enumerate(zip(ready, batch, probabilities, strict=True)):
                    best = int(np.argmax(probs))
                    row = {"file": str(path), "predicted": names[best], "probability": float(probs[best])}
                    row.update({f"p_{name}": float(p) for name, p in zip(names, probs, strict=True)})
                    if ood_scores is not None:  # the out-of-distribution flag (issue 19)
                        row.update(ood_score=float(ood_scores[i]), ood=bool(ood_scores[i] > predictor.ood.threshold))
                    rows.append(row)
                    if explain_dir is not None:
                        # Explain the class reported in the row, whichever backend predicted it.
                        explained = best if target is None else target
                        heatmap = predictor.explain(image, class_index=explained, method=method, layer=layer)
                        caption = (f"predicted {names[best]} ({probs[best]:.3f}); "
                                   f"{'Grad-CAM++' if method == 'gradcampp' else 'Grad-CAM'} of {names[explained]}")
                        _write_bytes(explain_dir / _overlay_name(path, overlays),
                                     explanation_png(image, heatmap, caption=caption))
            bar.update(len(chunk))
    return rows, failed
