"""``medlens robustness``: a run's test split under each corruption and severity (ACC, AUC, collapse)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from medlens.evaluate.robustness import format_robustness, parse_severities, robustness_run
    from medlens.engine.run_folder import RunFolder

    metrics = robustness_run(args.run, corruptions=args.corruptions, severities=parse_severities(args.severities),
                             root=args.root, n_bootstrap=args.bootstrap, seed=args.seed, batch_size=args.batch_size)
    print(format_robustness(metrics))
    layout = RunFolder(args.run)
    print(f"\nwrote {layout.robustness_metrics} and {layout.robustness_examples.name}")
    return 0


def add_parser(commands) -> None:
    from medlens.commands._options import non_negative_int, positive_int

    p = commands.add_parser("robustness", help="a run's test split under noise, blur, contrast, JPEG ... at "
                                               "5 severities: ACC, AUC, balanced accuracy, ECE, collapse flags")
    p.add_argument("run", metavar="RUN", help="run folder written by medlens train")
    p.add_argument("--severities", default="1-5", help="severities to run: a range 1-5 or a list 1,3,5 (default 1-5)")
    # Names checked by the library (numpy-free parser: --help stays instant); an unknown one lists the valid ones.
    p.add_argument("--corruptions", nargs="+", metavar="NAME",
                   help="corruptions to run (default all): gaussian_noise shot_noise speckle_noise gaussian_blur "
                        "motion_blur contrast brightness gamma jpeg pixelate")
    p.add_argument("--root", help="folder of MedMNIST .npz files (default: the run's, else $MEDLENS_DATA)")
    p.add_argument("--bootstrap", type=non_negative_int, default=200,
                   help="bootstrap resamples per corruption and severity for 95%% intervals (default 200; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions and the bootstrap (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    p.set_defaults(func=run)
