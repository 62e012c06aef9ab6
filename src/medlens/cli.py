"""The ``medlens`` command: thin argument parsing over the library.

Only the standard library is imported at start-up; each command imports what it needs, so
``medlens --help`` and ``medlens datasets`` answer at once. User errors (a bad name, a missing
file, a bad option) print one line ``medlens: error: ...`` and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from medlens import __version__

EXIT_ERROR = 1
# Modules with an ``add_commands(subparsers)`` that registers their commands, in --help order.
COMMAND_MODULES: tuple[str, ...] = (
    "medlens.evaluate.commands", "medlens.report.commands", "medlens.explain.commands", "medlens.serve.commands",
    "medlens.serve.server_commands",
)


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that resolves a dataset spec."""
    group = parser.add_argument_group("data")
    group.add_argument("--root", help="folder of MedMNIST .npz files (default: $MEDLENS_DATA, else ~/.medlens/data)")
    group.add_argument("--size", type=positive_int, help="image edge in pixels (MedMNIST: 28/64/128/224, 3D 28/64; folders: default 64)")
    group.add_argument("--seed", type=int, default=0, help="seed of any split medlens makes (default 0)")
    group.add_argument("--ratios", default="0.8/0.1/0.1", help="train/val/test ratios for unsplit folders (default 0.8/0.1/0.1)")
    group.add_argument("--channels", type=int, choices=(1, 3), help="folders: force 1 or 3 channels (default: decided from the images)")
    group.add_argument("--skip-bad", action="store_true", help="folders: skip unreadable files and list them, instead of failing")
    group.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing MedMNIST file")
    group.add_argument("--no-verify", action="store_true", help="skip the MD5 check of local MedMNIST files")


def _resolve(args: argparse.Namespace):
    from medlens.data.source import resolve

    return resolve(
        args.data, root=args.root, size=args.size, download_missing=not args.no_download,
        verify=not args.no_verify, seed=args.seed, ratios=args.ratios, channels=args.channels,
        skip_bad=args.skip_bad,
    )


def cmd_datasets(args: argparse.Namespace) -> int:
    from medlens._table import format_table
    from medlens.data.download import data_root
    from medlens.data.registry import get_dataset_info, list_datasets

    root = data_root(args.root)
    names = list_datasets(args.pattern)
    if not names:
        raise ValueError(f"no dataset matches {args.pattern!r}; valid names: {', '.join(list_datasets())}")
    rows = []
    for name in names:
        info = get_dataset_info(name)
        local = [str(s) for s, remote in info.files.items() if (root / remote.filename).is_file()]
        splits = "/".join(f"{info.split_sizes[s]:,}" for s in ("train", "val", "test"))
        rows.append([name, f"{info.spatial_dims}D", info.task.value, str(info.n_classes), str(info.n_channels),
                     ",".join(map(str, info.sizes)), ",".join(local) or "-", splits, info.license])
    header = ["name", "dims", "task", "classes", "ch", "sizes", "local", "train/val/test", "licence"]
    print(format_table(header, rows))
    print(f"\nlocal: sizes present in {root} (set by --root, else $MEDLENS_DATA, else ~/.medlens/data)")
    print("also: folder:PATH (a directory or .zip of class folders) and npz:FILE.npz")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from medlens.data.download import data_root, download, verify_md5
    from medlens.data.registry import get_dataset_info

    info = get_dataset_info(args.name)
    sizes = info.sizes if args.all_sizes else (args.size,)
    root = data_root(args.root)
    for size in sizes:
        remote = info.file(size)
        path = root / remote.filename
        if path.is_file():
            verify_md5(path, remote.md5, remote.url)
            print(f"{path}: present, MD5 {remote.md5} verified")
            continue
        if not args.quiet:
            print(f"downloading {remote.url} -> {path}", file=sys.stderr)
        download(remote, root, progress=not args.quiet)
        print(f"{path}: downloaded, MD5 {remote.md5} verified")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from medlens.data.preview import count_table, imbalance_warning, save_montage

    source = _resolve(args)
    out = Path(args.out) if args.out else Path(f"preview_{source.info.name}.png")
    save_montage(source, out, per_class=args.per_class, split=args.split, view=args.view, seed=args.seed)
    info = source.info
    print(f"{source.spec}: {info.task.value}, {info.n_classes} classes, {info.n_channels} channel(s), "
          f"{info.spatial_dims}D {'x'.join([str(source.size)] * info.spatial_dims)}, split: {source.split_method}")
    print(count_table(source))
    warning = imbalance_warning(source, ratio=args.imbalance_ratio)
    for line in ([warning] if warning else []) + source.warnings:
        print(f"warning: {line}")
    if source.bad_files:
        print(f"warning: skipped {len(source.bad_files)} unreadable file(s): "
              + "; ".join(f"{name} ({reason})" for name, reason in source.bad_files))
    print(f"montage written to {out}")
    return 0


def _key_values(pairs: list[str] | None, what: str) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values read as YAML scalars)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _train_overrides(args: argparse.Namespace) -> dict:
    """Nested config overrides from the flags the user gave (None = not given)."""
    from dataclasses import asdict

    sections: dict[str, dict] = {"data": {}, "model": {}, "augment": {}, "optim": {}, "train": {}}
    flags = {
        "data": {"spec": args.data, "root": args.root, "size": args.size, "ratios": args.ratios,
                 "channels": args.channels, "batch_size": args.batch_size, "class_weights": args.class_weights,
                 "oversample": True if args.oversample else None,
                 "correct_priors": True if args.correct_priors else None, "split_seed": args.seed},
        "model": {"name": args.model, "pretrain": args.pretrain, "pretrain_epochs": args.pretrain_epochs,
                  "channels_last": False if args.no_channels_last else None, "compile": True if args.compile else None},
        "optim": {"loss": args.loss, "optimizer": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay,
                  "momentum": args.momentum, "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
                  "gamma": args.gamma, "plateau_patience": args.plateau_patience, "grad_clip": args.grad_clip,
                  "focal_gamma": args.focal_gamma, "aucm_margin": args.aucm_margin, "epoch_decay": args.epoch_decay,
                  "milestones": [float(m) for m in args.milestones.split(",")] if args.milestones else None},
        "train": {"epochs": args.epochs, "seed": args.seed, "monitor": args.monitor, "early_stop": args.early_stop,
                  "devices": _devices(args.devices), "strategy": args.strategy, "num_nodes": args.num_nodes,
                  "precision": args.precision, "tracking_uri": args.tracking_uri,
                  "progress": False if args.no_progress else None, "members": args.members},
    }
    for section, values in flags.items():
        sections[section].update({k: v for k, v in values.items() if v is not None})
    if args.augment:
        from medlens.data.augment import AugmentConfig

        sections["augment"].update(asdict(AugmentConfig.preset(args.augment)))
    sections["augment"].update(_key_values(args.aug, "--aug"))
    if args.model_arg:
        sections["model"]["kwargs"] = _key_values(args.model_arg, "--model-arg")
    return sections


def _devices(text: str | None):
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--devices must be a number or 'auto'; got {text!r}") from None


def build_train_config(args: argparse.Namespace):
    """``(config, auto plan or None)`` from the flags; ``--recipe auto`` plans from the data and ``--budget``."""
    from medlens.engine.config import build_config

    overrides = _train_overrides(args)
    if args.recipe != "auto":
        if args.budget is not None:
            raise ValueError("--budget goes with --recipe auto")
        return build_config(overrides, recipe=args.recipe, file=args.config), None
    if args.budget is None:
        raise ValueError("--recipe auto needs --budget, e.g. --budget 5m")
    from dataclasses import replace

    from medlens.engine.auto import auto_overrides

    # Prior correction is checked against the balancing the plan chooses, so it waits for the plan.
    asked = {k: v for k, v in overrides["data"].items() if k != "correct_priors"}
    base = build_config({**overrides, "data": asked}, file=args.config)
    data = dict(base.data.__dict__)
    # --members fixes the ensemble size; a multi-device run trains one model; else the rules choose.
    members = args.members if args.members is not None else None if base.train.one_process else 1
    plan = auto_overrides(data, args.budget, say=lambda m: print(m, file=sys.stderr), members=members)
    planned = plan.overrides["data"].get("correct_priors", False)
    plan.overrides["data"]["correct_priors"] = False
    config = build_config(overrides, recipe="default", file=args.config, plan=plan.overrides)
    if planned and "correct_priors" not in overrides["data"]:
        # The rules pair balanced class weights with prior correction; the user's own options
        # (class weights off, another loss) win, and then there is nothing to correct.
        balanced = config.data.class_weights == "balanced" or config.data.oversample
        loss = plan.overrides["optim"]["loss"] if config.optim.loss == "auto" else config.optim.loss
        if balanced and loss == "ce":
            config = replace(config, data=replace(config.data, correct_priors=True))
            plan.overrides["data"]["correct_priors"] = True
        else:
            plan.reasons.append(f"no prior correction: your options give {'loss ' + loss if balanced else 'no balancing'}"
                                f", which it does not fit")
            print(f"auto: {plan.reasons[-1]}", file=sys.stderr)
    return config, plan


def cmd_train(args: argparse.Namespace) -> int:
    from medlens.engine import train as engine

    if args.resume:
        if args.data or args.out:
            raise ValueError("--resume RUN continues RUN with its own config; give no DATA or --out with it")
        result = engine.resume(args.resume)
    else:
        if not args.data:
            raise ValueError("name the data to train on (e.g. medlens train breastmnist --out runs/x), or --resume RUN")
        if not args.out:
            raise ValueError("--out RUN_FOLDER is required (e.g. --out runs/breast-cnn)")
        config, plan = build_train_config(args)
        if args.seeds > 1:
            from medlens.evaluate.multirun import (
                format_summary,
                run_group,
                seed_members,
            )

            summary = run_group(args.out, seed_members(config, seeds=args.seeds), kind="seeds",
                                say=lambda m: print(m, file=sys.stderr))
            if plan is not None:
                from medlens._io import write_json

                write_json(Path(args.out) / "auto.json", plan.to_dict())
            print(format_summary(summary))
            print(f"\n{args.seeds} seeds -> {args.out}/seeds_summary.json")
            if not args.no_report:
                from medlens.report.html import build_report

                print(f"report: {build_report(args.out)}", file=sys.stderr)
            return 0
        result = engine.train(config, args.out)
        if plan is not None:
            from medlens._io import write_json

            write_json(Path(args.out) / "auto.json", plan.to_dict())  # the choices and their reasons
    if result.metrics and not args.no_report:
        from medlens.report.html import build_report

        print(f"report: {build_report(result.run_dir)}", file=sys.stderr)
    if result.metrics:
        test = result.metrics["test"]
        best = result.metrics["best_epoch"]
        best = f"members' best epochs {', '.join(map(str, best))}" if isinstance(best, list) else f"best epoch {best}"
        print(f"test ACC {test['acc']:.4f}  AUC {test['auc']:.4f}  ({best}) "
              f"-> {result.run_dir}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from medlens._table import format_table
    from medlens.models import get_model_spec, list_models

    rows = []
    for name in list_models(args.pattern):
        spec = get_model_spec(name)
        rows.append([name, "/".join(f"{d}D" for d in spec.spatial_dims), spec.description])
    print(format_table(["model", "dims", "description"], rows))
    return 0


def add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", metavar="DATA", nargs="?", help="dataset spec (not with --resume)")
    p.add_argument("--out", help="run folder to create, e.g. runs/breast-cnn")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last finished epoch")
    p.add_argument("--config", help="YAML file of config sections (data, model, augment, optim, train)")
    p.add_argument("--recipe", default="default",
                   help="starting point: default, fast, medmnist (the benchmark protocol), or auto (fits --budget)")
    p.add_argument("--budget", help="--recipe auto: the whole run's time budget, e.g. 5m, 90s, 1h")
    g = p.add_argument_group("data")
    g.add_argument("--root", help="folder of MedMNIST .npz files (default: $MEDLENS_DATA)")
    g.add_argument("--size", type=positive_int, help="image edge in pixels")
    g.add_argument("--ratios", help="train/val/test ratios for unsplit folders (default 0.8/0.1/0.1)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="folders: force 1 or 3 channels")
    g.add_argument("--batch-size", type=positive_int, help="images per batch per process (default 128)")
    g.add_argument("--class-weights", choices=("none", "balanced"), help="weight the loss by inverse class frequency")
    g.add_argument("--oversample", action="store_true", help="sample training images inversely to class size")
    g.add_argument("--correct-priors", action="store_true",
                   help="after --class-weights balanced or --oversample, shift the saved model's logits by the log "
                        "training priors: probabilities for the training class mix, argmax for accuracy")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="registered model (see 'medlens models'; default resnet18)")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="model keyword, e.g. stem=small (repeatable)")
    g.add_argument("--pretrain", choices=("none", "autoencoder"), help="pre-train the encoder as an autoencoder first")
    g.add_argument("--pretrain-epochs", type=positive_int, help="autoencoder epochs (default 10)")
    g.add_argument("--no-channels-last", action="store_true", help="keep the default memory format for 2D convnets")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (slower for small CNNs on CPU)")
    g = p.add_argument_group("augmentation (batched)")
    g.add_argument("--augment", help="preset: none, light or standard")
    g.add_argument("--aug", action="append", metavar="KEY=VALUE",
                   help="one strength: hflip, vflip, rotate, shift, zoom, noise, brightness, contrast, mixup (repeatable)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", choices=("auto", "ce", "bce", "focal", "aucm"), help="default: ce, or bce for multi-label")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd", "pesg"), help="default adam; pesg goes with --loss aucm")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float, help="SGD/PESG momentum (default 0.9)")
    g.add_argument("--epoch-decay", type=float, help="PESG proximal weight (default 2e-3)")
    g.add_argument("--schedule", choices=("none", "multistep", "cosine", "plateau"))
    g.add_argument("--milestones", help="multistep: fractions of the epochs, e.g. 0.5,0.75")
    g.add_argument("--gamma", type=float, help="LR factor of multistep and plateau (default 0.1)")
    g.add_argument("--warmup-epochs", type=int, help="cosine: epochs of linear warm-up")
    g.add_argument("--plateau-patience", type=int, help="plateau: epochs without improvement before decay")
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    g.add_argument("--focal-gamma", type=float, help="focal loss focusing parameter (default 2)")
    g.add_argument("--aucm-margin", type=float, help="AUC-margin loss margin (default 1)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--seed", type=int, help="fixes weights, splits, batch order, augmentation (default 0)")
    g.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="train N runs with seeds SEED..SEED+N-1 under --out and report mean ± std")
    g.add_argument("--members", type=positive_int, metavar="K",
                   help="train K models one after another and save their ensemble (mean probability; default 1)")
    g.add_argument("--monitor", choices=("val_auc", "val_acc", "val_loss"), help="picks the best checkpoint (default val_auc)")
    g.add_argument("--early-stop", type=positive_int, metavar="PATIENCE", help="stop after this many epochs without improvement")
    g.add_argument("--devices", help="devices per node for Lightning (default 1; 'auto')")
    g.add_argument("--strategy", help="Lightning strategy, e.g. ddp")
    g.add_argument("--num-nodes", type=positive_int)
    g.add_argument("--precision", help="Lightning precision (default 32-true; bf16 is slow on CPUs without it)")
    g.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///<runs folder>/mlflow.db; 'none' to disable)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-report", action="store_true", help="do not write report.html at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlens",
        description="Train, evaluate, explain and serve medical image classifiers.",
        epilog="DATA is a dataset spec: a MedMNIST name (breastmnist, breastmnist@64), "
               "folder:PATH (directory or .zip of class folders, optionally under train/val/test), "
               "or npz:FILE.npz. Run 'medlens COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"medlens {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("datasets", help="list the dataset registry and which files are present locally")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*3d' (default: all)")
    p.add_argument("--root", help="data folder to check (default: $MEDLENS_DATA, else ~/.medlens/data)")
    p.set_defaults(func=cmd_datasets)

    p = commands.add_parser("fetch", help="download a MedMNIST file (resumable, MD5-verified)")
    p.add_argument("name", help="dataset name, e.g. breastmnist")
    p.add_argument("--size", type=positive_int, default=28, help="edge in pixels (default 28)")
    p.add_argument("--all-sizes", action="store_true", help="fetch every available size")
    p.add_argument("--root", help="destination folder (default: $MEDLENS_DATA, else ~/.medlens/data)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fetch)

    p = commands.add_parser("preview", help="write a PNG montage per class and print counts per split")
    p.add_argument("data", metavar="DATA", help="dataset spec")
    p.add_argument("--out", help="PNG to write (default: preview_<name>.png)")
    p.add_argument("--per-class", type=positive_int, default=8, help="samples per class row (default 8)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="split to sample (default train)")
    p.add_argument("--view", default="mid", choices=("mid", "mip"), help="3D: middle slice or max-intensity projection")
    p.add_argument("--imbalance-ratio", type=float, default=2.0, help="warn when largest/smallest training class count exceeds this ratio (default 2)")
    _add_data_options(p)
    p.set_defaults(func=cmd_preview)

    p = commands.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.set_defaults(func=cmd_models)

    p = commands.add_parser("train", help="train a model into a run folder (or --resume one)")
    add_train_options(p)
    p.set_defaults(func=cmd_train)

    # Later stages keep their commands beside their code; each module imports only the standard
    # library at the top, so building the parser stays instant.
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(commands)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Library warnings as one plain line (no file name and source line)."""
    return f"medlens: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 user error, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # user-facing: one line, no traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"medlens: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("medlens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
