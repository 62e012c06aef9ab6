"""Model registry: ``@register_model`` on a builder, ``create_model(name, ...)`` to build one.

The design follows timm's ``_registry.py``: each model family (one file per family) registers
builder functions under a name, with the spatial dimensions it supports and a one-line
description. A builder has the signature::

    builder(*, in_channels: int, num_classes: int, spatial_dims: int, input_size: int, **options)
        -> nn.Module

where ``options`` are the family's own keyword arguments with defaults (``stem="auto"``,
``dropout=0.0``, ...). :func:`create_model` checks the name, the spatial dimensions and the
option names against the builder's signature before calling it, so every mistake surfaces as a
``ValueError`` that names the bad value and the valid ones.

Every registered model follows one contract (timm's): ``forward(x) -> logits (B, K)``,
``forward_features(x) -> (B, F, *spatial)``, ``forward_head(features) -> (B, K)``,
``get_classifier()`` (the final layer, whose bias is the logits' bias; timm's name; a model
without a single one, the ensemble, raises ``ValueError``),
``reset_classifier(num_classes)``, attributes ``num_features`` (F) and ``gradcam_layer`` (a dotted
module name for ``model.get_submodule``).

Example:
    >>> import torch
    >>> from medlens.models import create_model, list_models
    >>> "resnet18" in list_models("res*", spatial_dims=3)
    True
    >>> model = create_model("resnet18", in_channels=1, num_classes=2, input_size=28)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import fnmatch
import inspect
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

# The arguments create_model always passes; everything else a builder takes is a model option.
_COMMON_ARGS = ("in_channels", "num_classes", "spatial_dims", "input_size")
_VALID_SPATIAL_DIMS = (2, 3)


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one model.

    Attributes:
        name: registry name, lower case (``"resnet18"``).
        builder: ``builder(*, in_channels, num_classes, spatial_dims, input_size, **options)``
            returning the ``nn.Module``.
        spatial_dims: spatial dimensions the model supports: ``(2,)``, ``(3,)`` or ``(2, 3)``.
        description: one line for ``medlens models``.
        channels_last: whether training should put the model and its inputs in the
            channels-last memory format: ``torch.channels_last`` for 2D,
            ``torch.channels_last_3d`` for 3D. Measured on the 2-core CPU (training step,
            28 px): 1.12x (resnet18) to 1.48x (cnn_covid) faster in 2D, 1.10x (resnet18) and
            1.32x (resnet_compact) in 3D; True for every model registered here.
    """

    name: str
    builder: Callable[..., nn.Module]
    spatial_dims: tuple[int, ...]
    description: str
    channels_last: bool

    @property
    def default_options(self) -> dict[str, Any]:
        """The model's own keyword options and their defaults, e.g. ``{"stem": "auto", "dropout": 0.0}``."""
        return {
            name: param.default
            for name, param in inspect.signature(self.builder).parameters.items()
            if name not in _COMMON_ARGS and param.kind is inspect.Parameter.KEYWORD_ONLY
        }


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str, *, spatial_dims: tuple[int, ...], description: str, channels_last: bool = True
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model builder under ``name``.

    Args:
        name: registry name; lower case letters, digits and ``_``.
        spatial_dims: spatial dimensions the builder supports, a non-empty subset of ``(2, 3)``.
        description: one line shown by ``medlens models``.
        channels_last: whether training should use the channels-last memory format (default
            ``True``; see :class:`ModelSpec`).

    Returns:
        The decorator; it returns the builder unchanged.

    Raises:
        ValueError: ``name`` is already registered or malformed, ``spatial_dims`` is not a
            non-empty subset of ``(2, 3)``, or the builder does not take the four common
            keyword arguments (``in_channels, num_classes, spatial_dims, input_size``).

    Example:
        >>> from torch import nn
        >>> @register_model("doc_linear", spatial_dims=(2,), description="doc example")
        ... def doc_linear(*, in_channels, num_classes, spatial_dims, input_size):
        ...     return nn.Linear(in_channels * input_size**2, num_classes)
        >>> get_model_spec("doc_linear").spatial_dims
        (2,)
        >>> unregister_model("doc_linear")
    """
    if not name or name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"model name {name!r} is not valid; use lower case letters, digits and '_'")
    dims = tuple(sorted(set(spatial_dims)))
    if not dims or any(d not in _VALID_SPATIAL_DIMS for d in dims):
        raise ValueError(f"spatial_dims {spatial_dims!r} for model {name!r} is not valid; use (2,), (3,) or (2, 3)")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        params = inspect.signature(builder).parameters
        missing = [arg for arg in _COMMON_ARGS if arg not in params]
        if missing:
            raise ValueError(
                f"builder of model {name!r} must take {', '.join(_COMMON_ARGS)}; missing: {', '.join(missing)}"
            )
        _REGISTRY[name] = ModelSpec(
            name=name, builder=builder, spatial_dims=dims, description=description, channels_last=channels_last
        )
        return builder

    return decorator


def unregister_model(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plugins that register temporary models).

    Raises:
        ValueError: ``name`` is not registered; the message lists the valid names.
    """
    _REGISTRY.pop(get_model_spec(name).name)


def list_models(pattern: str = "*", *, spatial_dims: int | None = None) -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted.

    Args:
        pattern: ``fnmatch`` pattern, e.g. ``"resnet*"``; default ``"*"`` (all).
        spatial_dims: keep only models supporting this many spatial dims (2 or 3); default
            ``None`` keeps all.

    Returns:
        Sorted list of names.

    Raises:
        ValueError: ``spatial_dims`` is not ``None``, 2 or 3.

    Example:
        >>> list_models("cnn_*")
        ['cnn_covid', 'cnn_small']
    """
    if spatial_dims is not None and spatial_dims not in _VALID_SPATIAL_DIMS:
        raise ValueError(f"spatial_dims {spatial_dims!r} is not valid; valid: None, 2, 3")
    return sorted(
        name
        for name, spec in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern.lower()) and (spatial_dims is None or spatial_dims in spec.spatial_dims)
    )


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered under ``name`` (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the valid ones.

    Example:
        >>> get_model_spec("densenet121").spatial_dims
        (2, 3)
    """
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def create_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    input_size: int = 28,
    **options: Any,
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: registry name (see :func:`list_models`), case-insensitive.
        in_channels: image channels C of the input ``(B, C, H, W)`` / ``(B, C, D, H, W)``, >= 1.
        num_classes: output width K of the logits ``(B, K)``, >= 1.
        spatial_dims: 2 for images, 3 for volumes; must be one the model supports. Default 2.
        input_size: edge length of the (square / cubic) input in pixels, >= 8. Models with a
            flatten layer (``cnn_*``) size their dense layer from it, and ``stem="auto"`` picks
            the stem from it. Default 28.
        **options: the model's own options (see ``get_model_spec(name).default_options``), e.g.
            ``stem="small"``, ``dropout=0.2``, ``width=32``.

    Returns:
        The model, in training mode, float32, on the CPU.

    Raises:
        ValueError: unknown name, unsupported ``spatial_dims``, an option the model does not
            take, or a bad value (each message names the bad value and the valid ones).

    Example:
        >>> import torch
        >>> model = create_model("resnet_compact", in_channels=1, num_classes=3, spatial_dims=3, width=8)
        >>> model(torch.zeros(2, 1, 28, 28, 28)).shape
        torch.Size([2, 3])
    """
    spec = get_model_spec(name)
    if spatial_dims not in _VALID_SPATIAL_DIMS:
        raise ValueError(f"spatial_dims {spatial_dims!r} is not valid; valid: 2 (images), 3 (volumes)")
    if spatial_dims not in spec.spatial_dims:
        supported = " and ".join(f"{d}D" for d in spec.spatial_dims)
        others = ", ".join(list_models(spatial_dims=spatial_dims))
        raise ValueError(
            f"model {spec.name!r} is {supported} only; the data is {spatial_dims}D. {spatial_dims}D models: {others}"
        )
    common = (("in_channels", in_channels, 1), ("num_classes", num_classes, 1), ("input_size", input_size, 8))
    for arg, value, minimum in common:
        # numbers.Integral also admits numpy integers (counts read from label arrays).
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{arg}={value!r} is not valid for model {spec.name!r}; expected an integer >= {minimum}")
    valid_options = spec.default_options
    unknown = sorted(set(options) - set(valid_options))
    if unknown:
        valid = ", ".join(f"{key}={default!r}" for key, default in valid_options.items()) or "none"
        raise ValueError(
            f"model {spec.name!r} has no option {', '.join(unknown)}; valid options (with defaults): {valid}"
        )
    return spec.builder(
        in_channels=int(in_channels),
        num_classes=int(num_classes),
        spatial_dims=spatial_dims,
        input_size=int(input_size),
        **options,
    )
