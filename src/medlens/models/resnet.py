"""ResNet-18 and ResNet-50 for 2D images and 3D volumes, on MONAI's ``ResNet``.

Two stems (``stem`` option):

- ``"small"``: 3x3 convolution, stride 1, no max-pool: the CIFAR-style stem of MedMNIST's
  "ResNet (28)" baseline. The first stage runs at full input resolution, so a 28 px image ends
  as a 4 x 4 map.
- ``"standard"``: the ImageNet stem, 7x7 convolution, stride 2, then a 3x3 max-pool, stride 2:
  a 4x smaller map before the first stage, for 128 / 224 px inputs.
- ``"auto"`` (default): small below 128 px, standard from 128 px on.
"""

from __future__ import annotations

import math

from collections.abc import Sequence

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck
from torch import nn

from medlens.models._head import PooledHead
from medlens.models._options import check_dropout, resolve_stem
from medlens.models.registry import register_model


def explain_stage(input_size: int | None, stem: str, *, min_edge: int = 4) -> str:
    """The deepest stage whose feature map is still at least ``min_edge`` per side, for Grad-CAM.

    The stem divides the input by 1 (small) or 4 (standard: stride-2 convolution and max-pool),
    and stages 2-4 halve it again. A map of 1 or 2 voxels per side (3D ResNets at 28 px with the
    standard stem end at 1) says nothing about where the evidence is, so an earlier, finer stage
    is explained instead. Unknown input size: ``layer4``.
    """
    if input_size is None:
        return "layer4"
    edge = math.ceil(input_size / (1 if stem == "small" else 4))
    chosen = "layer1"
    for stage in range(2, 5):
        edge = math.ceil(edge / 2)
        if edge < min_edge:
            break
        chosen = f"layer{stage}"
    return chosen


class ResNetClassifier(PooledHead, ResNet):
    """MONAI ``ResNet`` with the classifier interface (``forward_features`` / ``forward_head``).

    The module names are MONAI's (``conv1, bn1, maxpool, layer1..layer4, avgpool, fc``), plus
    ``head_drop`` (dropout before ``fc``, no parameters).

    Args:
        block: ``ResNetBlock`` (basic, 2 convs) or ``ResNetBottleneck`` (1x1-3x3-1x1, expansion 4).
        layers: blocks per stage, 4 ints, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        block_inplanes: width of each stage, 4 ints, e.g. ``(64, 128, 256, 512)``.
        spatial_dims: 2 for ``(B, C, H, W)``, 3 for ``(B, C, D, H, W)``.
        in_channels: input channels C, >= 1.
        num_classes: logits K, >= 1.
        stem: ``"small"`` (3x3 stride 1, no max-pool) or ``"standard"`` (7x7 stride 2 + max-pool).
        dropout: dropout before the last linear layer, in [0, 1). Default 0.0.

    Shapes:
        ``forward``: ``(B, C, *S) -> (B, K)``;
        ``forward_features``: ``(B, C, *S) -> (B, F, *s)``, ``F = block_inplanes[3] * expansion``,
        ``s = ceil(S / 8)`` (small stem) or ``ceil(S / 32)`` (standard stem).

    Example:
        >>> model = ResNetClassifier(ResNetBlock, (1, 1, 1, 1), (8, 16, 32, 64), 2, 1, 2, stem="small")
        >>> model.forward_features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 64, 4, 4])
    """

    def __init__(
        self,
        block: type[ResNetBlock | ResNetBottleneck],
        layers: Sequence[int],
        block_inplanes: Sequence[int],
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        *,
        stem: str,
        dropout: float = 0.0,
        input_size: int | None = None,
    ) -> None:
        if stem not in ("small", "standard"):
            raise ValueError(f"stem={stem!r} is not valid; valid: 'small', 'standard'")
        small = stem == "small"
        super().__init__(
            block=block,
            layers=list(layers),
            block_inplanes=list(block_inplanes),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=3 if small else 7,
            conv1_t_stride=1 if small else 2,
            no_max_pool=small,
            num_classes=num_classes,
            # BatchNorm follows the 1x1 shortcut convolution, so a bias there is redundant.
            bias_downsample=False,
        )
        if small:
            # MONAI builds the max-pool even with no_max_pool; an Identity keeps print(model) honest.
            self.maxpool = nn.Identity()
        self.stem = stem
        self.head_drop = nn.Dropout(dropout)
        self.num_features: int = self.fc.in_features
        # The last convolution of that stage's last block, before its BatchNorm, the residual sum and
        # the ReLU: after the ReLU a class whose evidence there is all negative (often the other
        # class of a binary model) gets a blank Grad-CAM map, as with the plain CNNs.
        stage = explain_stage(input_size, stem)
        convs = [name for name, module in self.get_submodule(stage).named_modules()
                 if isinstance(module, nn.modules.conv._ConvNd) and "downsample" not in name]
        self.gradcam_layer = f"{stage}.{convs[-1]}"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, F, *s)``: stem and the four stages, before global pooling."""
        x = self.act(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)



@register_model(
    "resnet18",
    spatial_dims=(2, 3),
    description="ResNet-18 (MONAI, basic blocks 2-2-2-2, width 64); stem small (<128 px) / standard",
)
def resnet18(
    *, in_channels: int, num_classes: int, spatial_dims: int, input_size: int, stem: str = "auto", dropout: float = 0.0
) -> ResNetClassifier:
    """ResNet-18: basic blocks ``(2, 2, 2, 2)``, widths ``(64, 128, 256, 512)``, F = 512.

    Measured (1 channel, 2 classes): 11.2 M parameters (2D), 33.1 M (3D); forward MACs 455.8 M
    at 28 px and 2.2 G at 64 px (small stem), 1.7 G at 224 px (standard); 3D 17.7 G at 28 px
    and 206 G at 64 px (small stem: use ``stem="standard"`` for 3D 64 px on a CPU).

    Args:
        in_channels: input channels, >= 1.
        num_classes: logits, >= 1.
        spatial_dims: 2 or 3.
        input_size: input edge length in pixels; picks the stem when ``stem="auto"``.
        stem: ``"auto"`` (default: small below 128 px, else standard), ``"small"`` or ``"standard"``.
        dropout: before the last linear layer, in [0, 1). Default 0.0.

    Returns:
        A :class:`ResNetClassifier`.
    """
    return ResNetClassifier(
        ResNetBlock,
        (2, 2, 2, 2),
        (64, 128, 256, 512),
        spatial_dims,
        in_channels,
        num_classes,
        stem=resolve_stem(stem, input_size, "resnet18"),
        input_size=input_size,
        dropout=check_dropout(dropout, "resnet18"),
    )


@register_model(
    "resnet50",
    spatial_dims=(2, 3),
    description="ResNet-50 (MONAI, bottleneck blocks 3-4-6-3, F=2048); stem small (<128 px) / standard",
)
def resnet50(
    *, in_channels: int, num_classes: int, spatial_dims: int, input_size: int, stem: str = "auto", dropout: float = 0.0
) -> ResNetClassifier:
    """ResNet-50: bottleneck blocks ``(3, 4, 6, 3)``, widths ``(64, 128, 256, 512)`` x 4, F = 2048.

    Measured (1 channel, 2 classes): 23.5 M parameters (2D), 46.1 M (3D); forward MACs 1.05 G
    at 28 px (small stem), 4.0 G at 224 px (standard); 3D 23.9 G at 28 px.

    Args:
        in_channels: input channels, >= 1.
        num_classes: logits, >= 1.
        spatial_dims: 2 or 3.
        input_size: input edge length in pixels; picks the stem when ``stem="auto"``.
        stem: ``"auto"`` (default: small below 128 px, else standard), ``"small"`` or ``"standard"``.
        dropout: before the last linear layer, in [0, 1). Default 0.0.

    Returns:
        A :class:`ResNetClassifier`.
    """
    return ResNetClassifier(
        ResNetBottleneck,
        (3, 4, 6, 3),
        (64, 128, 256, 512),
        spatial_dims,
        in_channels,
        num_classes,
        stem=resolve_stem(stem, input_size, "resnet50"),
        input_size=input_size,
        dropout=check_dropout(dropout, "resnet50"),
    )
