"""The one path from uint8 images to probabilities and decisions.

Every consumer (split predictions, the torch and ONNX serving backends, the report, training's
validation) goes through these three pieces, so they cannot drift apart:

    uint8 images (B, C, *spatial) --InferenceModel.normalise--> float32 (x / 255 - mean) / std
        --model--> logits (B, K) --probabilities--> (B, K) --decide--> labels

:func:`probabilities` is softmax over the K outputs, a sigmoid per label for multi-label tasks,
and a sigmoid for a model with a single output (a binary model whose one logit is the evidence
for class 1, as :mod:`medlens.explain.gradcam` and :mod:`medlens.models.ensemble` read it).
:func:`decide` is :func:`medlens.metrics.predicted_labels`: the decision rule of the official
ACC, and the only one.

Example:
    >>> import torch
    >>> from medlens.data.augment import Normalisation
    >>> from medlens.data.registry import Task
    >>> from medlens.models import create_model
    >>> net = create_model("cnn_small", in_channels=1, num_classes=3, spatial_dims=2, input_size=28)
    >>> inference = InferenceModel(net, Normalisation((0.5,), (0.25,)), task=Task.MULTICLASS, spatial_dims=2).eval()
    >>> scores = inference(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))
    >>> scores.shape, decide(scores, Task.MULTICLASS).shape
    (torch.Size([4, 3]), (4,))
"""

from __future__ import annotations

import numpy as np
import torch

from medlens.data.augment import Normalisation
from medlens.data.registry import Task


def probabilities(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """Probabilities of logits, by task.

    Args:
        logits: ``(B, K)``.
        task: the model's task. Multi-label: one sigmoid per label; otherwise softmax over the
            K outputs, except for a single output (K = 1), which is a binary model's logit for
            class 1 and gets a sigmoid (a softmax over one output would be 1 everywhere).

    Returns:
        ``(B, K)`` in the dtype of ``logits``.

    Example:
        >>> probabilities(torch.zeros(1, 2), Task.BINARY).tolist()
        [[0.5, 0.5]]
        >>> probabilities(torch.zeros(1, 1), Task.BINARY).tolist()
        [[0.5]]
    """
    if task.is_multilabel or logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def decide(scores: np.ndarray | torch.Tensor, task: Task, *, threshold: float = 0.5) -> np.ndarray:
    """The predicted labels of probabilities: :func:`medlens.metrics.predicted_labels`.

    Args:
        scores: probabilities ``(N, K)`` (numpy, or a tensor on any device).
        task: the model's task.
        threshold: binary: class 1 where ``scores[:, -1] > threshold``; multi-label: a label is
            present where its score is ``> threshold``; multi-class and ordinal take the argmax
            and ignore it. Default 0.5; strictly greater, so a score of exactly 0.5 is negative.

    Returns:
        int64 class ids ``(N,)``, or 0/1 ``(N, K)`` for multi-label.

    Raises:
        ValueError: scores that are not a finite ``(N, K)`` array the task allows, or a
            threshold that is not a finite number.

    Example:
        >>> decide(np.array([[0.5, 0.6]]), Task.MULTILABEL).tolist()
        [[0, 1]]
    """
    from medlens.metrics import predicted_labels

    if isinstance(scores, torch.Tensor):
        scores = scores.detach().cpu().numpy()
    return predicted_labels(scores, task=task, threshold=threshold)


class InferenceModel(torch.nn.Module):
    """uint8 images ``(B, C, *spatial)`` -> probabilities ``(B, K)``: normalise, model, activation.

    This is the module the ONNX export traces, the torch serving backend and split predictions
    call, and whose :meth:`normalise` feeds Grad-CAM, so every path normalises with the same
    float32 constants and applies the same activation. Options that change the path from images
    to probabilities are keyword-only constructor arguments applied here (``channels_last``
    today; test-time augmentation belongs in :meth:`logits` and calibration between
    :meth:`logits` and :func:`probabilities`), so each consumer gets them by building this module.

    Args:
        model: logits ``(B, K)`` from normalised float input; kept as :attr:`model` (Grad-CAM
            explains the raw model).
        normalisation: per-channel mean/std on the [0, 1] scale (the model card's).
        task: decides the activation (see :func:`probabilities`).
        spatial_dims: 2 or 3.
        channels_last: feed the model channels-last input (``channels_last_3d`` for 3D);
            default False. Changes speed on some models, not the values.

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3.
    """

    def __init__(self, model: torch.nn.Module, normalisation: Normalisation, *, task: Task, spatial_dims: int,
                 channels_last: bool = False) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.model = model
        self.task = task
        self.spatial_dims = spatial_dims
        self.channels = normalisation.channels
        self.memory_format = None
        if channels_last:
            self.memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        shape = (1, normalisation.channels) + (1,) * spatial_dims
        # (x / 255 - mean) / std as x * scale + offset, the factors made in float64 and rounded
        # once: the constants augment.to_float multiplies by, exported as they are into ONNX.
        mean = torch.tensor(normalisation.mean, dtype=torch.float64)
        std = torch.tensor(normalisation.std, dtype=torch.float64)
        self.register_buffer("scale", (1.0 / (255.0 * std)).float().view(shape))
        self.register_buffer("offset", (-mean / std).float().view(shape))

    @classmethod
    def from_card(cls, model: torch.nn.Module, card, *, channels_last: bool = False) -> InferenceModel:
        """The inference module of a model and its :class:`~medlens.engine.checkpoint.ModelCard`.

        Args:
            model: the model the card describes.
            card: anything with the card's ``normalisation`` (``{"mean", "std"}``), ``task``
                (its value, e.g. ``"binary"``) and ``spatial_dims``.
            channels_last: as in the constructor.

        Raises:
            ValueError: a card with an invalid normalisation or an unknown task.
        """
        return cls(model, Normalisation.from_dict(dict(card.normalisation)), task=Task(card.task),
                   spatial_dims=card.spatial_dims, channels_last=channels_last)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the normalised float32 input of :attr:`model` (what Grad-CAM takes).

        Args:
            images: uint8 ``(B, C, *spatial)`` on the device of this module, C as the normalisation.

        Returns:
            float32 ``(B, C, *spatial)``, channels-last when the module was built so.

        Raises:
            ValueError: not uint8, or not ``(B, C, *spatial)`` with this module's C and dims.
        """
        if images.dtype != torch.uint8 or images.ndim != 2 + self.spatial_dims or images.shape[1] != self.channels:
            raise ValueError(f"images must be uint8 (B, {self.channels}, {', '.join(['S'] * self.spatial_dims)}), "
                             f"got {images.dtype} {tuple(images.shape)}")
        x = images.to(torch.float32).mul_(self.scale).add_(self.offset)  # (B, C, *spatial)
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits ``(B, K)`` of uint8 images."""
        return self.model(self.normalise(images)).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(B, K)`` of uint8 images ``(B, C, *spatial)``."""
        return probabilities(self.logits(images), self.task)
