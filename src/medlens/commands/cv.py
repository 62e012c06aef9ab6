"""``medlens cv``: stratified k-fold cross-validation on train+val, one run folder per fold."""

from __future__ import annotations

import argparse
import sys


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from medlens.commands.train import train_config
    from medlens.engine.run_folder import RunFolder
    from medlens.workflows.groups import cv_members, format_summary, run_group

    if args.resume:
        raise ValueError("medlens cv continues an interrupted cross-validation when run again with the same "
                         "DATA, options and --out; --resume is for single runs")
    if args.seeds > 1:
        raise ValueError("medlens cv repeats with --repeats N (new folds and seeds each time), not --seeds")
    if not args.data or not args.out:
        raise ValueError("medlens cv needs DATA and --out PARENT_FOLDER "
                         "(e.g. medlens cv breastmnist --folds 5 --out runs/cv)")
    config, _ = train_config(args)
    summary = run_group(args.out, cv_members(config, folds=args.folds, repeats=args.repeats), kind="cv", say=_say)
    print(format_summary(summary))
    repeated = (f"{args.repeats} repeats of {args.folds}-fold cross-validation ({args.repeats * args.folds} runs; "
                "the summary covers every run of every repeat)" if args.repeats > 1
                else f"{args.folds}-fold cross-validation")
    print(f"\n{repeated} on train+val (val = the held-out fold; test untouched) "
          f"-> {RunFolder(args.out).summary('cv')}")
    if not args.no_report:
        from medlens.report.html import build_report

        print(f"report: {build_report(args.out)}", file=sys.stderr)
    return 0




def add_parser(commands) -> None:
    from medlens.commands._options import add_train_options, positive_int

    p = commands.add_parser("cv", help="stratified k-fold cross-validation on train+val; one run folder per fold")
    add_train_options(p)
    g = p.add_argument_group("cross-validation")
    g.add_argument("--folds", type=positive_int, default=5, help="number of folds, >= 2 (default 5)")
    g.add_argument("--repeats", type=positive_int, default=1,
                   help="repeat the k-fold with new fold assignments and seeds (default 1)")
    p.set_defaults(func=run)
