"""``medlens evaluate``: a run's best model on a split: metrics with CIs, result files."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from medlens.evaluate.evaluation import evaluate_run, format_evaluation

    result = evaluate_run(args.run, split=args.split, data=args.data, root=args.root, n_bootstrap=args.bootstrap,
                          seed=args.seed, batch_size=args.batch_size, skip_bad=args.skip_bad or None,
                          download=False if args.no_download else None, verify=False if args.no_verify else None)
    print(format_evaluation(result.metrics))
    print(f"\nwrote {result.folder}: {', '.join(path.name for path in result.files.values())}")
    return 0




def add_parser(commands) -> None:
    from medlens.commands._options import add_source_flags, non_negative_int, positive_int

    p = commands.add_parser("evaluate", help="evaluate a run's best model: metrics with CIs, per-class table, "
                                             "MedMNIST result file, predictions CSV")
    p.add_argument("run", metavar="RUN", help="run folder written by medlens train")
    p.add_argument("--split", default="test", choices=("test", "val", "train"), help="split to evaluate (default test)")
    p.add_argument("--data", help="another dataset spec with the same classes (default: the run's own data)")
    p.add_argument("--root", help="folder of MedMNIST .npz files (default: the run's, else $MEDLENS_DATA)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for 95%% confidence intervals (default 1000; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    add_source_flags(p.add_argument_group("data (default: as the run was trained)"))
    p.set_defaults(func=run)
