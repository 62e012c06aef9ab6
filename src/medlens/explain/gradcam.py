"""Grad-CAM heatmaps for 2D and 3D classifiers, built on MONAI's ``GradCAM``.

Grad-CAM (Selvaraju et al., 2017) weights the activations of one convolutional layer by the
spatially averaged gradient of a class score and keeps the positive part: where in the image the
evidence *for* that class lies. The layer is a dotted module name; every medlens model names its
own in ``model.gradcam_layer`` (the last convolutional stage).

Two things differ from calling ``monai.visualize.GradCAM`` directly, on purpose:

* MONAI's default post-processing maps (min, max) to (1, 0), which inverts the map; here each
  heatmap is scaled to [0, 1] with its maximum at 1 (an all-zero map stays 0).
* MONAI scores a batch with ``logits[:, class_idx]``, which for per-sample predicted classes mixes
  the scores of every sample's class; here each sample is scored on its own class.

MONAI registers hooks on the model it is given and never removes them, so the map is computed
on a copy: the caller's model is left exactly as it was.

A model may name several layers in ``model.gradcam_layers`` (an ensemble: one per member). Its
map is then the sum of the raw (unscaled) maps of those layers, each the gradient of the model's
combined score through that member, scaled to [0, 1] once: the evidence of every member, each in
proportion to its weight in the output.

Example:
    >>> import torch
    >>> from medlens.models import create_model
    >>> model = create_model("cnn_small", in_channels=1, num_classes=2, input_size=28).eval()
    >>> heat = gradcam(model, torch.rand(2, 1, 28, 28))
    >>> heat.shape, bool(heat.min() >= 0 and heat.max() <= 1)
    ((2, 28, 28), True)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

METHODS = ("gradcam", "gradcampp")


def _scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Scale every map of ``(B, 1, *spatial)`` to [0, 1] by its own min and max (flat maps -> 0)."""
    flat = maps.detach().flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    # A flat map (no positive evidence anywhere) has no "where": report zeros, not NaN.
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.view_as(maps)


def _per_sample_hooks(model: torch.nn.Module, layer: str, ndim: int):
    """MONAI's ``ModelWithHooks`` on ``model`` that scores each sample on its own class.

    The score comes back shaped ``(B, 1, ...)`` with ``ndim`` axes in all, so Grad-CAM++ (which
    multiplies ``exp(score)`` into the ``(B, C, *spatial)`` gradients) broadcasts per sample.
    """
    from monai.visualize.class_activation_maps import ModelWithHooks

    class PerSampleScore(ModelWithHooks):
        def class_score(self, logits: torch.Tensor, class_idx) -> torch.Tensor:
            index = torch.as_tensor(class_idx, device=logits.device, dtype=torch.long).reshape(-1)
            index = index.expand(logits.shape[0]) if index.numel() == 1 else index
            # A binary model with one output (a sigmoid logit) has two classes: the logit is the
            # evidence for class 1, its negation the evidence for class 0.
            single = logits.shape[1] == 1
            n_classes = 2 if single else logits.shape[1]
            if int(index.min()) < 0 or int(index.max()) >= n_classes:
                raise ValueError(f"class_index {index.tolist()} out of range for {n_classes} classes "
                                 f"(0..{n_classes - 1})")
            if single:
                score = torch.where(index == 1, logits[:, 0], -logits[:, 0])  # (B,)
            else:
                score = logits.gather(1, index.view(-1, 1))[:, 0]  # (B,)
            return score.view(-1, *([1] * (ndim - 1)))

    return PerSampleScore(model, layer, register_forward=True, register_backward=True)


def gradcam(
    model: torch.nn.Module,
    x: torch.Tensor,
    *,
    layer: str | None = None,
    class_index: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    method: str = "gradcam",
    scale: bool = True,
) -> np.ndarray:
    """Grad-CAM heatmaps of ``model`` for the images ``x``.

    Args:
        model: a classifier returning logits ``(B, K)``; left unchanged (the map is computed on a
            copy, in eval mode).
        x: normalised float input ``(B, C, H, W)`` or ``(B, C, D, H, W)``, as the model takes it.
        layer: dotted name of the convolutional layer to explain (``model.get_submodule`` syntax);
            default: ``model.gradcam_layers`` (summed) if the model names several, else ``model.gradcam_layer``.
        class_index: the class to explain: one int for every image, one int per image ``(B,)``,
            or ``None`` for each image's predicted class (argmax of the logits; for a binary
            model with a single output, class 1 where the logit is positive).
        method: ``gradcam`` (default) or ``gradcampp`` (Grad-CAM++, Chattopadhay et al. 2018:
            pixel-wise weighted gradients, often sharper when several regions carry evidence).
        scale: scale each map to [0, 1] (default); False returns the raw maps (for summing).

    Returns:
        float32 ``(B, *spatial)``: one heatmap per image at the input's spatial size, each scaled
        to [0, 1] (1 = strongest evidence for the class; all zeros when there is none).

    Raises:
        ValueError: ``x`` is not a floating-point ``(B, C, *spatial)`` batch, the model has no
            ``gradcam_layer`` and no ``layer`` was given, the layer does not exist (the message
            lists the valid names), or a class index is out of range.

    Example:
        >>> import torch
        >>> from medlens.models import create_model
        >>> net = create_model("resnet_compact", in_channels=1, num_classes=3, spatial_dims=3, input_size=16, width=8)
        >>> gradcam(net.eval(), torch.rand(1, 1, 16, 16, 16), class_index=2).shape
        (1, 16, 16, 16)
    """
    from monai.visualize import GradCAM, GradCAMpp

    if method not in METHODS:
        raise ValueError(f"unknown Grad-CAM method {method!r}; valid: {', '.join(METHODS)}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim not in (4, 5):
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"x must be a float tensor (B, C, H, W) or (B, C, D, H, W), got {shape}")
    layers = [layer] if layer is not None else list(getattr(model, "gradcam_layers", None)
                                                     or [getattr(model, "gradcam_layer", None)])
    if not all(layers):
        raise ValueError(f"{type(model).__name__} has no gradcam_layer attribute; pass layer= a dotted module name")
    names = [name for name, _ in model.named_modules() if name]
    for one in layers:
        if one not in names:
            raise ValueError(f"layer {one!r} is not a module of {type(model).__name__}; valid names: "
                             f"{', '.join(names)}")
    if class_index is not None:
        index = torch.as_tensor(np.asarray(class_index), dtype=torch.long).reshape(-1)
        if index.numel() not in (1, x.shape[0]):
            raise ValueError(f"class_index must be one int or one per image ({x.shape[0]}), got {index.numel()} values")
        class_index = index.to(x.device)
    work = copy.deepcopy(model).eval()  # MONAI's hooks stay on the copy, never on the caller's model
    if class_index is None:
        with torch.no_grad():
            logits = work(x)  # (B, K)
        class_index = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(dim=1)
    kind = GradCAM if method == "gradcam" else GradCAMpp
    maps = None
    for one in layers:
        cam = kind(_per_sample_hooks(work, one, x.ndim), target_layers=one, postprocessing=lambda m: m)
        with torch.enable_grad():
            # The input must require grad for the backward hook to fire even if the weights are frozen.
            raw = cam(x.detach().clone().requires_grad_(True), class_idx=class_index).detach()  # (B, 1, *spatial)
        maps = raw if maps is None else maps + raw
    if scale:
        maps = _scale_to_unit(maps)
    return maps[:, 0].cpu().numpy().astype(np.float32)
