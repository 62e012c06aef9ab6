"""``medlens evaluate``: a run's best model on a split: metrics with CIs, result files."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from medlens.commands._options import source_option_args
    from medlens.evaluate.audit import parse_bins
    from medlens.evaluate.evaluation import evaluate_run, format_evaluation

    options = source_option_args(args)
    if options and not args.data:
        raise ValueError(f"--{next(iter(options)).replace('_', '-')} describes --data; the run's own data is read "
                         "with the options it was trained with")
    by = [c.strip() for c in args.by.split(",") if c.strip()] if args.by else None
    if args.bins and not by:
        raise ValueError("--bins cuts a numeric --by column; name the columns with --by (e.g. --by sex,age)")
    result = evaluate_run(args.run, split=args.split, data=args.data, root=args.root, n_bootstrap=args.bootstrap,
                          seed=args.seed, batch_size=args.batch_size, skip_bad=args.skip_bad or None,
                          download=False if args.no_download else None, verify=False if args.no_verify else None,
                          by=by, bins=parse_bins(args.bins), source_options=options)
    print(format_evaluation(result.metrics))
    print(f"\nwrote {result.folder}: {', '.join(path.name for path in result.files.values())}")
    return 0




def add_parser(commands) -> None:
    from medlens.commands._options import add_source_flags, add_source_options, non_negative_int, positive_int

    p = commands.add_parser("evaluate", help="evaluate a run's best model: metrics with CIs, per-class table, "
                                             "MedMNIST result file, predictions CSV")
    p.add_argument("run", metavar="RUN", help="run folder written by medlens train")
    p.add_argument("--split", default="test", choices=("test", "val", "train", "all"),
                   help="split to evaluate (default test); all: every image, e.g. of an external site's data")
    p.add_argument("--data", help="another dataset spec with the model's classes, matched by name (default: the "
                                  "run's own data); reported as external")
    p.add_argument("--by", help="audit subgroups by these metadata columns, comma-separated (e.g. sex,age,site)")
    p.add_argument("--bins", action="append", metavar="COLUMN:EDGES",
                   help="cut a numeric --by column: age:0,30,60,120, or quantiles age:q4 (default q4; repeatable)")
    p.add_argument("--root", help="folder of MedMNIST .npz files (default: the run's, else $MEDLENS_DATA)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for 95%% confidence intervals (default 1000; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    add_source_flags(p.add_argument_group("data (default: as the run was trained)"))
    add_source_options(p)
    p.set_defaults(func=run)
