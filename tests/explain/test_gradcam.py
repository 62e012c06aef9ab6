"""Grad-CAM: shapes and range in 2D and 3D, per-sample classes, and that it points at the evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import single_line

from medlens.explain.gradcam import gradcam
from medlens.models import create_model


def _model(name: str, *, spatial_dims: int = 2, size: int = 28, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=1, num_classes=3, spatial_dims=spatial_dims, input_size=size, **kwargs).eval()


@pytest.mark.parametrize(("name", "spatial_dims", "kwargs"), [
    ("cnn_small", 2, {}),
    ("resnet_compact", 2, {"width": 4}),
    ("resnet_compact", 3, {"width": 4}),
])
def test_heatmaps_have_the_input_shape_and_unit_range(name, spatial_dims, kwargs):
    model = _model(name, spatial_dims=spatial_dims, size=16, **kwargs)
    x = torch.rand((3, 1) + (16,) * spatial_dims, generator=torch.Generator().manual_seed(1))
    heat = gradcam(model, x)
    assert heat.shape == (3,) + (16,) * spatial_dims and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    # Each map is scaled on its own: a map with any evidence reaches exactly 1.
    assert all(h.max() == pytest.approx(1.0) or h.max() == 0.0 for h in heat)


def test_each_sample_is_explained_for_its_own_class_and_the_model_is_untouched():
    model = _model("cnn_small")
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    hooks_before = [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()]
    together = gradcam(model, x, class_index=[0, 2])
    apart = np.concatenate([gradcam(model, x[:1], class_index=0), gradcam(model, x[1:], class_index=2)])
    np.testing.assert_allclose(together, apart, atol=1e-5)
    assert not np.allclose(gradcam(model, x[:1], class_index=0), gradcam(model, x[:1], class_index=1), atol=1e-3)
    # MONAI registers hooks on the model it wraps; gradcam works on a copy.
    assert [(len(m._forward_hooks), len(m._backward_hooks)) for m in model.modules()] == hooks_before
    assert not model.training


def test_bad_layer_and_class_index_are_refused():
    model = _model("cnn_small")
    x = torch.rand(1, 1, 28, 28)
    with pytest.raises(ValueError, match="'features.nope' is not a module") as err:
        gradcam(model, x, layer="features.nope")
    assert "features.block1" in single_line(err.value)
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        gradcam(model, x, class_index=3)
    with pytest.raises(ValueError, match="float tensor"):
        gradcam(model, (x * 255).to(torch.uint8))


def _squares(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one bright 6x6 square: in the left half for class 1, the right half for class 0."""
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.rand(n, 1, 28, 28, generator=generator) * 0.3
    rows = torch.randint(0, 22, (n,), generator=generator)
    cols = torch.randint(0, 8, (n,), generator=generator)  # 0..7: the square stays inside its half
    for i in range(n):
        left = int(cols[i]) + (0 if labels[i] == 1 else 14)
        images[i, 0, rows[i]:rows[i] + 6, left:left + 6] = 1.0
    return images, labels


def test_heatmap_lights_the_half_that_decides_the_class():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model("cnn_small", in_channels=1, num_classes=2, input_size=28)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(25):  # the loss is ~1e-3 after 10 steps
        images, labels = _squares(32, generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    images, labels = _squares(64, generator)
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95, f"the model did not learn the task (accuracy {accuracy:.2f})"

    heat = gradcam(model, images, class_index=labels)  # (64, 28, 28), each explained for its true class
    left, right = heat[..., :14].mean(axis=(1, 2)), heat[..., 14:].mean(axis=(1, 2))
    is_left = labels.numpy() == 1
    # Class 1's evidence, its square, is on the left. (Class 0 is not asserted: a binary model may
    # encode it as "no square on the left", which has no positive Grad-CAM evidence anywhere.)
    assert left[is_left].mean() > 2 * right[is_left].mean()
    assert (left[is_left] > right[is_left]).mean() > 0.9


def test_an_ensemble_is_explained_through_every_member():
    torch.manual_seed(0)
    model = create_model("ensemble", in_channels=1, num_classes=3, member="cnn_small", members=2).eval()
    assert model.gradcam_layers == tuple(f"members.{i}.{model.members[0].gradcam_layer}" for i in range(2))
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    heat = gradcam(model, x, class_index=1)
    raw = [gradcam(model, x, class_index=1, layer=layer, scale=False) for layer in model.gradcam_layers]
    assert all(r.max() > 0 for r in raw)  # both members carry evidence
    summed = raw[0] + raw[1]
    low, high = summed.min(axis=(1, 2), keepdims=True), summed.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(heat, (summed - low) / (high - low), atol=1e-5)
    member0 = gradcam(model, x, class_index=1, layer=model.gradcam_layer)
    assert np.abs(heat - member0).max() > 0.05  # not member 0's map alone
