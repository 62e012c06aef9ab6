"""``resnet_compact``: a narrow, shallow ResNet for fast CPU training, 2D and 3D.

Same MONAI basic blocks and stems as :mod:`medlens.models.resnet`, with stage widths
``(w, 2w, 4w, 8w)`` and ``depth`` blocks per stage. The default (``width=16``,
``depth=(1, 1, 1, 1)``: a "ResNet-10" a quarter as wide as ResNet-18), measured with
``torch.utils.flop_counter.FlopCounterMode`` on one input, 1 channel, 2 classes, small stem
(MACs = counted FLOPs / 2):

========================================  ===========  ============  ===============
model                                     parameters   forward MACs  MACs / resnet18
========================================  ===========  ============  ===============
2D 28 px ``resnet18``                     11,168,706   455.8 M       1
2D 28 px ``resnet_compact``               307,506      13.0 M        0.029 (1/35)
2D 28 px ``resnet_compact``, width=32     1,226,338    51.8 M        0.114
3D 28 px ``resnet18``                     33,140,802   17,749 M      1
3D 28 px ``resnet_compact``               897,618      528.7 M       0.030
========================================  ===========  ============  ===============

Measured training step on the 2-core CPU (2D, 28 px, batch 128, channels_last, Adam, median
of 6): ``resnet18`` 808 ms, ``resnet_compact`` 38 ms (21x faster), width=32 111 ms.

A first accuracy check, not a benchmark (28 px, Adam 1e-3, batch 128, no augmentation, test
scores of the best-validation-AUC epoch; seeds 0 and 1 for BreastMNIST, seed 0 for
PneumoniaMNIST):

==========================  ===========================  ===========================
test AUC / ACC              ``resnet_compact``           ``resnet18``
==========================  ===========================  ===========================
BreastMNIST, 30 epochs      .894/.859, .885/.840         .874/.801, .892/.859
PneumoniaMNIST, 10 epochs   .936/.867                    .949/.830
==========================  ===========================  ===========================
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets.resnet import ResNetBlock

from medlens.models._options import check_dropout, resolve_stem
from medlens.models.registry import register_model
from medlens.models.resnet import ResNetClassifier


@register_model(
    "resnet_compact",
    spatial_dims=(2, 3),
    description="narrow ResNet-10 (MONAI basic blocks 1-1-1-1, width 16): fast CPU baseline; options width, depth",
)
def resnet_compact(
    *,
    in_channels: int,
    num_classes: int,
    spatial_dims: int,
    input_size: int,
    width: int = 16,
    depth: Sequence[int] = (1, 1, 1, 1),
    stem: str = "auto",
    dropout: float = 0.0,
) -> ResNetClassifier:
    """Narrow ResNet with basic blocks: stage widths ``(w, 2w, 4w, 8w)``, F = ``8 * width``.

    Args:
        in_channels: input channels, >= 1.
        num_classes: logits, >= 1.
        spatial_dims: 2 or 3.
        input_size: input edge length in pixels; picks the stem when ``stem="auto"``.
        width: channels of the first stage, an integer >= 4. Default 16 (ResNet-18 has 64).
        depth: basic blocks in each of the 4 stages, 4 integers >= 1. Default ``(1, 1, 1, 1)``;
            ``(2, 2, 2, 2)`` with ``width=64`` is ResNet-18.
        stem: ``"auto"`` (default: small below 128 px, else standard), ``"small"`` or ``"standard"``.
        dropout: before the last linear layer, in [0, 1). Default 0.0.

    Returns:
        A :class:`~medlens.models.resnet.ResNetClassifier`.

    Raises:
        ValueError: bad ``width``, ``depth``, ``stem`` or ``dropout``.

    Example:
        >>> import torch
        >>> from medlens.models import create_model
        >>> model = create_model("resnet_compact", in_channels=1, num_classes=2, width=8, depth=(1, 2, 2, 1))
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 2])
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 4:
        raise ValueError(f"width={width!r} is not valid for model 'resnet_compact'; expected an integer >= 4")
    if (
        isinstance(depth, (str, bytes))
        or not isinstance(depth, Sequence)
        or len(depth) != 4
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depth)
    ):
        raise ValueError(
            f"depth={depth!r} is not valid for model 'resnet_compact'; expected 4 integers >= 1 (blocks per stage), "
            "e.g. (1, 1, 1, 1)"
        )
    return ResNetClassifier(
        ResNetBlock,
        tuple(depth),
        (width, 2 * width, 4 * width, 8 * width),
        spatial_dims,
        in_channels,
        num_classes,
        stem=resolve_stem(stem, input_size, "resnet_compact"),
        dropout=check_dropout(dropout, "resnet_compact"),
        input_size=input_size,
    )
