"""``medlens evaluate``, ``medlens cv`` and ``medlens compare`` (standard library only at import)."""

from __future__ import annotations

import argparse
import sys


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medlens.evaluate.evaluation import evaluate_run, format_evaluation

    result = evaluate_run(args.run, split=args.split, data=args.data, root=args.root, n_bootstrap=args.bootstrap,
                          seed=args.seed, batch_size=args.batch_size)
    print(format_evaluation(result.metrics))
    print(f"\nwrote {result.folder}: metrics.json, predictions.csv, {result.files['medmnist'].name}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from medlens.cli import build_train_config
    from medlens.evaluate.multirun import cv_members, format_summary, run_group

    if args.resume:
        raise ValueError("medlens cv continues an interrupted cross-validation when run again with the same "
                         "DATA, options and --out; --resume is for single runs")
    if args.seeds > 1:
        raise ValueError("medlens cv repeats with --repeats N (new folds and seeds each time), not --seeds")
    if not args.data or not args.out:
        raise ValueError("medlens cv needs DATA and --out PARENT_FOLDER (e.g. medlens cv breastmnist --folds 5 --out runs/cv)")
    config, _ = build_train_config(args)
    summary = run_group(args.out, cv_members(config, folds=args.folds, repeats=args.repeats), kind="cv", say=_say)
    print(format_summary(summary))
    print(f"\n{args.folds}-fold cross-validation on train+val (val = the held-out fold; test untouched) "
          f"-> {args.out}/cv_summary.json")
    if not args.no_report:
        from medlens.report.html import build_report

        print(f"report: {build_report(args.out)}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from medlens._io import write_json
    from medlens.evaluate.compare import compare_runs, format_comparison

    result = compare_runs(args.runs, benchmark=args.benchmark, split=args.split, n_bootstrap=args.bootstrap)
    print(format_comparison(result))
    if args.out:
        write_json(args.out, result)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from medlens.engine.auto import parse_budget
    from medlens.evaluate.bench import bench

    folder_root = args.folder_root
    if folder_root is None and os.environ.get("MEDLENS_DATA"):
        folder_root = str(Path(os.environ["MEDLENS_DATA"]).resolve().parent)  # ../shared/data beside medmnist/
    summary = bench(args.datasets, budget_s=parse_budget(args.budget), budget_3d_s=parse_budget(args.budget_3d),
                    seeds=args.seeds, work=Path(args.work), results=Path(args.results),
                    readme=Path(args.readme) if args.readme else None, folder_root=folder_root, say=_say)
    from medlens.evaluate.bench import format_markdown

    print(format_markdown(summary["rows"], when=summary["date"]))
    return 0


def add_commands(commands) -> None:
    """Register ``evaluate``, ``cv``, ``compare`` and ``bench`` on the CLI's sub-parsers."""
    from medlens.cli import add_train_options, non_negative_int, positive_int

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
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("cv", help="stratified k-fold cross-validation on train+val; one run folder per fold")
    add_train_options(p)
    g = p.add_argument_group("cross-validation")
    g.add_argument("--folds", type=positive_int, default=5, help="number of folds, >= 2 (default 5)")
    g.add_argument("--repeats", type=positive_int, default=1,
                   help="repeat the k-fold with new fold assignments and seeds (default 1)")
    p.set_defaults(func=cmd_cv)

    p = commands.add_parser("compare", help="runs side by side (metrics with CIs, time, params, FLOPs), "
                                            "optionally beside the published MedMNIST v2 results")
    p.add_argument("runs", metavar="RUN", nargs="+", help="run folders")
    p.add_argument("--benchmark", choices=("medmnist",), help="add the published MedMNIST v2 rows of each dataset")
    p.add_argument("--split", default="test", choices=("test", "val"), help="split compared (default test)")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000,
                   help="bootstrap resamples for runs not yet evaluated (default 1000)")
    p.add_argument("--out", help="also write the comparison as JSON here")
    p.set_defaults(func=cmd_compare)

    from medlens.evaluate.bench import DEFAULT_DATASETS

    p = commands.add_parser("bench", help="the auto recipe on each dataset within a budget, beside the published "
                                          "MedMNIST v2 table (resumable)")
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                   help=f"MedMNIST names, medical-mnist, covid19 or folder:PATH specs (default: {' '.join(DEFAULT_DATASETS)})")
    p.add_argument("--budget", default="5m", help="budget of each 2D run, e.g. 5m (default 5m)")
    p.add_argument("--budget-3d", default="10m", help="budget of each 3D run (default 10m)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per dataset (default 3)")
    p.add_argument("--work", default="runs/bench", help="run folders, one per dataset and seed (default runs/bench)")
    p.add_argument("--results", default="benchmarks/results", help="where bench-<date>.json/.md go")
    p.add_argument("--readme", default="benchmarks/README.md",
                   help="markdown file whose bench section is regenerated ('' for none)")
    p.add_argument("--folder-root", help="folder holding medical_mnist/ and covid19/ (default: beside $MEDLENS_DATA)")
    p.set_defaults(func=cmd_bench)
