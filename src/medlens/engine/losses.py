"""Classification losses by name: cross-entropy, binary cross-entropy, focal and AUC-margin.

Every loss takes the model's logits ``(B, K)`` and a target, and returns a scalar. Targets are
int64 class ids ``(B,)`` for single-label tasks (binary, multi-class, ordinal) and float 0/1
``(B, K)`` for multi-label ones. Under mixup the target may be soft: class probabilities
``(B, K)`` (rows sum to 1) for single-label tasks, values in ``[0, 1]`` for multi-label. A
loss says whether it accepts soft targets in ``supports_soft_targets``; the engine refuses
mixup with one that does not (``aucm``).

Binary tasks have two logits (``K = 2``) and a softmax, like multi-class ones.

Example:
    >>> import torch
    >>> from medlens.data.registry import Task
    >>> loss = create_loss("focal", task=Task.MULTICLASS, num_classes=3, gamma=2.0)
    >>> logits = torch.zeros(4, 3)
    >>> value = loss(logits, torch.tensor([0, 1, 2, 1]))
    >>> value.shape
    torch.Size([])
    >>> compatible_losses(Task.BINARY)
    ['ce', 'focal', 'aucm']
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import monai.losses
import torch
import torch.nn.functional as F
from torch import nn

from medlens.data.registry import Task

__all__ = [
    "LOSSES",
    "AUCMarginLoss",
    "BinaryCrossEntropyLoss",
    "ClassificationLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "compatible_losses",
    "create_loss",
    "default_loss",
    "register_loss",
]

LOSSES: dict[str, type[ClassificationLoss]] = {}
"""Registered losses by name, in registration order: ``ce``, ``bce``, ``focal``, ``aucm``."""

_SINGLE_LABEL_TASKS = frozenset({Task.BINARY, Task.MULTICLASS, Task.ORDINAL})
# Arguments every loss takes; anything else a loss accepts is one of its own options.
_COMMON_ARGUMENTS = frozenset({"self", "task", "num_classes", "class_weights"})


def register_loss(
    name: str, *, tasks: Sequence[Task]
) -> Callable[[type[ClassificationLoss]], type[ClassificationLoss]]:
    """Class decorator: add a :class:`ClassificationLoss` subclass to :data:`LOSSES` under ``name``.

    Args:
        name: registry name, lower case (``"ce"``).
        tasks: the tasks the loss fits.

    Returns:
        The decorator, which returns the class unchanged apart from its ``name`` and ``tasks``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(cls: type[ClassificationLoss]) -> type[ClassificationLoss]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {LOSSES[name].__name__})")
        cls.name = name
        cls.tasks = frozenset(tasks)
        LOSSES[name] = cls
        return cls

    return decorator


def compatible_losses(task: Task) -> list[str]:
    """Names of the losses that fit ``task``, in registration order.

    Args:
        task: a :class:`~medlens.data.registry.Task`.

    Returns:
        Loss names, e.g. ``['bce', 'focal', 'aucm']`` for ``Task.MULTILABEL``.

    Example:
        >>> compatible_losses(Task.MULTICLASS)
        ['ce', 'focal']
    """
    _check_task(task)
    return [name for name, cls in LOSSES.items() if task in cls.tasks]


def default_loss(task: Task) -> str:
    """The loss to use when none is asked for: ``"bce"`` for multi-label tasks, else ``"ce"``.

    Example:
        >>> default_loss(Task.MULTILABEL)
        'bce'
    """
    _check_task(task)
    return "bce" if task.is_multilabel else "ce"


def create_loss(
    name: str,
    *,
    task: Task,
    num_classes: int,
    class_weights: torch.Tensor | None = None,
    **kwargs: Any,
) -> ClassificationLoss:
    """Build the loss registered as ``name`` for ``task``.

    Args:
        name: one of :data:`LOSSES` (``"ce"``, ``"bce"``, ``"focal"``, ``"aucm"``).
        task: the task; the loss must fit it (see :func:`compatible_losses`).
        num_classes: ``K``, the number of logits the model outputs (2 for binary tasks).
        class_weights: optional non-negative weights ``(K,)``; their meaning depends on the
            loss (class weights for ``ce`` and single-label ``focal``, positive weights per
            label for ``bce`` and multi-label ``focal``; ``aucm`` takes none).
        **kwargs: the loss's own options: ``focal`` takes ``gamma``; ``aucm`` takes
            ``margin``, ``imratio`` and ``version``.

    Returns:
        The loss module; call it as ``loss(logits, target)``.

    Raises:
        ValueError: unknown ``name``, a loss that does not fit ``task``, an option the loss
            does not take, or a bad option value.

    Example:
        >>> loss = create_loss("ce", task=Task.BINARY, num_classes=2)
        >>> float(loss(torch.zeros(2, 2), torch.tensor([0, 1])))  # log(2)
        0.6931...
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}")
    cls = LOSSES[name]
    options = cls.option_names()
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        valid = ", ".join(options) if options else "none"
        raise ValueError(f"loss {name!r} takes no option {unknown[0]!r}; its options: {valid}")
    return cls(task=task, num_classes=num_classes, class_weights=class_weights, **kwargs)


def _check_task(task: object) -> None:
    if not isinstance(task, Task):
        valid = ", ".join(f"Task.{t.name}" for t in Task)
        raise ValueError(f"task must be a medlens Task ({valid}), got {task!r}")


class ClassificationLoss(nn.Module):
    """Base class of the registered losses: task checks and target handling.

    Attributes:
        name: registry name (set by :func:`register_loss`).
        tasks: the tasks the loss fits (set by :func:`register_loss`).
        supports_soft_targets: whether ``forward`` accepts soft (mixup) targets.
        task: the task this instance was built for.
        num_classes: ``K``, the number of logits expected.
        class_weights: the ``(K,)`` float32 weights buffer, or ``None``.
    """

    name: str = ""
    tasks: frozenset[Task] = frozenset()
    supports_soft_targets: bool = True
    class_weights: torch.Tensor | None

    def __init__(self, *, task: Task, num_classes: int, class_weights: torch.Tensor | None = None) -> None:
        super().__init__()
        _check_task(task)
        if task not in self.tasks:
            raise ValueError(
                f"loss {self.name!r} does not fit task {task.value}; use one of: {', '.join(compatible_losses(task))}"
            )
        self.task = task
        self.num_classes = _check_num_classes(num_classes, task)
        # A buffer, so ``loss.to(device)`` moves the weights with the loss.
        self.register_buffer("class_weights", _check_class_weights(class_weights, self.num_classes))

    @classmethod
    def option_names(cls) -> list[str]:
        """Names of the keyword options this loss takes beyond task, classes and weights."""
        parameters = inspect.signature(cls.__init__).parameters
        return [n for n, p in parameters.items() if n not in _COMMON_ARGUMENTS and p.kind is p.KEYWORD_ONLY]

    def extra_repr(self) -> str:
        return f"task={self.task.value}, num_classes={self.num_classes}"

    def _check_logits(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"loss {self.name!r} expects logits of shape (B, {self.num_classes}), got {tuple(logits.shape)}"
            )

    def _check_class_ids(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        self._check_logits(logits)
        if target.shape != logits.shape[:1]:
            raise ValueError(
                f"loss {self.name!r}: class ids must have shape ({logits.shape[0]},) for logits "
                f"{tuple(logits.shape)}, got {tuple(target.shape)}"
            )

    def _target_matrix(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target as a float ``(B, K)`` matrix: one-hot rows for class ids, else as given."""
        self._check_logits(logits)
        if not self.task.is_multilabel and not target.is_floating_point():
            self._check_class_ids(logits, target)
            return F.one_hot(target, self.num_classes).to(logits.dtype)  # (B, K)
        if target.shape != logits.shape:
            kind = "0/1 labels (or soft labels in [0, 1])" if self.task.is_multilabel else "soft class probabilities"
            raise ValueError(
                f"loss {self.name!r}: {kind} must have the logits' shape {tuple(logits.shape)}, "
                f"got {tuple(target.shape)} ({target.dtype})"
            )
        return target.to(logits.dtype)


def _check_num_classes(num_classes: object, task: Task) -> int:
    low = 1 if task.is_multilabel else 2
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < low:
        raise ValueError(f"num_classes must be an int >= {low} for task {task.value}, got {num_classes!r}")
    if task is Task.BINARY and num_classes != 2:
        raise ValueError(f"binary tasks have two logits (softmax), so num_classes must be 2, got {num_classes}")
    return num_classes


def _check_class_weights(class_weights: torch.Tensor | Sequence[float] | None, num_classes: int) -> torch.Tensor | None:
    if class_weights is None:
        return None
    weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
    if weights.shape != (num_classes,):
        raise ValueError(f"class_weights must have shape ({num_classes},), got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any() or not (weights > 0).any():
        raise ValueError(f"class_weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
    return weights


@register_loss("ce", tasks=sorted(_SINGLE_LABEL_TASKS, key=lambda t: t.value))
class CrossEntropyLoss(ClassificationLoss):
    """Softmax cross-entropy for single-label tasks, with optional class weights.

    With class weights the value is the weighted mean ``sum_i w_{y_i} * nll_i / sum_i w_{y_i}``,
    as :func:`torch.nn.functional.cross_entropy` computes it for class ids. Soft targets ``t``
    follow the same rule with ``w_{y_i}`` read as ``t_i @ w``, so a one-hot target gives exactly
    the class-id value (torch itself divides by ``B`` for probability targets, which would make a
    mixup run's loss scale differ from a plain run's).

    Args:
        task: ``BINARY``, ``MULTICLASS`` or ``ORDINAL``.
        num_classes: ``K``.
        class_weights: optional ``(K,)`` weights per class.
    """

    def __init__(self, *, task: Task, num_classes: int, class_weights: torch.Tensor | None = None) -> None:
        super().__init__(task=task, num_classes=num_classes, class_weights=class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of a batch.

        Args:
            logits: ``(B, K)`` raw scores.
            target: int64 class ids ``(B,)``, or class probabilities ``(B, K)`` (rows sum to 1).

        Returns:
            The scalar loss.
        """
        if not target.is_floating_point():
            self._check_class_ids(logits, target)  # cross_entropy itself checks the id range
            return F.cross_entropy(logits, target, weight=self.class_weights)
        probabilities = self._target_matrix(logits, target)  # (B, K)
        per_sample = F.cross_entropy(logits, probabilities, weight=self.class_weights, reduction="none")  # (B,)
        if self.class_weights is None:
            return per_sample.mean()
        return per_sample.sum() / (probabilities @ self.class_weights).sum()


@register_loss("bce", tasks=[Task.MULTILABEL])
class BinaryCrossEntropyLoss(ClassificationLoss):
    """Sigmoid binary cross-entropy per label, averaged over ``B * K`` (multi-label tasks).

    Args:
        task: ``MULTILABEL``.
        num_classes: ``K``, the number of labels.
        class_weights: optional ``(K,)`` positive weights per label (``pos_weight``), e.g.
            ``negatives / positives`` to balance rare findings.
    """

    def __init__(self, *, task: Task, num_classes: int, class_weights: torch.Tensor | None = None) -> None:
        super().__init__(task=task, num_classes=num_classes, class_weights=class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of a batch.

        Args:
            logits: ``(B, K)`` raw scores, one per label.
            target: ``(B, K)`` 0/1 labels, or soft labels in ``[0, 1]``.

        Returns:
            The scalar loss.
        """
        labels = self._target_matrix(logits, target)  # (B, K)
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=self.class_weights)


@register_loss("focal", tasks=sorted(Task, key=lambda t: t.value))
class FocalLoss(ClassificationLoss):
    """Focal loss (Lin et al., ICCV 2017): cross-entropy scaled down on easy examples.

    Single-label tasks use the softmax form ``-sum_k t_k (1 - p_k)^gamma log p_k``, computed by
    MONAI's :class:`monai.losses.FocalLoss` (``use_softmax=True``), and reduced like
    :class:`CrossEntropyLoss` (class-weighted mean over samples), so ``gamma=0`` gives exactly
    the cross-entropy, with or without class weights and with soft targets.

    Multi-label tasks use the sigmoid form per label,
    ``-(w_k t (1 - p)^gamma log p + (1 - t) p^gamma log(1 - p))`` averaged over ``B * K``, so
    ``gamma=0`` gives exactly ``bce`` (``w`` is the positive weight). It is written here rather
    than taken from MONAI because MONAI's sigmoid form is not linear in a soft target (its
    modulating factor is ``sigmoid(-x (2t - 1))^gamma``, a constant ``0.5^gamma`` at ``t=0.5``)
    and its per-label ``alpha`` weighs only targets equal to exactly 1, so mixup targets would
    be treated unlike ``bce`` treats them.

    Class weights play the role of Lin et al.'s ``alpha``: per class for single-label tasks,
    per label on the positive term for multi-label ones.

    Args:
        task: any task.
        num_classes: ``K``.
        class_weights: optional ``(K,)`` weights, see above.
        gamma: focusing exponent ``>= 0``; default 2.0 (Lin et al.).
    """

    def __init__(
        self,
        *,
        task: Task,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        gamma: float = 2.0,
    ) -> None:
        super().__init__(task=task, num_classes=num_classes, class_weights=class_weights)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (0 <= gamma < math.inf):
            raise ValueError(f"focal loss gamma must be a finite number >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        # reduction="none": MONAI's "mean" divides by B * K, not by B (or the class weights), so
        # gamma=0 would give CE / K; the reduction below matches CrossEntropyLoss instead.
        self._softmax_focal = monai.losses.FocalLoss(gamma=self.gamma, use_softmax=True, reduction="none")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Focal loss of a batch.

        Args:
            logits: ``(B, K)`` raw scores.
            target: as for ``ce`` on single-label tasks (ids ``(B,)`` or probabilities
                ``(B, K)``), as for ``bce`` on multi-label ones (``(B, K)`` in ``[0, 1]``).

        Returns:
            The scalar loss.
        """
        labels = self._target_matrix(logits, target)  # (B, K)
        if self.task.is_multilabel:
            return self._sigmoid_focal(logits, labels)
        per_class = self._softmax_focal(logits, labels)  # (B, K), zero where the target is 0
        if self.class_weights is None:
            return per_class.sum(dim=1).mean()
        return (per_class * self.class_weights).sum() / (labels @ self.class_weights).sum()

    def _sigmoid_focal(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = F.logsigmoid(logits)  # (B, K) log P(label present)
        log_q = F.logsigmoid(-logits)  # (B, K) log P(label absent)
        # (1 - p)^gamma = exp(gamma * log q): no pow of 0, so gamma=0 has a clean gradient.
        positive = labels * torch.exp(self.gamma * log_q) * log_p
        negative = (1 - labels) * torch.exp(self.gamma * log_p) * log_q
        if self.class_weights is not None:
            positive = positive * self.class_weights
        return -(positive + negative).mean()


@register_loss("aucm", tasks=[Task.BINARY, Task.MULTILABEL])
class AUCMarginLoss(ClassificationLoss):
    """AUC-margin loss (Yuan et al., ICCV 2021), built on MONAI's :class:`monai.losses.AUCMLoss`.

    AUCM is a min-max objective: its ``a`` and ``b`` (mean scores the positives and negatives
    are pulled to) are minimised with the model, its ``alpha`` (the margin's multiplier,
    ``>= 0``) is maximised. Train it with :class:`medlens.engine.pesg.PESG`, which takes
    :meth:`primal_parameters` into its descent group and :meth:`dual_parameters` into its
    ascent group. AUCM needs hard 0/1 labels (``supports_soft_targets = False``: no mixup).

    Scores are probabilities in ``[0, 1]``, as AUCM's margin assumes:

    - binary: ``softmax(logits)[:, 1]``, which equals ``sigmoid(logits[:, 1] - logits[:, 0])``;
      one AUCM.
    - multi-label: ``sigmoid(logits[:, k])`` per label; one AUCM per label, each with its own
      ``a``, ``b``, ``alpha`` and ``imratio``, averaged over labels.

    Args:
        task: ``BINARY`` or ``MULTILABEL``.
        num_classes: ``K`` (2 for binary).
        class_weights: must be ``None``: AUCM balances the classes itself through ``imratio``.
        margin: the margin ``m > 0`` between positive and negative mean scores; default 1.0.
        imratio: fraction of positives in the *training* labels, in ``(0, 1)``, which the caller
            computes once (binary: ``mean(labels == 1)``; multi-label: one value per label, or one
            value for all). ``None`` estimates it from each mini-batch, which is noisy. Used by
            ``version="v1"`` only.
        version: ``"v1"`` (the paper's objective, weighted by ``imratio``) or ``"v2"``
            (class-conditional means, no ``imratio``); default ``"v1"``.

    Raises:
        ValueError: bad ``margin``, ``imratio`` or ``version``, or ``class_weights`` given.
    """

    supports_soft_targets = False

    def __init__(
        self,
        *,
        task: Task,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        margin: float = 1.0,
        imratio: float | Sequence[float] | None = None,
        version: str = "v1",
    ) -> None:
        if class_weights is not None:
            raise ValueError(
                "loss 'aucm' takes no class_weights (it balances classes through imratio); got "
                f"{torch.as_tensor(class_weights).tolist()}"
            )
        super().__init__(task=task, num_classes=num_classes)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (0 < margin < math.inf):
            raise ValueError(f"aucm margin must be a finite number > 0, got {margin!r}")
        if version not in ("v1", "v2"):
            raise ValueError(f"aucm version must be one of: v1, v2; got {version!r}")
        n_heads = 1 if task is Task.BINARY else num_classes
        imratios = _check_imratio(imratio, n_heads)
        self.margin = float(margin)
        self.version = version
        # One MONAI AUCM per label: each holds its own scalar a, b, alpha (nn.Parameters).
        self.heads = nn.ModuleList(
            monai.losses.AUCMLoss(margin=self.margin, imratio=ratio, version=version) for ratio in imratios
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, version={self.version!r}"

    def primal_parameters(self) -> Iterator[nn.Parameter]:
        """``a`` and ``b`` of every head (scalars), minimised with the model's weights."""
        for head in self.heads:
            yield head.a
            yield head.b

    def dual_parameters(self) -> Iterator[nn.Parameter]:
        """``alpha`` of every head (scalar, kept ``>= 0`` by PESG), maximised."""
        for head in self.heads:
            yield head.alpha

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """AUC-margin loss of a batch, averaged over labels.

        Args:
            logits: ``(B, K)`` raw scores.
            target: int64 class ids ``(B,)`` (binary) or 0/1 labels ``(B, K)`` (multi-label).

        Returns:
            The scalar loss.

        Raises:
            ValueError: soft targets (mixup), or shapes that do not match.
        """
        self._check_logits(logits)
        if self.task is Task.BINARY:
            if target.is_floating_point():
                raise ValueError(
                    f"loss 'aucm' needs class ids (B,) int64, got soft targets {tuple(target.shape)} "
                    f"{target.dtype}; aucm does not support mixup"
                )
            labels = self._target_matrix(logits, target)[:, 1:]  # (B, 1): 1 for the positive class
            scores = logits.softmax(dim=1)[:, 1:]  # (B, 1)
        else:
            labels = self._target_matrix(logits, target)  # (B, K)
            if not ((labels == 0) | (labels == 1)).all():
                raise ValueError("loss 'aucm' needs 0/1 labels, got soft values; aucm does not support mixup")
            scores = torch.sigmoid(logits)  # (B, K)
        per_head = [head(scores[:, k : k + 1], labels[:, k : k + 1]) for k, head in enumerate(self.heads)]
        return torch.stack(per_head).mean()


def _check_imratio(imratio: float | Sequence[float] | torch.Tensor | None, n_heads: int) -> list[float | None]:
    if imratio is None:
        return [None] * n_heads
    expected = f"aucm imratio must be one number or {n_heads} numbers (one per label)"
    try:
        values = torch.as_tensor(imratio, dtype=torch.float64).flatten().tolist()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{expected}, got {imratio!r}") from None
    if len(values) == 1:
        values = values * n_heads  # one fraction shared by every label
    if len(values) != n_heads:
        raise ValueError(f"{expected}, got {len(values)}")
    for value in values:
        if not (0 < value < 1):
            raise ValueError(f"aucm imratio (fraction of positives) must be in (0, 1), got {value!r}")
    return values
