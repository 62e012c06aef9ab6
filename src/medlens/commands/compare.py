"""``medlens compare``: runs side by side, optionally beside the published MedMNIST v2 table."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from medlens._io import write_json
    from medlens.evaluate.compare import compare_runs, format_comparison

    result = compare_runs(args.runs, benchmark=args.benchmark, split=args.split, n_bootstrap=args.bootstrap)
    print(format_comparison(result))
    if args.out:
        write_json(args.out, result)
    return 0




def add_parser(commands) -> None:
    from medlens.commands._options import non_negative_int

    p = commands.add_parser("compare", help="runs side by side (metrics with CIs, time, params, FLOPs), "
                                            "optionally beside the published MedMNIST v2 results")
    p.add_argument("runs", metavar="RUN", nargs="+", help="run folders")
    p.add_argument("--benchmark", choices=("medmnist",), help="add the published MedMNIST v2 rows of each dataset")
    p.add_argument("--split", default="test", choices=("test", "val"), help="split compared (default test)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for runs not yet evaluated (default 1000)")
    p.add_argument("--out", help="also write the comparison as JSON here")
    p.set_defaults(func=run)
