"""``medlens tune``: a hyperparameter search (Optuna), one run folder per trial, shareable by many machines."""

from __future__ import annotations

import argparse
import sys
import time


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()  # the budget covers the whole command, loading torch included
    from medlens.commands._options import train_overrides
    from medlens.engine.auto import build_train_config, parse_budget
    from medlens.engine.run_folder import RunFolder
    from medlens.workflows.tune import format_summary, tune
    from medlens.workflows.tune_space import load_space

    if args.resume:
        raise ValueError("medlens tune continues a search when run again with the same DATA, options and --out; "
                         "--resume is for single runs")
    if args.seeds > 1 or args.members:
        raise ValueError("medlens tune trains one model per trial: give no --seeds or --members "
                         "(train the best config with them afterwards: medlens train --config OUT/best.yaml)")
    if args.recipe == "auto":
        raise ValueError("--recipe auto plans one run for a budget; medlens tune searches from a fixed recipe "
                         "(fast, default, medmnist)")
    if not args.data or not args.out:
        raise ValueError("medlens tune needs DATA and --out TUNE_FOLDER "
                         "(e.g. medlens tune breastmnist --space default --trials 8 --out runs/breast-tune)")
    space = load_space(args.space)
    config, _ = build_train_config(train_overrides(args), recipe=args.recipe, budget=None, file=args.config, say=_say)
    budget = None if args.budget is None else parse_budget(args.budget)
    summary = tune(config, args.out, space=space, trials=args.trials, budget_s=budget, storage=args.storage,
                   study_name=args.study, pruner=args.pruner, refit=args.refit, say=_say, started=started)
    folder = RunFolder(args.out)
    print(format_summary(summary))
    counts = summary["counts"]
    print(f"\n{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed trials "
          f"in {summary['wall_s']:.0f} s -> {folder.tune_summary}")
    if summary["best"] is not None:
        print(f"best: trial {summary['best']['number']}, {summary['monitor']} {summary['best']['value']:.4f} "
              f"-> {folder.best_config} (medlens train --config {folder.best_config} --out RUN)")
    if summary.get("refit"):
        test = summary["refit"]["test"]
        print(f"refit on train+val: test ACC {test['acc']:.4f} AUC {test['auc']:.4f} -> {summary['refit']['run_dir']}")
    if not args.no_report and summary["best"] is not None:
        from medlens.report.html import build_report

        print(f"report: {build_report(args.out)}", file=sys.stderr)
    return 0


def add_parser(commands) -> None:
    from medlens.commands._options import add_train_options, positive_int

    p = commands.add_parser("tune", help="hyperparameter search (Optuna): one run folder per trial under OUT/trials",
                            description="Search hyperparameters with Optuna (TPE sampler, successive-halving "
                                        "pruning on the per-epoch validation metric). The train options set the "
                                        "base config every trial starts from (default recipe: fast); the space "
                                        "file says what each trial draws. Run the same command again to continue.")
    add_train_options(p)
    p.set_defaults(recipe="fast")
    for action in p._actions:  # --budget means the search's budget here, not the auto recipe's
        if action.dest == "budget":
            action.help = "time budget of this worker, e.g. 3m, 1h: no trial starts past it, the last ends in it"
        if action.dest == "recipe":
            action.help = "base config every trial starts from: fast (default), default or medmnist"
    g = p.add_argument_group("search")
    g.add_argument("--space", default="default",
                   help="YAML file of config fields and ranges (optim.lr: {log: [1.0e-4, 1.0e-2]}, "
                        "model.kwargs.width: [16, 24, 32]), or 'default' (default)")
    g.add_argument("--trials", type=positive_int,
                   help="stop when the study holds this many finished trials, all workers together")
    g.add_argument("--storage",
                   help="SQLAlchemy URL of the study, shared by every worker (postgresql://user@host/db); "
                        "default: OUT/study.db (SQLite)")
    g.add_argument("--study", help="the study's name in --storage (default: the name of --out)")
    g.add_argument("--pruner", default="halving", choices=("halving", "hyperband", "median", "none"),
                   help="stops poor trials early from their per-epoch validation metric (default halving)")
    g.add_argument("--refit", action="store_true",
                   help="afterwards train the best config on train+val and score it on test once (OUT/refit)")
    p.set_defaults(func=run)
