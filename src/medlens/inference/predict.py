"""Predictions of a model on a split: the one object every metric, plot and report reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medlens.data.registry import Task
from medlens.inference.model import InferenceModel


@dataclass(frozen=True)
class Predictions:
    """Scores of one model on one split.

    Attributes:
        y_true: class ids ``(N,)``, or 0/1 ``(N, K)`` for multi-label tasks.
        y_score: probabilities ``(N, K)`` (see :func:`~medlens.inference.model.probabilities`).
        ids: image ids ``(N,)`` (file names for folders, row numbers for MedMNIST).
        task: the task the scores answer.
    """

    y_true: np.ndarray
    y_score: np.ndarray
    ids: np.ndarray
    task: Task


@torch.no_grad()
def predict(model: torch.nn.Module, split, *, task: Task, mean, std, batch_size: int = 256,
            channels_last: bool = False) -> Predictions:
    """Run ``model`` over a :class:`~medlens.data.source.TensorSplit` in batches.

    The batches go through :class:`~medlens.inference.model.InferenceModel`, the path every
    other consumer (serving, ONNX, the report) takes too.

    Args:
        model: logits ``(B, K)`` from normalised float input; put in eval mode for the call and
            given back in the mode it had.
        split: the split (uint8 images).
        task: decides the activation (see :func:`~medlens.inference.model.probabilities`).
        mean, std: per-channel normalisation on the [0, 1] scale (from the model card).
        batch_size: images per forward pass.
        channels_last: feed batches in channels-last layout (2D and 3D).

    Returns:
        :class:`Predictions` in the split's order.
    """
    from medlens.data.augment import Normalisation
    from medlens.data.loader import BatchLoader

    was_training = model.training
    device = next(model.parameters()).device
    inference = InferenceModel(model, Normalisation(mean=tuple(mean), std=tuple(std)), task=task,
                               spatial_dims=split.images.ndim - 2, channels_last=channels_last).to(device).eval()
    scores = [inference(images.to(device)) for images, _ in BatchLoader(split, batch_size=batch_size)]
    model.train(was_training)
    n_out = scores[0].shape[1] if scores else 0
    y_score = torch.cat(scores).cpu().numpy() if scores else np.zeros((0, n_out), np.float32)
    return Predictions(y_true=np.asarray(split.labels), y_score=y_score, ids=np.asarray(split.ids), task=task)
