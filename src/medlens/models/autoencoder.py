"""Autoencoder pretraining: any registered classifier's ``forward_features`` plus a light decoder.

The encoder is the classifier itself, shared and not copied: train the :class:`Autoencoder` on a
reconstruction loss, then keep training (fine-tune) the same ``model`` object as a classifier;
its feature layers already hold the pretrained weights. The classifier's head (``get_classifier()``
and, for the ``cnn_*`` models, the hidden dense layer) gets no gradient during pretraining; optimisers
skip parameters whose ``.grad`` is ``None``, so ``torch.optim.Adam(autoencoder.parameters())``
is fine.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

# Decoder widths: the first stage has min(F // 2, _MAX_WIDTH) channels, then they halve down to
# _MIN_WIDTH. The cap keeps the decoder light behind wide encoders (ResNet-50: F = 2048).
_MAX_WIDTH = 256
_MIN_WIDTH = 16


class Autoencoder(nn.Module):
    """Reconstruct the input from a classifier's feature map.

    Decoder: ``n`` stages of ``upsample x2 (nearest) -> conv3x3 -> BatchNorm -> ReLU`` with
    channels halving (first stage ``min(F // 2, 256)``, never below 16), where ``n`` is
    ``log2(input_size / s)`` rounded to the nearest integer for a feature map of edge ``s``; then
    an interpolation (bilinear / trilinear) to the exact input size when ``s * 2**n`` is not
    already it, and a final conv3x3 to ``in_channels`` with no activation (inputs are normalised,
    so the target can be negative). Train it with ``F.mse_loss(autoencoder(x), x)``.

    Args:
        encoder: a model from :func:`~medlens.models.create_model` (anything with
            ``forward_features(x) -> (B, F, *s)``). It is registered as ``self.encoder`` and
            shared, not copied: ``autoencoder.encoder is encoder``.
        in_channels: input channels C, >= 1.
        input_size: input edge length S in pixels, >= 1 (to size the decoder; ``forward`` resizes
            to the actual input shape anyway).
        spatial_dims: 2 for ``(B, C, H, W)``, 3 for ``(B, C, D, H, W)``.

    Shapes:
        ``forward``: ``(B, C, *S) -> (B, C, *S)``.

    Raises:
        ValueError: ``encoder`` has no ``forward_features``, or ``spatial_dims`` is not 2 or 3.

    Example:
        >>> from medlens.models import create_model
        >>> model = create_model("cnn_small", in_channels=1, num_classes=2, input_size=28)
        >>> autoencoder = Autoencoder(model, in_channels=1, input_size=28, spatial_dims=2)
        >>> x = torch.randn(2, 1, 28, 28)
        >>> autoencoder(x).shape
        torch.Size([2, 1, 28, 28])
        >>> autoencoder.encoder is model
        True
    """

    def __init__(self, encoder: nn.Module, *, in_channels: int, input_size: int, spatial_dims: int) -> None:
        super().__init__()
        if not callable(getattr(encoder, "forward_features", None)):
            raise ValueError(
                f"encoder {type(encoder).__name__} has no forward_features(x); "
                "pass a model from medlens.models.create_model"
            )
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims {spatial_dims!r} is not valid; valid: 2, 3")
        self.encoder = encoder
        self.spatial_dims = spatial_dims
        num_features, feature_size = _probe_features(encoder, in_channels, input_size, spatial_dims)
        n_stages = max(0, round(math.log2(input_size / feature_size)))

        conv_type = Conv[Conv.CONV, spatial_dims]
        norm_type = Norm[Norm.BATCH, spatial_dims]
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        width_in = num_features
        width_out = max(min(num_features // 2, _MAX_WIDTH), _MIN_WIDTH)
        for index in range(1, n_stages + 1):
            stages[f"up{index}"] = nn.Sequential(
                OrderedDict(
                    upsample=nn.Upsample(scale_factor=2, mode="nearest"),
                    conv=conv_type(width_in, width_out, kernel_size=3, padding=1, bias=False),
                    norm=norm_type(width_out),
                    act=nn.ReLU(inplace=True),
                )
            )
            width_in, width_out = width_out, max(width_out // 2, _MIN_WIDTH)
        self.decoder = nn.Sequential(stages)
        self.output_conv = conv_type(width_in, in_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, C, *S)``: the reconstruction of ``x``."""
        features = self.encoder.forward_features(x)  # (B, F, *s)
        y = self.decoder(features)  # (B, c, *(s * 2**n))
        if y.shape[2:] != x.shape[2:]:
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            y = F.interpolate(y, size=x.shape[2:], mode=mode, align_corners=False)  # (B, c, *S)
        return self.output_conv(y)  # (B, C, *S)


def _probe_features(encoder: nn.Module, in_channels: int, input_size: int, spatial_dims: int) -> tuple[int, int]:
    """``(F, s)`` of ``encoder.forward_features`` on one zero input of edge ``input_size``.

    Runs in eval mode (BatchNorm cannot normalise one value per channel in training mode) and
    restores the encoder's mode afterwards.
    """
    parameter = next(encoder.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            probe = torch.zeros(1, in_channels, *([input_size] * spatial_dims), device=device, dtype=dtype)
            features = encoder.forward_features(probe)  # (1, F, *s)
    finally:
        encoder.train(was_training)
    if features.dim() != 2 + spatial_dims:
        raise ValueError(
            f"encoder {type(encoder).__name__}.forward_features returned shape {tuple(features.shape)}; "
            f"expected (B, F, {', '.join(['s'] * spatial_dims)}) for {spatial_dims}D data"
        )
    return features.shape[1], features.shape[2]
