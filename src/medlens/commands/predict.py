"""``medlens predict``: predict image files (PNG, JPEG, DICOM, NIfTI, ...) with a trained run.

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


def _output_suffix(out: str | None) -> str | None:
    if out is None:
        return None
    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}, got {out!r}")
    return suffix


def _rows_text(rows: list[dict], suffix: str) -> str:
    if suffix == ".json":
        return json.dumps(rows, indent=1) + "\n"
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    from medlens._io import atomic_path
    from medlens._table import format_table
    from medlens.serve.inputs import expand_inputs
    from medlens.serve.files import predict_files
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
                                    [f"{row[key]:.4f}" if isinstance(row[key], float) else str(row[key])
                                     for key in header[2:]] for row in rows]))
    if predictor.ood is None:
        print(f"medlens: no ood columns: {predictor.ood_reason}", file=sys.stderr)
    elif any(row["ood"] for row in rows):
        print(f"medlens: warning: {sum(row['ood'] for row in rows)} of {len(rows)} image(s) flagged ood: unlike the "
              "training images, so their predictions may not hold", file=sys.stderr)
    if explain_dir is not None and rows:
        print(f"Grad-CAM overlays written to {explain_dir}", file=sys.stderr)
    if failed:
        if args.skip_bad:
            print(f"medlens: skipped {len(failed)} of {len(paths)} unreadable file(s) (--skip-bad)", file=sys.stderr)
            return 0
        print(f"medlens: {len(failed)} of {len(paths)} file(s) could not be predicted (the others were; "
              "pass --skip-bad to exit 0 when some files are unreadable)", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers) -> None:
    from medlens.commands._options import positive_int

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
    p.add_argument("--skip-bad", action="store_true",
                   help="list unreadable files and exit 0 (default: they are listed and the exit status is 1)")
    p.set_defaults(func=run)
