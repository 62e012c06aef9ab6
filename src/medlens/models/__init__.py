"""Models: a registry of 2D / 3D classifiers, one family per file, and autoencoder pretraining.

Importing this package imports torch and MONAI and registers every family (``cnn``, ``resnet``,
``densenet``, ``compact``); only training, evaluation and serving code imports it.

Every model from :func:`create_model` takes a normalised float input ``(B, C, H, W)`` or
``(B, C, D, H, W)`` and has ``forward(x) -> (B, K)`` logits, ``forward_features(x) -> (B, F, *s)``,
``forward_head(features) -> (B, K)``, ``get_classifier()`` (the final ``nn.Linear``, whose bias
is the logits' bias; an ensemble refuses, its members each have one),
``reset_classifier(num_classes)``, ``num_features`` (F) and ``gradcam_layer`` (a dotted name for
``model.get_submodule``).

Example:
    >>> import torch
    >>> from medlens.models import create_model, list_models
    >>> list_models(spatial_dims=3)
    ['densenet121', 'ensemble', 'resnet18', 'resnet50', 'resnet_compact']
    >>> model = create_model("resnet_compact", in_channels=3, num_classes=5, input_size=28)
    >>> model(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 5])
"""

from medlens.models import cnn, compact, densenet, efficientnet, ensemble, resnet  # noqa: F401  (registers the families)
from medlens.models.autoencoder import Autoencoder
from medlens.models.registry import ModelSpec, create_model, get_model_spec, list_models, register_model

__all__ = ["Autoencoder", "ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]
