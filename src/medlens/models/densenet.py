"""DenseNet-121 for 2D images and 3D volumes, on MONAI's ``DenseNet``.

Stems (``stem`` option), as for the ResNets:

- ``"small"``: ``conv0`` is a 3x3 convolution, stride 1, and ``pool0`` is an identity, so the
  three transitions take a 28 px input to 3 x 3 (the standard stem would end below 1 px).
- ``"standard"``: MONAI's 7x7 stride-2 convolution and 3x3 stride-2 max-pool (needs >= 32 px).
- ``"auto"`` (default): small below 128 px, standard from 128 px on.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.nets.densenet import DenseNet
from torch import nn

from medlens.models._head import PooledHead
from medlens.models._options import check_dropout, resolve_stem
from medlens.models.registry import register_model


def _feature_size(input_size: int, stem: str) -> int:
    """Edge length of the last feature map: the stem, then three stride-2 average pools."""
    size = input_size
    if stem == "standard":
        size = (size + 1) // 2  # conv0: 7x7, stride 2, padding 3
        size = (size + 1) // 2  # pool0: 3x3 max-pool, stride 2, padding 1
    for _ in range(3):  # transitions: 2x2 average pool, stride 2
        size //= 2
    return size


class DenseNetClassifier(PooledHead, DenseNet):
    """MONAI ``DenseNet`` with the classifier interface and a choice of stem.

    MONAI's ``class_layers`` (ReLU, pool, flatten, linear) are split: the final ReLU becomes
    ``features.relu5`` (so ``features`` returns the map Grad-CAM needs), the rest becomes
    ``avgpool``, ``head_drop`` and ``fc``.

    Args:
        spatial_dims: 2 for ``(B, C, H, W)``, 3 for ``(B, C, D, H, W)``.
        in_channels: input channels C, >= 1.
        num_classes: logits K, >= 1.
        stem: ``"small"`` (3x3 stride 1 conv, no pool) or ``"standard"`` (7x7 stride 2 + max-pool).
        block_config: dense layers per block. Default ``(6, 12, 24, 16)`` (DenseNet-121).
        dropout: dropout before the last linear layer, in [0, 1). Default 0.0.

    Shapes:
        ``forward``: ``(B, C, *S) -> (B, K)``;
        ``forward_features``: ``(B, C, *S) -> (B, 1024, *s)`` (DenseNet-121), ``s = S // 8``
        (small stem) or about ``S // 32`` (standard stem).

    Example:
        >>> model = DenseNetClassifier(2, 1, 2, stem="small")
        >>> model.forward_features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1024, 3, 3])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        *,
        stem: str,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        dropout: float = 0.0,
    ) -> None:
        if stem not in ("small", "standard"):
            raise ValueError(f"stem={stem!r} is not valid; valid: 'small', 'standard'")
        super().__init__(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, block_config=block_config
        )
        if stem == "small":
            conv0 = Conv[Conv.CONV, spatial_dims](
                in_channels, self.features.conv0.out_channels, kernel_size=3, stride=1, padding=1, bias=False
            )
            nn.init.kaiming_normal_(conv0.weight)  # as MONAI initialises its convolutions
            self.features.conv0 = conv0
            self.features.pool0 = nn.Identity()
        self.stem = stem
        num_features = self.class_layers.out.in_features
        del self.class_layers
        self.features.add_module("relu5", nn.ReLU())
        self.avgpool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes)
        nn.init.zeros_(self.fc.bias)
        self.num_features: int = num_features
        self.gradcam_layer = "features.relu5"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, F, *s)``: stem, dense blocks, transitions, final norm and ReLU."""
        return self.features(x)



@register_model(
    "densenet121",
    spatial_dims=(2, 3),
    description="DenseNet-121 (MONAI, blocks 6-12-24-16, growth 32, F=1024); stem small (<128 px) / standard",
)
def densenet121(
    *, in_channels: int, num_classes: int, spatial_dims: int, input_size: int, stem: str = "auto", dropout: float = 0.0
) -> DenseNetClassifier:
    """DenseNet-121 on MONAI's ``DenseNet``: blocks ``(6, 12, 24, 16)``, growth rate 32, F = 1024.

    Measured (1 channel, 2 classes): 6.9 M parameters (2D), 11.2 M (3D); forward MACs 672 M at
    28 px and 3.5 G at 64 px (small stem), 2.8 G at 224 px (standard); 3D 24.9 G at 28 px.

    Args:
        in_channels: input channels, >= 1.
        num_classes: logits, >= 1.
        spatial_dims: 2 or 3.
        input_size: input edge length in pixels; picks the stem when ``stem="auto"``.
        stem: ``"auto"`` (default: small below 128 px, else standard), ``"small"`` or ``"standard"``
            (needs input_size >= 32).
        dropout: before the last linear layer, in [0, 1). Default 0.0.

    Returns:
        A :class:`DenseNetClassifier`.

    Raises:
        ValueError: bad ``stem`` or ``dropout``, or an input too small for the stem.
    """
    resolved = resolve_stem(stem, input_size, "densenet121")
    if _feature_size(input_size, resolved) < 1:
        raise ValueError(
            f"densenet121 with stem={resolved!r} shrinks a {input_size} px input below 1 px; "
            f"use stem='small' (or 'auto') or input_size >= 32"
        )
    return DenseNetClassifier(
        spatial_dims, in_channels, num_classes, stem=resolved, dropout=check_dropout(dropout, "densenet121")
    )
