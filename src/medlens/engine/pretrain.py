"""Self-supervised pre-training of a classifier's encoder: the autoencoder and SimCLR.

``--pretrain autoencoder`` (inside ``medlens train``): train the classifier's encoder to
reconstruct the training images. The autoencoder wraps the classifier's own feature extractor
(shared modules, not a copy), so after pre-training the classifier simply starts from the
learned encoder and a fresh head. A plain loop rather than a second Lightning run: it is a few
epochs on one process, runs the same in every DDP process (same seed, same data), and needs no
checkpoints of its own.

``medlens pretrain DATA --method simclr`` (:func:`pretrain`): a run of its own that learns an
encoder from the training images (and optionally ``--unlabeled`` ones) by SimCLR (Chen et al.
2020) and writes it as a model checkpoint that ``medlens train --init-from`` takes. SimCLR rather
than MoCo, BYOL or MAE because on a CPU it is the cheapest that works with a CNN: one encoder and a
two-layer projection head, two augmented views per image, the other images of the batch as
negatives (no momentum encoder or queue, no predictor, no ViT), and it needs only the batched
augmentation medlens already has. It shares the autoencoder's plain loop, seeding and
``pretrain.csv``; it adds a resume state, since it runs for many more epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from medlens.data.augment import BatchAugment, Normalisation, normalise, to_unit
from medlens.data.loader import BatchLoader
from medlens.engine.config import RunConfig
from medlens.engine.module import epoch_seed
from medlens.engine.run_folder import RunFolder
from medlens.engine.tracking import write_history

PRETRAIN_RANK = 10_000  # a seed stream of its own, apart from the classifier's epochs


def pretrain_autoencoder(model: torch.nn.Module, train_split, cfg: RunConfig, normalisation: Normalisation,
                         spatial_dims: int, in_channels: int, input_size: int, run_dir: Path,
                         say: Callable[[str], None] = print) -> list[float]:
    """Pre-train ``model``'s encoder in place; returns the reconstruction MSE of each epoch.

    Writes ``pretrain.csv`` (epoch, MSE, seconds) into ``run_dir``. Input and target are the
    normalised training images after the run's augmentation (no mixup).
    """
    from medlens.models import Autoencoder

    autoencoder = Autoencoder(model, in_channels=in_channels, input_size=input_size, spatial_dims=spatial_dims)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=1e-3)
    settings = replace(cfg.augment, mixup=0.0)
    augment = BatchAugment(settings, spatial_dims=spatial_dims)
    generator = torch.Generator()
    loader = BatchLoader(train_split, batch_size=cfg.data.batch_size, shuffle=True, seed=cfg.train.seed)
    losses, rows = [], []
    autoencoder.train()
    for epoch in range(cfg.model.pretrain_epochs):
        seed = epoch_seed(cfg.train.seed, epoch, PRETRAIN_RANK)
        torch.manual_seed(seed)
        generator.manual_seed(seed + 1)
        loader.set_epoch(epoch)
        start, total, count = time.perf_counter(), 0.0, 0
        for images, _ in loader:
            x = to_unit(images)
            if settings.enabled:
                x = augment(x, generator=generator)
            x = normalise(x, normalisation)
            loss = torch.nn.functional.mse_loss(autoencoder(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(images)
            count += len(images)
        losses.append(total / count)
        rows.append({"epoch": epoch, "train_loss": losses[-1], "seconds": time.perf_counter() - start})
        say(f"pretrain epoch {epoch}: reconstruction MSE {losses[-1]:.4f}")
    write_history(rows, RunFolder(run_dir).pretrain_history)
    return losses


# --- SimCLR -----------------------------------------------------------------------------------

METHODS = ("simclr",)

# SimCLR's views for medical images: crops and small rotations (zoom/shift/rotate), flips and
# intensity jitter. No colour jitter or grayscale (most of these images are grey already);
# stronger than the supervised "standard" preset because the task is to tell the views of one
# image from all others, which weak augmentation makes trivial (Chen et al. 2020, Fig. 5).
SIMCLR_AUGMENT = {"hflip": 0.5, "rotate": 15.0, "shift": 0.1, "zoom": 0.25, "brightness": 0.3, "contrast": 0.3,
                  "noise": 0.03}


@dataclass(frozen=True)
class PretrainSettings:
    """What a ``medlens pretrain`` run does; stored in its resume state, so ``--resume`` needs nothing else.

    Attributes:
        spec: the dataset spec whose training split is learned from (its validation split scores the probe).
        method: ``simclr``.
        model: the registry model whose encoder is learned (the one ``--init-from`` will fine-tune).
        model_kwargs: its options.
        unlabeled: another spec whose images (all splits, labels ignored) are added to the training images.
        root, size, channels: as for ``medlens train``.
        skip_bad, download, verify, source_options: how the data is read, as the ``data`` config entries
            of the same names (``--skip-bad``, ``--no-download``, ``--no-verify``, the ``csv:`` columns).
        epochs: passes over the images, >= 1.
        batch_size: images per batch (each gives two views; the other 2B - 2 views are its negatives), >= 2.
        lr: AdamW learning rate.
        temperature: of the NT-Xent loss (SimCLR's 0.1-0.5; 0.2 suits small batches).
        projection_dim: output of the projection head.
        seed: seeds weights, batch order and augmentation.
    """

    spec: str
    method: str = "simclr"
    model: str = "resnet_compact"
    model_kwargs: dict = field(default_factory=dict)
    unlabeled: str | None = None
    root: str | None = None
    size: int | None = None
    channels: int | None = None
    skip_bad: bool = False
    download: bool = True
    verify: bool = True
    source_options: dict = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    temperature: float = 0.2
    projection_dim: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method {self.method!r} is not valid; valid: {', '.join(METHODS)}")
        for name, low in (("epochs", 1), ("batch_size", 2), ("projection_dim", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"pretrain {name} must be an integer >= {low}; got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"pretrain {name} must be a number > 0; got {value!r}")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two views ``(B, D)``: each view must pick its partner among the 2B - 1 others.

    Example:
        >>> z = torch.eye(4)
        >>> float(nt_xent(z, z, 0.1)) < float(nt_xent(z, z.roll(1, 0), 0.1))
        True
    """
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)  # (2B, D), unit length
    similarity = z @ z.T / temperature  # (2B, 2B) cosine / t
    similarity.fill_diagonal_(float("-inf"))  # a view is not its own partner
    count = len(z1)
    partner = torch.cat([torch.arange(count, 2 * count), torch.arange(count)])
    return torch.nn.functional.cross_entropy(similarity, partner)


def _pooled(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(B, F)``: the encoder's feature map averaged over space."""
    return model.forward_features(x).flatten(2).mean(2)


def _features(model: torch.nn.Module, images: np.ndarray, normalisation: Normalisation) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = normalise(to_unit(torch.from_numpy(np.ascontiguousarray(images[start:start + 256]))), normalisation)
            out.append(_pooled(model, x).numpy())
    return np.concatenate(out)


def linear_probe(model: torch.nn.Module, source, normalisation: Normalisation) -> tuple[dict, object]:
    """Logistic regression on the frozen pooled features: train split -> validation ``{"auc", "acc"}``.

    Returns the scores and the fitted scikit-learn estimator (its weights become the checkpoint's head).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from medlens.metrics import accuracy_score, roc_auc_score

    task = source.info.task
    train, val = source.splits["train"], source.splits["val"]
    x_train, x_val = _features(model, train.images, normalisation), _features(model, val.images, normalisation)
    # Standardised features: the probe's regularisation then means the same for any encoder.
    probe = LogisticRegression(max_iter=2000)
    estimator = make_pipeline(StandardScaler(), OneVsRestClassifier(probe) if task.is_multilabel else probe)
    estimator.fit(x_train, train.labels)
    scores = estimator.predict_proba(x_val)
    if not task.is_multilabel and scores.shape[1] != source.info.n_classes:
        raise ValueError(f"the linear probe saw {scores.shape[1]} of the {source.info.n_classes} classes in "
                         f"{source.spec}'s training split; every class needs training images")
    return {"auc": float(roc_auc_score(val.labels, scores, task=task)),
            "acc": float(accuracy_score(val.labels, scores, task=task))}, estimator


def _probe_head(model: torch.nn.Module, estimator, task) -> None:
    """Put the probe (scaler + logistic regression) into the model's classifier, so the checkpoint predicts."""
    scaler, probe = estimator[0], estimator[-1]
    if task.is_multilabel:
        coef = np.concatenate([e.coef_ for e in probe.estimators_])
        intercept = np.concatenate([e.intercept_ for e in probe.estimators_])
    else:
        coef, intercept = probe.coef_, probe.intercept_
    if coef.shape[0] == 1:  # binary: logit z for class 1 -> logits (-z/2, z/2), whose softmax is sigmoid(z)
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    # (x - mean) / scale @ coef.T + b  ==  x @ (coef / scale).T + (b - coef @ (mean / scale))
    weight = coef / scaler.scale_
    bias = intercept - coef @ (scaler.mean_ / scaler.scale_)
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def _images(settings: PretrainSettings):
    """The labelled source and the uint8 images SimCLR learns from: its training split plus ``unlabeled``."""
    from medlens.data.source import TensorSplit, resolve
    from medlens.data.spec import parse_spec

    reading = {"skip_bad": settings.skip_bad, "download_missing": settings.download, "verify": settings.verify}
    source = resolve(settings.spec, root=settings.root, size=settings.size, seed=settings.seed,
                     channels=settings.channels, source_options=settings.source_options, **reading)
    images = [np.asarray(source.splits["train"].images)]
    if settings.unlabeled:
        channels = int(images[0].shape[1])
        extra = resolve(settings.unlabeled, root=settings.root, size=source.size, seed=settings.seed,
                        channels=channels if parse_spec(settings.unlabeled).source.decodes_images else None,
                        **reading)
        for split in extra.splits.values():
            if split.images.shape[1:] != images[0].shape[1:]:
                raise ValueError(f"--unlabeled {settings.unlabeled} has images {tuple(split.images.shape[1:])}; "
                                 f"{settings.spec} has {tuple(images[0].shape[1:])} (channels, size must match)")
            images.append(np.asarray(split.images))
    stacked = np.concatenate(images)
    split = TensorSplit(stacked, np.zeros(len(stacked), dtype=np.int64), np.arange(len(stacked)).astype(str))
    return source, split


def pretrain(settings: PretrainSettings | None, out: str | Path, *, resume: bool = False,
             say: Callable[[str], None] = print) -> dict:
    """Learn an encoder by SimCLR into the folder ``out``; returns the linear-probe scores.

    Writes ``pretrain.csv`` (epoch, NT-Xent loss, seconds), ``checkpoints/resume`` after every epoch
    (encoder, projection head, optimizer, settings) and at the end ``checkpoints/best``: a model
    checkpoint of ``settings.model`` whose classifier is the linear probe, for ``--init-from``.

    Args:
        settings: what to do (None with ``resume``: the folder's own).
        out: a new folder, or (``resume=True``) the folder of an interrupted ``pretrain``.
        resume: continue from the last finished epoch (the settings come from the folder).
        say: where progress lines go.

    Returns:
        ``{"probe": {"auc", "acc"}, "probe_at_start": {...}, "checkpoint": path}``: validation scores of
        a logistic regression on the frozen features, after and before pre-training.

    Raises:
        FileExistsError: ``out`` already holds a checkpoint and ``resume`` is False.
        FileNotFoundError: ``resume`` and ``out`` has no pretrain state.
        ValueError: bad settings or data (named in the message).
    """
    from dataclasses import asdict

    from medlens.data.augment import AugmentConfig, channel_stats
    from medlens.engine.checkpoint import ModelCard, load_state, read_sidecar, save_model, save_state
    from medlens.models import create_model, get_model_spec

    folder = RunFolder(out)
    if resume:
        if not folder.resume_state.is_file():
            raise FileNotFoundError(f"{out} has no pretrain state to resume ({folder.resume_state.name} is missing)")
        settings = PretrainSettings(**read_sidecar(folder.resume_state)["settings"])
    elif folder.resume_state.is_file() or folder.best.is_file():
        raise FileExistsError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    source, split = _images(settings)
    train_images = source.splits["train"].images
    spatial_dims = train_images.ndim - 2
    torch.manual_seed(settings.seed)
    model = create_model(settings.model, in_channels=int(train_images.shape[1]), num_classes=source.info.n_classes,
                         spatial_dims=spatial_dims, input_size=source.size, **settings.model_kwargs)
    width = model.num_features
    projector = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(inplace=True),
                                    torch.nn.Linear(width, settings.projection_dim))
    params = [p for name, p in model.named_parameters() if not name.startswith(_head_prefix(model))]
    optimizer = torch.optim.AdamW(params + list(projector.parameters()), lr=settings.lr, weight_decay=1e-4)
    normalisation = channel_stats(train_images)
    rows: list[dict] = []
    start_epoch = 0
    if resume:
        state = load_state(folder.resume_state)
        model.load_state_dict(state["model"])
        projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        rows, start_epoch, at_start = list(state["rows"]), int(state["epoch"]) + 1, dict(state["probe_at_start"])
        say(f"medlens pretrain: resuming {out} at epoch {start_epoch} of {settings.epochs}")
    else:
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        at_start, _ = linear_probe(model, source, normalisation)
        say(f"medlens pretrain: {settings.method} of {settings.model} on {source.spec} ({len(split)} images"
            f"{f', {len(split) - len(train_images)} of them from {settings.unlabeled}' if settings.unlabeled else ''}"
            f"), {settings.epochs} epochs; linear probe of the untrained encoder: val AUC {at_start['auc']:.3f}")
    augment = BatchAugment(AugmentConfig(**SIMCLR_AUGMENT), spatial_dims=spatial_dims)
    loader = BatchLoader(split, batch_size=settings.batch_size, shuffle=True, seed=settings.seed)
    generator = torch.Generator()
    for epoch in range(start_epoch, settings.epochs):
        seed = epoch_seed(settings.seed, epoch, PRETRAIN_RANK)
        torch.manual_seed(seed)
        generator.manual_seed(seed + 1)
        loader.set_epoch(epoch)
        model.train()
        projector.train()
        started, total, count = time.perf_counter(), 0.0, 0
        for images, _ in loader:
            if len(images) < 2:  # a last batch of one has no negatives
                continue
            x = to_unit(images)
            views = [normalise(augment(x, generator=generator), normalisation) for _ in range(2)]
            loss = nt_xent(projector(_pooled(model, views[0])), projector(_pooled(model, views[1])),
                           settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(images)
            count += len(images)
        rows.append({"epoch": epoch, "train_loss": total / max(count, 1), "seconds": time.perf_counter() - started})
        say(f"pretrain epoch {epoch}: NT-Xent {rows[-1]['train_loss']:.4f}")
        write_history(rows, folder.pretrain_history)
        save_state({"model": model.state_dict(), "projector": projector.state_dict(),
                    "optimizer": optimizer.state_dict(), "epoch": epoch, "rows": rows, "probe_at_start": at_start},
                   folder.resume_state, extra_json={"settings": asdict(settings)})
    scores, estimator = linear_probe(model, source, normalisation)
    _probe_head(model, estimator, source.info.task)
    card = ModelCard(
        architecture=settings.model,
        model_kwargs={**get_model_spec(settings.model).default_options, **settings.model_kwargs},
        task=source.info.task.value, class_names=list(source.info.class_names),
        in_channels=int(train_images.shape[1]), spatial_dims=spatial_dims, input_size=source.size,
        normalisation=normalisation.to_dict(),
        dataset={"spec": source.spec, "fingerprint": source.fingerprint, "unlabeled": settings.unlabeled,
                 "images": len(split)},
        config={"pretrain": asdict(settings)},
        metrics={"linear_probe": {"val": scores, "val_untrained_encoder": at_start}},
    )
    save_model(model.eval(), card, folder.best)
    say(f"linear probe on the frozen encoder: val AUC {scores['auc']:.3f} ACC {scores['acc']:.3f} "
        f"(untrained encoder: AUC {at_start['auc']:.3f}) -> {folder.best}; fine-tune it with --init-from {out}")
    return {"probe": scores, "probe_at_start": at_start, "checkpoint": folder.best}


def _head_prefix(model: torch.nn.Module) -> str:
    """``"fc."``: the state-dict prefix of the classifier, which SimCLR does not train."""
    head = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is head) + "."
