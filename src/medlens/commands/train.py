"""``medlens train``: train a model (or an ensemble, or a seed group) into a run folder, or resume one."""

from __future__ import annotations

import argparse
import sys


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def train_config(args: argparse.Namespace):
    """``(config, auto plan or None)`` from the train flags (shared by ``train`` and ``cv``)."""
    from medlens.commands._options import train_overrides
    from medlens.engine.auto import build_train_config

    return build_train_config(train_overrides(args), recipe=args.recipe, budget=args.budget, file=args.config,
                              say=_say)


def run(args: argparse.Namespace) -> int:
    from medlens import workflows

    if args.resume:
        if args.data or args.out:
            raise ValueError("--resume RUN continues RUN with its own config; give no DATA or --out with it")
        result = workflows.resume(args.resume)
    else:
        if not args.data and not args.config:
            raise ValueError("name the data to train on (e.g. medlens train breastmnist --out runs/x), or --resume RUN")
        if not args.out:
            raise ValueError("--out RUN_FOLDER is required (e.g. --out runs/breast-cnn)")
        config, plan = train_config(args)
        if args.seeds > 1:
            from medlens.engine.run_folder import RunFolder
            from medlens.workflows.groups import format_summary, run_group, seed_members

            summary = run_group(args.out, seed_members(config, seeds=args.seeds), kind="seeds", say=_say)
            if plan is not None:
                workflows.training.write_plan(args.out, plan)
            print(format_summary(summary))
            print(f"\n{args.seeds} seeds -> {RunFolder(args.out).summary('seeds')}")
            if not args.no_report:
                from medlens.report.html import build_report

                print(f"report: {build_report(args.out)}", file=sys.stderr)
            return 0
        result = workflows.train(config, args.out, plan=plan)
    if result.metrics and not args.no_report:
        from medlens.report.html import build_report

        print(f"report: {build_report(result.run_dir)}", file=sys.stderr)
    if result.metrics:
        test = result.metrics["test"]
        best = result.metrics["best_epoch"]
        best = f"members' best epochs {', '.join(map(str, best))}" if isinstance(best, list) else f"best epoch {best}"
        print(f"test ACC {test['acc']:.4f}  AUC {test['auc']:.4f}  ({best}) "
              f"-> {result.run_dir}")
    if result.metrics.get("diverged"):
        # Saved, but not a model to use: a scheduler must not count it a success.
        print(f"medlens: error: {result.run_dir} is no better than chance: {result.metrics['diverged']}; "
              "retrain with a lower --lr (its files are kept)", file=sys.stderr)
        return 1
    return 0


def add_parser(commands) -> None:
    from medlens.commands._options import add_train_options

    p = commands.add_parser("train", help="train a model into a run folder (or --resume one)")
    add_train_options(p)
    p.set_defaults(func=run)
