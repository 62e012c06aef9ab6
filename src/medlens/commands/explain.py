"""``medlens explain``: Grad-CAM figures of image files with a trained run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _target_index(target: str | None, class_names: list[str]) -> int | None:
    """``--target`` as a class index: a class name or a number."""
    if target is None:
        return None
    if target in class_names:
        return class_names.index(target)
    if target.isdigit() and int(target) < len(class_names):
        return int(target)
    raise ValueError(f"--target {target!r} is not a class of this model; valid: "
                     f"{', '.join(class_names)} (or 0..{len(class_names) - 1})")


def run(args: argparse.Namespace) -> int:
    from medlens.serve.files import predict_files
    from medlens.serve.inputs import expand_inputs
    from medlens.serve.predictor import Predictor

    paths = expand_inputs(args.inputs)
    predictor = Predictor.load(args.run, backend="torch")
    target = _target_index(args.target, list(predictor.card.class_names))
    if args.layer is not None:  # a bad layer fails before any file is read, listing the valid ones
        import numpy as np

        card = predictor.card
        predictor.explain(np.zeros((card.in_channels, *([card.input_size] * card.spatial_dims)), np.uint8),
                          class_index=0, layer=args.layer)
    out = Path(args.out)
    rows, failed = predict_files(predictor, paths, explain_dir=out, progress=len(paths) > 50, method=args.method,
                                 layer=args.layer, target=target)
    for _, reason in failed:
        print(f"medlens: cannot explain {reason}", file=sys.stderr)
    for row in rows:
        print(f"{row['file']}: {row['predicted']} ({row['probability']:.3f})")
    print(f"{len(rows)} explanation(s) written to {out}" + (f"; {len(failed)} file(s) failed" if failed else ""),
          file=sys.stderr)
    return 1 if failed else 0


def add_parser(commands) -> None:
    p = commands.add_parser("explain", help="write Grad-CAM figures (predicted class and probability on them) "
                                            "for image files; 3D: three orthogonal slices")
    p.add_argument("run", metavar="RUN", help="run folder (its best checkpoint) or a .safetensors checkpoint")
    p.add_argument("inputs", metavar="IMAGE", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="folder for the <stem>_gradcam.png figures")
    p.add_argument("--method", choices=("gradcam", "gradcampp"), default="gradcam",
                   help="Grad-CAM (default) or Grad-CAM++")
    p.add_argument("--layer", help="dotted name of the layer to explain (default: the model family's last "
                                   "convolutional stage, e.g. layer4 for ResNets)")
    p.add_argument("--target", help="class to explain, by name or index (default: each image's predicted class)")
    p.set_defaults(func=run)
