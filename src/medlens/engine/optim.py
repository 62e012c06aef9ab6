"""Optimizers and learning-rate schedules from an :class:`~medlens.engine.config.OptimConfig`."""

from __future__ import annotations

import math

import torch

from medlens.engine.config import OptimConfig, RunConfig


def build_optimizer(model: torch.nn.Module, loss: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW, SGD, or PESG (for the AUC-margin loss, whose ``a, b, alpha`` it also drives).

    Parameters of the loss (AUCM's ``a``, ``b``) are optimised with the model's.
    """
    if optim.optimizer == "pesg":
        from medlens.engine.pesg import PESG, pesg_param_groups

        return PESG(pesg_param_groups(model, loss), lr=optim.lr, momentum=optim.momentum,
                    weight_decay=optim.weight_decay, epoch_decay=optim.epoch_decay)
    params = [p for p in list(model.parameters()) + list(loss.parameters()) if p.requires_grad]
    if optim.optimizer == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)


def milestone_epochs(config: RunConfig) -> list[int]:
    """Epochs (0-based, counted after they end) at which a multi-step schedule decays."""
    epochs = config.train.epochs
    return sorted({max(1, round(fraction * epochs)) for fraction in config.optim.milestones})


class WarmupCosine:
    """LR factor per epoch: linear warm-up over ``warmup`` epochs, then half a cosine to 0.

    A class rather than a lambda so that ``LambdaLR.state_dict`` can store it (its attributes).
    """

    def __init__(self, warmup: int, epochs: int):
        self.warmup = warmup
        self.epochs = epochs

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        span = max(1, self.epochs - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epoch - self.warmup) / span)))


def build_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig):
    """The epoch-level schedule, or None. Stepped by the module once per epoch, after validation."""
    optim = config.optim
    if optim.schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestone_epochs(config), gamma=optim.gamma)
    if optim.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(optim.warmup_epochs, config.train.epochs))
    if optim.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=config.train.monitor_mode, factor=optim.gamma,
                                                          patience=optim.plateau_patience)
    return None
