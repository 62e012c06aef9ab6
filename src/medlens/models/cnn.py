"""Plain CNNs of the classic tutorials: ``cnn_small`` (two conv blocks) and ``cnn_covid`` (three).

Both are ``[conv3x3 -> ReLU -> maxpool2] x n -> flatten -> dense 128 -> ReLU -> dropout -> dense K``.
The flatten ties the dense layer to the input size, so they are built for one ``input_size``
and refuse a feature map of another size with a clear error.

Written by hand: MONAI has no network of this shape.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from medlens.models._options import check_dropout, check_num_classes
from medlens.models.registry import register_model


class PlainCNN(nn.Module):
    """Stack of ``conv3x3 (padding 1) -> ReLU -> maxpool2`` blocks, flatten, one hidden dense layer.

    The convolutions use ``padding=1`` ("same"), so only the max-pools shrink the map: an input of
    ``S`` px gives a ``S // 2**n`` map after ``n`` blocks (28 px, 2 blocks: 7 x 7). The Keras
    tutorials this reproduces use unpadded convolutions; padding keeps the border pixels and
    changes nothing else.

    Args:
        in_channels: image channels C, >= 1.
        num_classes: logits K, >= 1.
        input_size: edge length S of the square input the model is built for, >= 2**len(channels).
        channels: output channels of each conv block, e.g. ``(32, 64)``.
        hidden: width of the hidden dense layer. Default 128.
        dropout: dropout probability before the last dense layer, in [0, 1). Default 0.5.

    Shapes:
        ``forward``: ``(B, C, S, S) -> (B, K)``;
        ``forward_features``: ``(B, C, S, S) -> (B, channels[-1], s, s)`` with ``s = S // 2**n``.

    Example:
        >>> model = PlainCNN(1, 2, input_size=28, channels=(32, 64))
        >>> model.forward_features(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 64, 7, 7])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        input_size: int,
        channels: tuple[int, ...],
        hidden: int = 128,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        previous = in_channels
        for index, width in enumerate(channels, start=1):
            blocks[f"block{index}"] = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(previous, width, kernel_size=3, padding=1),
                    act=nn.ReLU(),
                    pool=nn.MaxPool2d(2),
                )
            )
            previous = width
        self.features = nn.Sequential(blocks)
        self.num_features = previous
        # The last convolution before its ReLU: after the ReLU a class whose evidence is all
        # negative there (often the minority class of a binary model) gets a blank Grad-CAM map.
        self.gradcam_layer = f"features.block{len(channels)}.conv"
        self.feature_size = input_size // 2 ** len(channels)
        if self.feature_size < 1:
            raise ValueError(
                f"input_size={input_size} is too small for {len(channels)} max-pools; expected >= {2 ** len(channels)}"
            )
        self.hidden = nn.Linear(previous * self.feature_size**2, hidden)
        self.act = nn.ReLU()
        self.head_drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S) -> (B, F, s, s)``: the conv blocks."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F, s, s) -> (B, K)``: flatten, dense, ReLU, dropout, dense.

        Raises:
            ValueError: the map is not ``s x s`` with the ``s`` the model was built for.
        """
        if tuple(features.shape[2:]) != (self.feature_size, self.feature_size):
            built_for = self.feature_size * 2 ** len(self.features)
            raise ValueError(
                f"{type(self).__name__} was built for input_size={built_for} (feature map "
                f"{self.feature_size}x{self.feature_size}) but got a feature map of {tuple(features.shape[2:])}; "
                f"create the model with the input_size of the data"
            )
        x = features.flatten(1)  # (B, F * s * s)
        x = self.act(self.hidden(x))  # (B, hidden)
        return self.fc(self.head_drop(x))  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S) -> (B, K)`` logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The last dense layer ``Linear(hidden, K)``, ``fc``: its bias is the bias of the logits."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the last dense layer by a fresh one with ``num_classes`` outputs."""
        self.fc = nn.Linear(self.fc.in_features, check_num_classes(num_classes))


@register_model(
    "cnn_small",
    spatial_dims=(2,),
    description="tutorial CNN: 2 conv blocks (32, 64) + dense 128, flatten (built for one input size)",
)
def cnn_small(
    *, in_channels: int, num_classes: int, spatial_dims: int, input_size: int, dropout: float = 0.5
) -> PlainCNN:
    """The two-conv CNN of the tutorials: conv3x3(32)-ReLU-pool, conv3x3(64)-ReLU-pool, dense 128.

    Measured (1 channel, 2 classes): 420,610 parameters and 4.2 M forward MACs at 28 px; the
    dense layer grows with the input: 2.1 M parameters at 64 px, 8.4 M at 128, 25.7 M at 224.

    Args:
        in_channels: image channels, >= 1.
        num_classes: logits, >= 1.
        spatial_dims: 2 (2D only).
        input_size: edge length of the square input; sizes the dense layer.
        dropout: before the last dense layer, in [0, 1). Default 0.5.

    Returns:
        A :class:`PlainCNN`; ``(B, C, S, S) -> (B, K)``.
    """
    return PlainCNN(
        in_channels, num_classes, input_size=input_size, channels=(32, 64), dropout=check_dropout(dropout, "cnn_small")
    )


@register_model(
    "cnn_covid",
    spatial_dims=(2,),
    description="COVID-19 tutorial CNN: 3 conv blocks (32, 64, 128) + dense 128, flatten (built for one input size)",
)
def cnn_covid(
    *, in_channels: int, num_classes: int, spatial_dims: int, input_size: int, dropout: float = 0.5
) -> PlainCNN:
    """The three-conv CNN of the COVID-19 chest X-ray tutorial: conv3x3 (32, 64, 128), dense 128.

    Measured (1 channel, 2 classes): 240,514 parameters and 7.6 M forward MACs at 28 px; the
    dense layer grows with the input: 1.1 M parameters at 64 px, 4.3 M at 128, 12.9 M at 224.

    Args:
        in_channels: image channels, >= 1.
        num_classes: logits, >= 1.
        spatial_dims: 2 (2D only).
        input_size: edge length of the square input; sizes the dense layer.
        dropout: before the last dense layer, in [0, 1). Default 0.5.

    Returns:
        A :class:`PlainCNN`; ``(B, C, S, S) -> (B, K)``.
    """
    return PlainCNN(
        in_channels,
        num_classes,
        input_size=input_size,
        channels=(32, 64, 128),
        dropout=check_dropout(dropout, "cnn_covid"),
    )
