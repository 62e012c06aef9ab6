"""``medlens export``: a run's best model as ONNX, verified against torch on its test images."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from medlens.engine.run_folder import sidecar
    from medlens.serve.onnx_export import export_onnx

    path = export_onnx(args.run, args.out, root=args.root)
    check = json.loads(sidecar(path).read_text())["verification"]
    print(f"exported to {path} (card: {sidecar(path)}); ONNX Runtime matches torch on "
          f"{check['images']} test images of {check['spec']}: max |difference| {check['max_abs_difference']:.2g}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a run's best model (ONNX), verified on its test images")
    p.add_argument("run", metavar="RUN", help="run folder (its best checkpoint) or a .safetensors checkpoint")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    p.add_argument("--out", help="file to write (default RUN/export/model.onnx; the card goes beside it as .json)")
    p.add_argument("--root", help="folder of MedMNIST .npz files for the verification images (default: $MEDLENS_DATA)")
    p.set_defaults(func=run)
