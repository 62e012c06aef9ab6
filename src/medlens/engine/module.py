"""The Lightning module: one classifier, its loss, optimizer, schedule and per-epoch metrics.

Batches arrive as uint8 images; on the training side they go through the fused batched
augmentation, then are normalised with the statistics of the training split (stored in the
model card), all on whole batches. Randomness is drawn from generators reseeded from
``(seed, epoch, rank)`` at every epoch start, so a run resumed from the end of any epoch
continues bit for bit as if it had never stopped.
"""

from __future__ import annotations

import math
import os
import time

import lightning.pytorch as pl
import numpy as np
import torch

from medlens.data.augment import BatchAugment, Normalisation, mixup, normalise, to_unit
from medlens.data.registry import Task
from medlens.engine.config import RunConfig
from medlens.inference import probabilities
from medlens.metrics import accuracy_score, roc_auc_score


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed for one epoch of one process, independent across (seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class NonFiniteLoss(ValueError):
    """Training stopped: the loss of a batch was NaN or infinite."""


class ClassifierModule(pl.LightningModule):
    """Trains ``model`` on uint8 batches.

    Args:
        model: a registered medlens model (logits ``(B, K)``).
        loss: a module from :func:`medlens.engine.losses.create_loss`.
        config: the run config.
        task: the dataset's task.
        normalisation: per-channel mean/std of the training split on the [0, 1] scale.
        spatial_dims: 2 or 3.
        num_classes: outputs of the model (2 for binary tasks).
    """

    def __init__(self, model: torch.nn.Module, loss: torch.nn.Module, *, config: RunConfig, task: Task,
                 normalisation: Normalisation, spatial_dims: int, num_classes: int):
        super().__init__()
        self.model = model
        self.loss = loss
        self.config = config
        self.task = task
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.augment_config = config.augment
        self.augment = BatchAugment(self.augment_config, spatial_dims=spatial_dims)
        self.normalisation = normalisation
        self.memory_format = None
        if config.model.channels_last:
            self.memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        self.generator = torch.Generator()
        self._train_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._epoch_start = 0.0
        self._train_end = 0.0
        self._train_images = 0
        self._loss_sum = torch.zeros(2, dtype=torch.float64)  # (sum of loss x images, images)
        self.scheduler = None
        self._scheduler_state = None
        self.train_epoch_metrics: dict[str, float] = {}
        self.last_epoch_seconds = float("nan")
        self.last_train_images_per_second = float("nan")

    # -- data -------------------------------------------------------------------------------
    def prepare(self, images: torch.Tensor, *, train: bool) -> torch.Tensor:
        """uint8 ``(B, C, ...)`` -> normalised float32; augmented when ``train``."""
        x = to_unit(images)  # (B, C, H, W) or (B, C, D, H, W), [0, 1]
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        if train and self.augment_config.enabled:
            x = self.augment(x, generator=self.generator)
        return normalise(x, self.normalisation)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of a uint8 batch (no augmentation)."""
        return self.model(self.prepare(images, train=False))

    def setup(self, stage: str) -> None:
        # DDP on CPU: share the cores between the processes instead of oversubscribing them.
        if self.trainer.num_devices > 1 and self.device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.trainer.num_devices))

    # -- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        seed = epoch_seed(self.config.train.seed, self.current_epoch, self.global_rank)
        torch.manual_seed(seed)  # dropout and any other torch randomness of this epoch
        self.generator.manual_seed(seed + 1)  # augmentation and mixup
        from medlens.engine.transfer import apply_freeze, uses_freezing

        if uses_freezing(self.config.optim):  # --recipe finetune: the head alone first, BatchNorm as chosen
            apply_freeze(self.model, self.config.optim, self.current_epoch)
        loader = self.trainer.datamodule.train_loader if self.trainer.datamodule else None
        if loader is not None:
            loader.set_epoch(self.current_epoch)
        self._train_outputs.clear()
        self._train_images = 0
        self._loss_sum.zero_()
        self._epoch_start = time.perf_counter()

    def training_step(self, batch, batch_index):
        images, labels = batch
        x = self.prepare(images, train=True)
        target = labels
        mixed = self.config.augment.mixup > 0
        if mixed:
            x, target = mixup(x, labels, alpha=self.config.augment.mixup, num_classes=self.num_classes,
                              multilabel=self.task.is_multilabel, generator=self.generator)
        logits = self.model(x)
        loss = self.loss(logits, target)
        if not torch.isfinite(loss):
            # A ValueError, so the CLI says it in one line; the checkpoints of finished epochs stay.
            raise NonFiniteLoss(f"the training loss became {loss.item()} at epoch {self.current_epoch}, "
                                f"batch {batch_index}: lower --lr or set --grad-clip (the checkpoints of the "
                                "epochs before it are kept)")
        self._train_images += len(images)
        self._loss_sum[0] += float(loss.detach()) * len(images)
        self._loss_sum[1] += len(images)
        if not mixed:
            self._train_outputs.append((labels, probabilities(logits.detach(), self.task)))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_index) -> None:
        self._train_end = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        seconds = self._train_end - self._epoch_start
        self.last_train_images_per_second = self._train_images / seconds if seconds > 0 else float("nan")
        acc = auc = float("nan")
        if self._train_outputs:
            labels = torch.cat([o[0] for o in self._train_outputs])
            scores = torch.cat([o[1] for o in self._train_outputs]).float()
            if self.trainer.world_size > 1:  # every process holds the same number of rows (padded order)
                labels, scores = (self.all_gather(t).flatten(0, 1) for t in (labels, scores))
            labels, scores = labels.cpu().numpy(), scores.cpu().numpy()
            acc = accuracy_score(labels, scores, task=self.task)
            auc = roc_auc_score(labels, scores, task=self.task)
        totals = self._loss_sum.clone()
        if self.trainer.world_size > 1:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        self.train_epoch_metrics = {"train_loss": float(totals[0] / max(1.0, float(totals[1]))),
                                    "train_acc": acc, "train_auc": auc, "lr": self.current_lr()}
        self._train_outputs.clear()
        self._step_schedule()

    # -- validation -------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_outputs.clear()

    def validation_step(self, batch, batch_index):
        images, labels = batch
        logits = self(images)
        self._val_outputs.append((labels, logits.float(), probabilities(logits.float(), self.task)))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        labels = torch.cat([o[0] for o in self._val_outputs])
        logits = torch.cat([o[1] for o in self._val_outputs])
        scores = torch.cat([o[2] for o in self._val_outputs]).cpu().numpy()
        # Every process validates the whole (small) validation split, so no gathering is needed.
        loss = float(self.loss(logits, labels))
        metrics = {
            "val_loss": loss,
            "val_acc": accuracy_score(labels.cpu().numpy(), scores, task=self.task),
            "val_auc": roc_auc_score(labels.cpu().numpy(), scores, task=self.task),
        }
        for name, value in metrics.items():
            # A NaN AUC (one class in a tiny validation split) must not win "best": count it as worst.
            if math.isnan(value):
                value = -math.inf if name != "val_loss" else math.inf
            self.log(name, value, prog_bar=name == self.config.train.monitor, sync_dist=False, rank_zero_only=False)
        self._val_outputs.clear()

    # -- optimisation -----------------------------------------------------------------------
    # The schedule is stepped here, not by Lightning: Lightning steps epoch schedules after the
    # epoch-end callbacks, so a checkpoint written at epoch end would hold the schedule one step
    # behind, and a resumed run would drift from an uninterrupted one.
    def configure_optimizers(self):
        from medlens.engine.optim import build_optimizer, build_scheduler

        optimizer = build_optimizer(self.model, self.loss, self.config.optim)
        self.scheduler = build_scheduler(optimizer, self.config)
        if self.scheduler is not None and self._scheduler_state is not None:
            self.scheduler.load_state_dict(self._scheduler_state)
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.scheduler is not None:
            checkpoint["medlens_scheduler"] = self.scheduler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Called before configure_optimizers when Lightning resumes a run.
        self._scheduler_state = checkpoint.get("medlens_scheduler")

    def current_lr(self) -> float:
        return float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def _step_schedule(self) -> None:
        from medlens.engine.optim import milestone_epochs

        epoch = self.current_epoch
        if self.scheduler is not None:
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                value = self.trainer.callback_metrics.get(self.config.train.monitor)
                if value is not None:
                    self.scheduler.step(float(value))
            else:
                self.scheduler.step()
        optimizer = self.trainer.optimizers[0]
        if hasattr(optimizer, "update_regularizer") and (epoch + 1) in milestone_epochs(self.config):
            # PESG: restart the proximal term from the current weights at each stage boundary.
            optimizer.update_regularizer()
