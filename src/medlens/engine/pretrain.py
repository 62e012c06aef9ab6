"""``--pretrain autoencoder``: train the classifier's encoder to reconstruct the training images.

The autoencoder wraps the classifier's own feature extractor (shared modules, not a copy), so
after pre-training the classifier simply starts from the learned encoder and a fresh head. A
plain loop rather than a second Lightning run: it is a few epochs on one process, runs the
same in every DDP process (same seed, same data), and needs no checkpoints of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

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
