"""``ensemble``: K copies of one registered model whose class probabilities are averaged.

``medlens train --members K`` (and ``--recipe auto`` when the budget leaves room) trains K
members of the same architecture (member 0 with the run's seed, the others with seeds drawn from
it: :func:`medlens.engine.train.member_seed`) on the same split, then saves
them as one ``ensemble`` checkpoint, so evaluation, Grad-CAM, ``predict``, ONNX export and the
server treat an ensemble like any other model.

Combining: ``softmax`` (single-label tasks) returns ``log(mean_k softmax(l_k))``, whose softmax
is exactly the mean of the members' probabilities; ``sigmoid`` (multi-label, or one output)
returns the logit of the mean of the members' sigmoids, computed in log space
(``logsumexp(log sigmoid(l)) - logsumexp(log sigmoid(-l))``) so that confident members neither
overflow nor tie. Averaging probabilities, not logits,
keeps an over-confident member from outvoting the others.

The registry's contract holds: ``forward_features`` is the members' feature maps concatenated
along the channel axis (same architecture, so same spatial shape), ``forward_head`` splits them
back and combines the heads' outputs; ``get_classifier()`` refuses (there is no single head: each
member's ``get_classifier()`` is its own). ``gradcam_layers`` names every member's Grad-CAM layer, and
:func:`medlens.explain.gradcam.gradcam` sums their maps of the combined output (``gradcam_layer``,
the single-layer contract, is member 0's).

Written here rather than taken from a library: MONAI and timm have no module that averages
the probabilities of K networks and still exposes a feature map and a head.

Example:
    >>> import torch
    >>> model = create_model("ensemble", in_channels=1, num_classes=3, member="cnn_small", members=2)
    >>> probs = model(torch.zeros(4, 1, 28, 28)).softmax(1)
    >>> probs.shape, bool(torch.allclose(probs.sum(1), torch.ones(4)))
    (torch.Size([4, 3]), True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medlens.models.registry import create_model, get_model_spec, register_model

COMBINE = ("auto", "softmax", "sigmoid")


class Ensemble(nn.Module):
    """K members of one architecture; see the module docstring."""

    def __init__(self, members: list[nn.Module], combine: str):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.combine = combine
        self.num_features = int(sum(m.num_features for m in members))
        self.gradcam_layer = f"members.0.{members[0].gradcam_layer}"
        self.gradcam_layers = tuple(f"members.{i}.{m.gradcam_layer}" for i, m in enumerate(members))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, K*F, *s)``: the members' feature maps, side by side."""
        return torch.cat([member.forward_features(x) for member in self.members], dim=1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, K*F, *s) -> (B, classes)``: each member's head on its share, then combined."""
        sizes = [m.num_features for m in self.members]
        shares = features.split(sizes, dim=1)
        logits = torch.stack([m.forward_head(f) for m, f in zip(self.members, shares, strict=True)])
        if self.combine == "softmax":
            return torch.logsumexp(logits.log_softmax(dim=-1), dim=0) - math.log(len(self.members))
        # log(mean p) - log(mean (1 - p)); the log K of both means cancels. log sigmoid(x) = -softplus(-x).
        softplus = nn.functional.softplus
        return torch.logsumexp(-softplus(-logits), dim=0) - torch.logsumexp(-softplus(logits), dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S) -> (B, classes)`` combined logits."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """Refused: an ensemble has no single classifier; each member has its own.

        The combined logits average the members' probabilities, so no one bias shifts them: a
        change to the class mix (prior correction) goes into each member's classifier
        (``members[i].get_classifier()``) before they are combined, as ``train.members`` does.

        Raises:
            ValueError: always; the message names the members' classifiers.
        """
        raise ValueError(f"model 'ensemble' has no single classifier: its logits combine the probabilities of its "
                         f"{len(self.members)} members, each with its own (members[i].get_classifier()); shift "
                         f"a member's classifier bias before the members are combined")

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh classifier in every member."""
        for member in self.members:
            member.reset_classifier(num_classes)


@register_model("ensemble", spatial_dims=(2, 3),
                description="K copies of one model (option member, member_options, members) averaging probabilities")
def ensemble(*, in_channels: int, num_classes: int, spatial_dims: int, input_size: int,
             member: str = "resnet_compact", member_options: dict | None = None, members: int = 2,
             combine: str = "auto") -> Ensemble:
    """Build ``members`` untrained copies of ``member`` (weights come from a checkpoint).

    Args:
        member: a registered model other than ``ensemble``.
        member_options: that model's own options (``{"width": 24}``).
        members: K >= 1.
        combine: ``softmax``, ``sigmoid``, or ``auto`` (sigmoid for one output, else softmax);
            training sets ``sigmoid`` for multi-label tasks.

    Raises:
        ValueError: an unknown or nested member, K < 1, or an unknown ``combine``.
    """
    if get_model_spec(member).name == "ensemble":
        raise ValueError("member='ensemble' is not valid: an ensemble's members are single models")
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        raise ValueError(f"members={members!r} is not valid for model 'ensemble'; expected an integer >= 1")
    if combine not in COMBINE:
        raise ValueError(f"combine={combine!r} is not valid for model 'ensemble'; valid: {', '.join(COMBINE)}")
    if member_options is not None and not isinstance(member_options, dict):
        raise ValueError(f"member_options={member_options!r} is not valid for model 'ensemble'; expected a mapping")
    if combine == "auto":
        combine = "sigmoid" if num_classes == 1 else "softmax"
    built = [create_model(member, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
                          input_size=input_size, **(member_options or {})) for _ in range(members)]
    return Ensemble(built, combine)
