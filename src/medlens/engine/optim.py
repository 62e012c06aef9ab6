"""Optimizers and learning-rate schedules by name: two registries, read by the config and the CLI.

Each optimizer and schedule is a builder registered under a name with a one-line description
(``@register_optimizer("adamw", description=...)``), as the model registry does it. The names
are known without torch: this module imports torch only inside the builders, so
``medlens --help`` takes its ``--optimizer`` / ``--schedule`` choices from :func:`list_optimizers`
and :func:`list_schedules` and stays instant, and :class:`~medlens.engine.config.OptimConfig`
checks its names against the same lists.

Builders::

    optimizer_builder(model, loss, optim: OptimConfig) -> torch.optim.Optimizer
    schedule_builder(optimizer, config: RunConfig) -> scheduler or None

A schedule is stepped once per epoch, after validation (``ReduceLROnPlateau`` with the monitored
metric).

Example:
    >>> list_optimizers(), list_schedules()
    (['adam', 'adamw', 'sgd', 'pesg'], ['none', 'multistep', 'cosine', 'plateau'])
    >>> get_optimizer_spec("adamw").description
    'AdamW: Adam with decoupled weight decay'
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Callable

# Neither typing nor dataclasses: the CLI parser imports this module, and the two (with the
# inspect and ast they pull in) were 8 ms of its start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import torch

    from medlens.engine.config import OptimConfig, RunConfig


class OptimSpec(namedtuple("OptimSpec", ["name", "builder", "description"])):
    """One registered optimizer or schedule (immutable).

    Attributes:
        name: registry name, lower case (``"adamw"``, ``"cosine"``).
        builder: the builder (see the module docstring for the two signatures).
        description: one line (what it does, which options of ``optim`` it reads).
    """

    __slots__ = ()


class _Registry:
    """Names -> :class:`OptimSpec` in registration order; ``what`` names the kind in messages."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.specs: dict[str, OptimSpec] = {}

    def register(self, name: str, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        if not name or name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.what} name {name!r} is not valid; use lower case letters, digits and '_'")

        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.specs:
                raise ValueError(f"{self.what} {name!r} is already registered "
                                 f"(by {self.specs[name].builder.__module__})")
            self.specs[name] = OptimSpec(name=name, builder=builder, description=description)
            return builder

        return decorator

    def get(self, name: str) -> OptimSpec:
        if name not in self.specs:
            raise ValueError(f"unknown {self.what} {name!r}; valid: {', '.join(self.specs)}")
        return self.specs[name]


_OPTIMIZERS = _Registry("optimizer")
_SCHEDULES = _Registry("schedule")


def register_optimizer(name: str, *, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers ``builder(model, loss, optim) -> torch.optim.Optimizer`` under ``name``.

    Args:
        name: registry name; lower case letters, digits and ``_``.
        description: one line.

    Returns:
        The decorator; it returns the builder unchanged.

    Raises:
        ValueError: ``name`` is malformed or already registered.

    Example:
        >>> @register_optimizer("doc_sgd", description="plain SGD (doc example)")
        ... def doc_sgd(model, loss, optim):
        ...     import torch
        ...     return torch.optim.SGD(trainable_parameters(model, loss), lr=optim.lr)
        >>> "doc_sgd" in list_optimizers()
        True
        >>> unregister_optimizer("doc_sgd")
    """
    return _OPTIMIZERS.register(name, description)


def register_schedule(name: str, *, description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers ``builder(optimizer, config) -> scheduler or None`` under ``name``.

    Args:
        name: registry name; lower case letters, digits and ``_``.
        description: one line.

    Returns:
        The decorator; it returns the builder unchanged.

    Raises:
        ValueError: ``name`` is malformed or already registered.
    """
    return _SCHEDULES.register(name, description)


def unregister_optimizer(name: str) -> None:
    """Remove the optimizer ``name`` (for tests and plugins). Unknown names raise ``ValueError``."""
    _OPTIMIZERS.specs.pop(get_optimizer_spec(name).name)


def unregister_schedule(name: str) -> None:
    """Remove the schedule ``name`` (for tests and plugins). Unknown names raise ``ValueError``."""
    _SCHEDULES.specs.pop(get_schedule_spec(name).name)


def list_optimizers() -> list[str]:
    """Registered optimizer names, in registration order (the CLI's ``--optimizer`` choices)."""
    return list(_OPTIMIZERS.specs)


def list_schedules() -> list[str]:
    """Registered schedule names, in registration order (the CLI's ``--schedule`` choices)."""
    return list(_SCHEDULES.specs)


def get_optimizer_spec(name: str) -> OptimSpec:
    """The :class:`OptimSpec` of optimizer ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    return _OPTIMIZERS.get(name)


def get_schedule_spec(name: str) -> OptimSpec:
    """The :class:`OptimSpec` of schedule ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    return _SCHEDULES.get(name)


def build_optimizer(model: torch.nn.Module, loss: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer ``optim.optimizer`` over the model's and the loss's parameters.

    Parameters of the loss (AUCM's ``a``, ``b``) are optimised with the model's.

    Raises:
        ValueError: ``optim.optimizer`` is not registered (the valid names listed).
    """
    return get_optimizer_spec(optim.optimizer).builder(model, loss, optim)


def build_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig):
    """The epoch-level schedule ``config.optim.schedule``, or None; stepped once per epoch, after validation.

    Raises:
        ValueError: ``config.optim.schedule`` is not registered (the valid names listed).
    """
    return get_schedule_spec(config.optim.schedule).builder(optimizer, config)


def trainable_parameters(model: torch.nn.Module, loss: torch.nn.Module) -> list:
    """The parameters of ``model`` and ``loss`` that require a gradient, model first."""
    return [p for p in list(model.parameters()) + list(loss.parameters()) if p.requires_grad]


def _groups(model: torch.nn.Module, loss: torch.nn.Module, optim: OptimConfig) -> list:
    """The parameters, in two groups when ``optim.backbone_lr_scale`` gives the backbone its own rate."""
    from medlens.engine.transfer import parameter_groups

    return parameter_groups(model, loss, optim)


# -- optimizers ------------------------------------------------------------------------------


@register_optimizer("adam", description="Adam; weight_decay as an L2 penalty")
def _adam(model, loss, optim):
    import torch

    return torch.optim.Adam(_groups(model, loss, optim), lr=optim.lr, weight_decay=optim.weight_decay)


@register_optimizer("adamw", description="AdamW: Adam with decoupled weight decay")
def _adamw(model, loss, optim):
    import torch

    return torch.optim.AdamW(_groups(model, loss, optim), lr=optim.lr, weight_decay=optim.weight_decay)


@register_optimizer("sgd", description="SGD with momentum; weight_decay as an L2 penalty")
def _sgd(model, loss, optim):
    import torch

    return torch.optim.SGD(_groups(model, loss, optim), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay)


@register_optimizer("pesg", description="PESG, the primal-dual optimizer of the AUC-margin loss (with loss aucm)")
def _pesg(model, loss, optim):
    # PESG also drives the loss's a, b and alpha (its dual variable), in groups of their own.
    from medlens.engine.pesg import PESG, pesg_param_groups

    return PESG(pesg_param_groups(model, loss), lr=optim.lr, momentum=optim.momentum,
                weight_decay=optim.weight_decay, epoch_decay=optim.epoch_decay)


# -- schedules -------------------------------------------------------------------------------


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


@register_schedule("none", description="a constant learning rate")
def _constant(optimizer, config):
    return None


@register_schedule("multistep", description="x gamma at the milestones (fractions of the epochs; MedMNIST: "
                                            "0.1 at 50% and 75%)")
def _multistep(optimizer, config):
    import torch

    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestone_epochs(config),
                                                gamma=config.optim.gamma)


@register_schedule("cosine", description="linear warm-up over warmup_epochs, then half a cosine to 0")
def _cosine(optimizer, config):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(config.optim.warmup_epochs, config.train.epochs))


@register_schedule("plateau", description="x gamma when the monitored metric stalls plateau_patience epochs")
def _plateau(optimizer, config):
    import torch

    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=config.train.monitor_mode,
                                                      factor=config.optim.gamma,
                                                      patience=config.optim.plateau_patience)
