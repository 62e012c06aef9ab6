"""``medlens ood fit``: fit (or refit) a run's out-of-distribution detector (runs trained before it existed)."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from medlens.engine.ood import fit_run_detector

    card = fit_run_detector(args.run, share=args.share, root=args.root, batch_size=args.batch_size)
    print(f"out-of-distribution detector ({card['method']}, {card['feature_dim']} features, {card['n_train']} "
          f"training images): threshold {card['threshold']:.4g} flags {card['val_flagged']:.1%} of val "
          f"(asked {card['share']:.1%}) and {card['test_flagged']:.1%} of test")
    return 0


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1) such as 0.05, got {text!r}")
    return value


def add_parser(commands) -> None:
    from medlens.commands._options import positive_int

    p = commands.add_parser("ood", help="out-of-distribution detector of a run (fitted at the end of training)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    fit = actions.add_parser("fit", help="fit the detector on the run's training features; threshold on val")
    fit.add_argument("run", metavar="RUN", help="run folder written by medlens train")
    fit.add_argument("--share", type=_share, default=0.05,
                     help="share of validation images to flag (default 0.05)")
    fit.add_argument("--root", help="folder of MedMNIST .npz files (default: the run's, else $MEDLENS_DATA)")
    fit.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    fit.set_defaults(func=run)
