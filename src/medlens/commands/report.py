"""``medlens report``: one self-contained HTML report of a run or a group of runs."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from medlens.report.html import build_report

    path = build_report(args.run, out=args.out, gallery=args.gallery, split=args.split, explain=not args.no_explain,
                        n_bootstrap=args.bootstrap, figures=not args.no_figures)
    print(f"report: {path}")
    return 0


def add_parser(commands) -> None:
    from medlens.commands._options import non_negative_int

    p = commands.add_parser("report", help="write one self-contained interactive HTML report of a run or cv group")
    p.add_argument("run", metavar="RUN", help="run folder, or a folder made by medlens cv / train --seeds")
    p.add_argument("--out", help="HTML file to write (default RUN/report.html)")
    p.add_argument("--split", default="test", choices=("test", "val"), help="split shown (default test)")
    p.add_argument("--gallery", type=non_negative_int, default=240,
                   help="most images in the gallery: all errors first, then a stratified sample (default 240)")
    p.add_argument("--no-explain", action="store_true", help="no Grad-CAM overlays in the gallery")
    p.add_argument("--no-figures", action="store_true", help="do not write the print PNGs to RUN/figures/")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples of the CIs (default 1000; 0 = none)")
    p.set_defaults(func=run)
