"""``medlens pretrain``: learn an encoder without labels (SimCLR) into a folder ``--init-from`` accepts."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from medlens.commands._options import key_values, source_option_args
    from medlens.engine.pretrain import PretrainSettings, pretrain

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.resume:
        if args.data or args.out:
            raise ValueError("--resume RUN continues RUN with its own settings; give no DATA or --out with it")
        result = pretrain(None, args.resume, resume=True, say=say)
    else:
        if not args.data or not args.out:
            raise ValueError("name the data and the folder: medlens pretrain DATA --out RUN (or --resume RUN)")
        settings = PretrainSettings(
            spec=args.data, method=args.method, model=args.model,
            model_kwargs=key_values(args.model_arg, "--model-arg"),
            unlabeled=args.unlabeled, root=args.root, size=args.size, channels=args.channels,
            skip_bad=args.skip_bad, download=not args.no_download, verify=not args.no_verify,
            source_options=source_option_args(args), epochs=args.epochs,
            batch_size=args.batch_size, lr=args.lr, temperature=args.temperature, seed=args.seed)
        result = pretrain(settings, args.out, say=say)
    probe = result["probe"]
    print(f"linear probe val AUC {probe['auc']:.4f} ACC {probe['acc']:.4f} (untrained encoder AUC "
          f"{result['probe_at_start']['auc']:.4f}) -> {result['checkpoint']}")
    return 0


def add_parser(subparsers) -> None:
    from medlens.commands._options import add_source_flags, add_source_options, positive_int

    p = subparsers.add_parser("pretrain", help="self-supervised pre-training of an encoder (SimCLR) for --init-from")
    p.add_argument("data", metavar="DATA", nargs="?", help="dataset spec: its training images are learned from")
    p.add_argument("--out", help="folder to create (its checkpoints/best is the encoder)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted pretrain from its last finished epoch")
    p.add_argument("--method", default="simclr", choices=("simclr",), help="self-supervised method (default simclr)")
    p.add_argument("--unlabeled", metavar="SPEC",
                   help="more images to learn from, labels ignored (e.g. folder:scans/, same channels)")
    p.add_argument("--model", default="resnet_compact", help="the encoder's registry model (default resnet_compact)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="model keyword (repeatable)")
    p.add_argument("--root", help="folder of MedMNIST .npz files (default: $MEDLENS_DATA)")
    p.add_argument("--size", type=positive_int, help="image edge in pixels")
    p.add_argument("--channels", type=int, choices=(1, 3), help="folders: force 1 or 3 channels")
    add_source_flags(p)
    add_source_options(p)
    p.add_argument("--epochs", type=positive_int, default=20, help="passes over the images (default 20)")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per batch, two views each (default 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, batch order, augmentation (default 0)")
    p.set_defaults(func=run)
