"""PESG: the primal-dual optimizer for the AUC-margin loss (``aucm``).

Proximal Epoch Stochastic Gradient, from Yuan, Yan, Sonka and Yang, "Large-scale Robust Deep
AUC Maximization: A New Surrogate Loss and Empirical Studies on Medical Image Classification",
ICCV 2021 (https://arxiv.org/abs/2012.03173). Neither MONAI nor anything installable here has
it (MONAI 1.6 ships the loss, :class:`monai.losses.AUCMLoss`, but no optimizer), so it is written
here, from the paper and the update rules LibAUC documents, as a :class:`torch.optim.Optimizer`:
``state_dict()`` / ``load_state_dict()`` carry the learning rates, momentum buffers and
reference points, so a training run resumes exactly.

AUCM is ``min over (w, a, b), max over alpha >= 0``. Per step, with learning rate ``eta``:

- primal variables ``v`` (model weights, ``a``, ``b``): a proximal descent step towards the
  stage's reference point ``v_ref``,
  ``d = grad_v + epoch_decay * (v - v_ref) + weight_decay * v``, ``d`` passed through heavy-ball
  momentum (``buf = momentum * buf + d``, as :class:`torch.optim.SGD`), then ``v -= eta * d``;
- dual variable ``alpha``: a projected ascent step, ``alpha = max(0, alpha + eta * grad_alpha)``.

At chosen epochs (a "stage" boundary) the engine calls :meth:`PESG.update_regularizer`, which
moves ``v_ref`` to the current weights and optionally divides the learning rates by
``decay_factor``. The paper's analysis restarts each stage from an averaged iterate; like
LibAUC's practice, this uses the last iterate.

Example:
    >>> import torch
    >>> from medlens.data.registry import Task
    >>> from medlens.engine.losses import create_loss
    >>> model = torch.nn.Linear(4, 2)
    >>> loss_fn = create_loss("aucm", task=Task.BINARY, num_classes=2, imratio=0.25)
    >>> optimizer = PESG(pesg_param_groups(model, loss_fn), lr=0.1)
    >>> x, y = torch.randn(8, 4), torch.tensor([0, 0, 0, 1, 0, 0, 1, 0])
    >>> loss = loss_fn(model(x), y)
    >>> loss.backward()
    >>> _ = optimizer.step()
    >>> optimizer.update_regularizer(decay_factor=10)  # at a stage boundary
    >>> optimizer.param_groups[0]["lr"]
    0.01
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["PESG", "pesg_param_groups"]

# Keys a parameter group may carry; anything else is a typo, not a silently ignored setting.
_GROUP_KEYS = frozenset({"params", "param_names", "lr", "epoch_decay", "weight_decay", "momentum", "dual"})


def pesg_param_groups(model: nn.Module, loss: nn.Module) -> list[dict[str, Any]]:
    """The two parameter groups PESG needs for ``model`` trained with an ``aucm`` loss.

    Args:
        model: the network; all of its parameters go into the primal (descent) group.
        loss: a loss with ``primal_parameters()`` (``a``, ``b``: descent, with the model) and
            ``dual_parameters()`` (``alpha``: ascent), i.e.
            :class:`medlens.engine.losses.AUCMarginLoss`.

    Returns:
        ``[{"params": [model weights..., a, b...]}, {"params": [alpha...], "dual": True}]``.

    Raises:
        ValueError: ``loss`` has no primal/dual parameters (it is not a min-max loss).
    """
    if not (callable(getattr(loss, "primal_parameters", None)) and callable(getattr(loss, "dual_parameters", None))):
        raise ValueError(
            f"PESG needs a min-max loss with primal_parameters() and dual_parameters() (loss 'aucm'), "
            f"got {type(loss).__name__}"
        )
    return [
        {"params": [*model.parameters(), *loss.primal_parameters()]},
        {"params": list(loss.dual_parameters()), "dual": True},
    ]


class PESG(torch.optim.Optimizer):
    """Proximal Epoch Stochastic Gradient: descent on primal groups, projected ascent on dual ones.

    Args:
        params: parameters or parameter groups, as for any torch optimizer. A group with
            ``"dual": True`` holds dual variables (AUCM's ``alpha``): they take a plain gradient
            ascent step with the group's ``lr`` and are clamped to ``>= 0``; ``epoch_decay``,
            ``weight_decay`` and ``momentum`` do not apply to them. Every other group is primal.
            :func:`pesg_param_groups` builds the usual two groups.
        lr: learning rate ``eta > 0`` of both primal and dual steps; default 0.1.
        epoch_decay: ``>= 0``, weight of the proximal term ``(v - v_ref)`` pulling the primal
            variables to the stage's reference point (LibAUC's ``1 / gamma``); default 2e-3.
        weight_decay: ``>= 0``, L2 penalty on the primal variables; default 1e-5.
        momentum: heavy-ball momentum in ``[0, 1)`` on the primal step; default 0.9.

    Raises:
        ValueError: a hyperparameter out of range (the message names it and its value), a
            non-bool ``dual``, or an unknown key in a parameter group.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        *,
        epoch_decay: float = 2e-3,
        weight_decay: float = 1e-5,
        momentum: float = 0.9,
    ) -> None:
        defaults = {"lr": lr, "epoch_decay": epoch_decay, "weight_decay": weight_decay, "momentum": momentum}
        _check_hyperparameters(defaults)
        super().__init__(params, {**defaults, "dual": False})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (see the class docstring); primal parameters get their reference point now.

        Raises:
            ValueError: unknown keys or out-of-range hyperparameters in ``param_group``.
        """
        unknown = sorted(set(param_group) - _GROUP_KEYS)
        if unknown:
            raise ValueError(
                f"PESG parameter group has unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_GROUP_KEYS))}"
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]  # now with the defaults filled in
        try:
            _check_hyperparameters(group)
        except ValueError:
            self.param_groups.pop()
            raise
        if not group["dual"]:
            for param in group["params"]:
                # v_ref starts at the initial weights (the paper's v_0 = v_ref).
                self.state[param]["reference"] = param.detach().clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One PESG step on every parameter that has a gradient.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            if group["dual"]:
                for param in group["params"]:
                    if param.grad is not None:
                        # Ascent (alpha maximises the objective), then projection onto alpha >= 0.
                        param.add_(param.grad, alpha=lr).clamp_(min=0.0)
                continue
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise ValueError("PESG does not support sparse gradients")
                state = self.state[param]
                direction = param.grad
                if group["epoch_decay"] != 0:
                    direction = direction.add(param - state["reference"], alpha=group["epoch_decay"])
                if group["weight_decay"] != 0:
                    direction = direction.add(param, alpha=group["weight_decay"])
                if group["momentum"] != 0:
                    buffer = state.get("momentum_buffer")
                    if buffer is None:
                        buffer = state["momentum_buffer"] = direction.detach().clone()
                    else:
                        buffer.mul_(group["momentum"]).add_(direction)
                    direction = buffer
                param.add_(direction, alpha=-lr)
        return loss

    @torch.no_grad()
    def update_regularizer(self, decay_factor: float | None = None) -> None:
        """Start a new stage: the reference point becomes the current primal weights.

        Args:
            decay_factor: if given, every group's learning rate is divided by it (``> 0``;
                typically 3 to 10). ``None`` (default) keeps the learning rates.

        Raises:
            ValueError: ``decay_factor`` is not a finite number > 0.
        """
        if decay_factor is not None:
            if isinstance(decay_factor, bool) or not isinstance(decay_factor, (int, float)) or not (
                0 < decay_factor < math.inf
            ):
                raise ValueError(f"PESG decay_factor must be a finite number > 0 (or None), got {decay_factor!r}")
            for group in self.param_groups:
                group["lr"] = group["lr"] / decay_factor
        for group in self.param_groups:
            if group["dual"]:
                continue
            for param in group["params"]:
                self.state[param]["reference"] = param.detach().clone()


def _check_hyperparameters(group: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first out-of-range hyperparameter of ``group``."""
    ranges = {
        "lr": ("> 0", lambda v: v > 0),
        "epoch_decay": (">= 0", lambda v: v >= 0),
        "weight_decay": (">= 0", lambda v: v >= 0),
        "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    }
    for key, (rule, ok) in ranges.items():
        if key not in group:
            continue
        value = group[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            raise ValueError(f"PESG {key} must be a finite number {rule}, got {value!r}")
    if "dual" in group and not isinstance(group["dual"], bool):
        raise ValueError(f"PESG parameter group 'dual' must be True or False, got {group['dual']!r}")
