"""The classifier head shared by the MONAI-based families (ResNet, DenseNet)."""

from __future__ import annotations

import torch
from torch import nn

from medlens.models._options import check_num_classes


class PooledHead:
    """Mixin: global average pooling, dropout, linear, on top of ``forward_features``.

    The host class sets ``avgpool``, ``head_drop``, ``fc`` and ``num_features`` and defines
    ``forward_features``. Listed before the MONAI base class, so its ``forward`` wins.
    """

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, F, *s) -> (B, K)``: global average pooling, dropout, linear."""
        x = self.avgpool(features).flatten(1)  # (B, F)
        return self.fc(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, K)`` logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        """The final ``Linear(num_features, K)``, ``fc``: its bias is the bias of the logits."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace ``fc`` by a fresh ``Linear(num_features, num_classes)``."""
        self.fc = nn.Linear(self.num_features, check_num_classes(num_classes))
