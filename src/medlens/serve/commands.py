"""``medlens predict`` and ``medlens export``: thin commands over :mod:`medlens.serve`.

Only the standard library is imported here; numpy, torch and onnxruntime load when a command runs.

Privacy: a prediction row holds the path the user typed and the model's outputs, nothing read
from the file (DICOM headers carry names, ids and dates of patients).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

PROGRESS_MIN_FILES = 50  # below this, a progress bar is noise
OUTPUT_SUFFIXES = (".csv", ".json")


def add_commands(subparsers) -> None:
    """Register ``predict`` and ``export`` on the CLI's sub-parsers."""
    from medlens.cli import positive_int

    p = subparsers.add_parser("predict", help="predict image files (PNG, JPEG, DICOM, NIfTI, ...) with a trained run")
    p.add_argument("run", metavar="RUN", help="run folder (its best checkpoint) or a .safetensors checkpoint")
    p.add_argument("inputs", metavar="INPUT", nargs="+",
                   help="image files, folders (searched recursively) or glob patterns such as 'scans/*.dcm'")
    p.add_argument("--out", help="write the predictions to a .csv or .json file (default: print a table)")
    p.add_argument("--explain", metavar="DIR",
                   help="also write a Grad-CAM overlay <stem>_gradcam.png per file into DIR")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch (default) or onnx (needs `medlens export RUN --format onnx` first)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    p.set_defaults(func=cmd_predict)

    p = subparsers.add_parser("export", help="export a run's best model (ONNX), verified on its test images")
    p.add_argument("run", metavar="RUN", help="run folder (its best checkpoint) or a .safetensors checkpoint")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    p.add_argument("--out", help="file to write (default RUN/export/model.onnx; the card goes beside it as .json)")
    p.add_argument("--root", help="folder of MedMNIST .npz files for the verification images (default: $MEDLENS_DATA)")
    p.set_defaults(func=cmd_export)


def _output_suffix(out: str | None) -> str | None:
    if out is None:
        return None
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}, got {out!r}")
    return suffix


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


def _rows_text(rows: list[dict], suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(rows, indent=1) + "\n"
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


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
        ``(rows, failed)``: rows are dicts ``file, predicted, probability, p_<class>...`` in the
        order of ``paths``; ``failed`` is ``[(path as given, reason)]``.
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
                probabilities = predictor.predict(batch)  # (B, K)
                for path, image, probs in zip(ready, batch, probabilities):
                    best = int(np.argmax(probs))
                    row = {"file": str(path), "predicted": names[best], "probability": float(probs[best])}
                    row.update({f"p_{name}": float(p) for name, p in zip(names, probs)})
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


def cmd_predict(args: argparse.Namespace) -> int:
    from medlens._io import atomic_path
    from medlens._table import format_table
    from medlens.serve.inputs import expand_inputs
    from medlens.serve.predictor import Predictor

    suffix = _output_suffix(args.out)  # a bad --out fails before any work is done
    paths = expand_inputs(args.inputs)
    predictor = Predictor.load(args.run, backend=args.backend)
    predictor.batch_size = args.batch_size
    explain_dir = Path(args.explain) if args.explain else None
    rows, failed = predict_files(predictor, paths, explain_dir=explain_dir,
                                 progress=len(paths) > PROGRESS_MIN_FILES)
    for _, reason in failed:
        print(f"medlens: cannot predict {reason}", file=sys.stderr)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(_rows_text(rows, suffix))
        print(f"{len(rows)} prediction(s) written to {args.out}", file=sys.stderr)
    elif rows:
        header = list(rows[0])
        print(format_table(header, [[row["file"], row["predicted"]] +
                                    [f"{row[key]:.4f}" for key in header[2:]] for row in rows]))
    if explain_dir is not None and rows:
        print(f"Grad-CAM overlays written to {explain_dir}", file=sys.stderr)
    if failed:
        print(f"medlens: {len(failed)} of {len(paths)} file(s) could not be predicted", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medlens.serve.onnx_export import export_onnx

    path = export_onnx(args.run, args.out, root=args.root)
    check = json.loads(path.with_suffix(".json").read_text())["verification"]
    print(f"exported to {path} (card: {path.with_suffix('.json')}); ONNX Runtime matches torch on "
          f"{check['images']} test images of {check['spec']}: max |difference| {check['max_abs_difference']:.2g}")
    return 0
