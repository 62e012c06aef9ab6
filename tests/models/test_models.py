"""Every registered model, in every spatial dimension it declares, on tiny random tensors.

Parametrized over the registry (timm ``tests/test_models.py``): a new ``@register_model`` is
tested without touching this file. 2D cases run at 28 px, 3D cases at 16 px, batch 2 (training
mode BatchNorm needs more than one value per channel).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from medlens.models import Autoencoder, ModelSpec, create_model, get_model_spec, list_models, register_model
from medlens.models.ensemble import Ensemble
from medlens.models.registry import unregister_model

SIZE = {2: 28, 3: 16}
BATCH = 2
# The heaviest cases: about 0.5 s each on an idle 2-core CPU, several seconds on a busy one.
HEAVY = {("densenet121", 3), ("resnet50", 3)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread for these tiny tensors.

    On a busy 2-core machine two OpenMP threads spin against the other processes: measured
    under a load of about 5, this file took 417 s with 2 threads and 26 s with 1.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cases() -> list:
    cases = []
    for name in list_models():
        for dims in get_model_spec(name).spatial_dims:
            marks = [pytest.mark.slow] if (name, dims) in HEAVY else []
            cases.append(pytest.param(name, dims, marks=marks, id=f"{name}-{dims}d"))
    return cases


CASES = _cases()


def _input(in_channels: int, dims: int, size: int | None = None, batch: int = BATCH) -> torch.Tensor:
    size = SIZE[dims] if size is None else size
    return torch.randn(batch, in_channels, *([size] * dims), generator=torch.Generator().manual_seed(0))


def _model(name: str, dims: int, in_channels: int = 1, num_classes: int = 3, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(
        name, in_channels=in_channels, num_classes=num_classes, spatial_dims=dims, input_size=SIZE[dims], **options
    )


# --- the contract, for every model and dimension --------------------------------------------


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_forward_backward(name: str, dims: int) -> None:
    in_channels = 3 if dims == 2 else 1
    model = _model(name, dims, in_channels=in_channels)
    logits = model(_input(in_channels, dims))
    assert logits.shape == (BATCH, 3)
    assert logits.dtype == torch.float32
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{name} {dims}D: no gradient for {param_name}"
        assert torch.isfinite(param.grad).all(), f"{name} {dims}D: non-finite gradient for {param_name}"


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(("name", "dims"), CASES)
def test_features_and_head(name: str, dims: int, in_channels: int) -> None:
    model = _model(name, dims, in_channels=in_channels).eval()
    x = _input(in_channels, dims)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
        from_head = model.forward_head(features)
    assert features.dim() == 2 + dims
    assert features.shape[:2] == (BATCH, model.num_features)
    assert isinstance(model.num_features, int)
    assert logits.shape == (BATCH, 3)
    torch.testing.assert_close(logits, from_head)


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_reset_classifier(name: str, dims: int) -> None:
    model = _model(name, dims).eval()
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(_input(1, dims)).shape == (BATCH, 5)
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(0)


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_get_classifier_holds_the_bias_of_the_logits(name: str, dims: int) -> None:
    """Adding s to ``get_classifier().bias`` adds s to every logit row (what prior correction relies on)."""
    model = _model(name, dims).eval()
    if isinstance(model, Ensemble):  # no single head: each member has its own
        with pytest.raises(ValueError, match=r"model 'ensemble' has no single classifier: .*members\[i\]"):
            model.get_classifier()
        heads = [member.get_classifier() for member in model.members]
        assert all(isinstance(head, nn.Linear) and head.out_features == 3 for head in heads)
        assert len({id(head) for head in heads}) == len(model.members)
        return
    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == 3 and head.bias is not None
    assert any(param is head.bias for param in model.parameters())
    x = _input(1, dims)
    shift = torch.tensor([1.0, -2.0, 0.5])
    with torch.no_grad():
        before = model(x)
        head.bias += shift
        after = model(x)
    torch.testing.assert_close(after - before, shift.expand_as(before))
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5 and model.get_classifier() is not head


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_gradcam_layer_gives_the_feature_map_and_its_gradient(name: str, dims: int) -> None:
    """Forward and full backward hooks on ``gradcam_layer``, as MONAI's GradCAM registers them."""
    model = _model(name, dims).eval()
    layer = model.get_submodule(model.gradcam_layer)
    captured: dict[str, torch.Tensor] = {}
    layer.register_forward_hook(lambda module, args, output: captured.update(activation=output.detach()))
    layer.register_full_backward_hook(lambda module, grad_in, grad_out: captured.update(gradient=grad_out[0]))
    x = _input(1, dims)
    logits = model(x)
    logits[:, 1].sum().backward()
    with torch.no_grad():
        features = model.forward_features(x)
    # A convolution's map, at the features' resolution or finer (the deepest stage that keeps at
    # least 4 px per side, its last convolution before the ReLU), with a gradient of its shape.
    activation = captured["activation"]
    assert activation.ndim == features.ndim and activation.shape[0] == features.shape[0]
    assert all(a >= f for a, f in zip(activation.shape[2:], features.shape[2:], strict=True))
    if name.startswith("resnet"):  # ResNets pick their stage by size; the CNNs and DenseNet use their last
        assert min(activation.shape[2:]) >= 4 or model.gradcam_layer.startswith("layer1")
    assert captured["gradient"].shape == activation.shape
    assert torch.isfinite(captured["gradient"]).all()


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_channels_last(name: str, dims: int) -> None:
    """``channels_last`` (2D) / ``channels_last_3d`` (3D) gives the same logits, and trains."""
    memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
    model = _model(name, dims, in_channels=3).eval()
    x = _input(3, dims)
    with torch.no_grad():
        expected = model(x)
    model = model.to(memory_format=memory_format)
    x_last = x.contiguous(memory_format=memory_format)
    with torch.no_grad():
        torch.testing.assert_close(model(x_last), expected, rtol=1e-4, atol=1e-4)
    model.train()
    model(x_last).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# --- stems and input sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "input_size", "stem", "resolved", "feature_size"),
    [
        ("resnet18", 64, "auto", "small", 8),
        ("resnet18", 64, "standard", "standard", 2),
        ("resnet18", 128, "auto", "standard", 4),
        ("resnet18", 224, "auto", "standard", 7),
        ("resnet50", 128, "auto", "standard", 4),
        ("resnet_compact", 64, "auto", "small", 8),
        ("resnet_compact", 224, "small", "small", 28),
        ("resnet_compact", 224, "auto", "standard", 7),
        ("densenet121", 64, "auto", "small", 8),
        ("densenet121", 128, "small", "small", 16),
        ("densenet121", 224, "auto", "standard", 7),
    ],
)
def test_stems(name: str, input_size: int, stem: str, resolved: str, feature_size: int) -> None:
    model = create_model(name, in_channels=1, num_classes=2, input_size=input_size, stem=stem).eval()
    assert model.stem == resolved
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 1, input_size, input_size))
    assert features.shape[2:] == (feature_size, feature_size)
    with torch.no_grad():
        assert model.forward_head(features).shape == (1, 2)


def test_stems_differ_in_the_first_convolution() -> None:
    small = create_model("resnet18", in_channels=1, num_classes=2, stem="small")
    standard = create_model("resnet18", in_channels=1, num_classes=2, stem="standard")
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    assert standard.conv1.kernel_size == (7, 7) and standard.conv1.stride == (2, 2)
    assert isinstance(standard.maxpool, nn.MaxPool2d)
    dense_small = create_model("densenet121", in_channels=1, num_classes=2, stem="small")
    assert dense_small.features.conv0.kernel_size == (3, 3)
    assert isinstance(dense_small.features.pool0, nn.Identity)


def test_densenet_standard_stem_too_small_for_28px() -> None:
    with pytest.raises(ValueError, match=r"stem='standard' shrinks a 28 px input.*input_size >= 32"):
        create_model("densenet121", in_channels=1, num_classes=2, input_size=28, stem="standard")


def test_3d_at_28() -> None:
    model = create_model("resnet_compact", in_channels=1, num_classes=2, spatial_dims=3, input_size=28).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28, 28)).shape == (1, 2)


@pytest.mark.parametrize("name", ["cnn_small", "cnn_covid"])
@pytest.mark.parametrize("input_size", [64, 128, 224])
def test_flatten_models_at_larger_sizes(name: str, input_size: int) -> None:
    model = create_model(name, in_channels=1, num_classes=2, input_size=input_size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, input_size, input_size)).shape == (1, 2)


def test_flatten_model_rejects_another_input_size() -> None:
    model = create_model("cnn_small", in_channels=1, num_classes=2, input_size=28)
    with pytest.raises(ValueError, match=r"built for input_size=28.*got a feature map of \(16, 16\)"):
        model(torch.randn(2, 1, 64, 64))


def test_cnn_small_is_the_tutorial_architecture() -> None:
    model = create_model("cnn_small", in_channels=1, num_classes=2, input_size=28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64 * 7 * 7, 128), (128, 2)]
    assert model.head_drop.p == 0.5
    covid = create_model("cnn_covid", in_channels=3, num_classes=3, input_size=28)
    assert [c.out_channels for c in covid.modules() if isinstance(c, nn.Conv2d)] == [32, 64, 128]


def test_resnet_compact_options() -> None:
    default = create_model("resnet_compact", in_channels=1, num_classes=2)
    wider = create_model("resnet_compact", in_channels=1, num_classes=2, width=32, depth=[2, 2, 2, 2], dropout=0.2)
    assert default.num_features == 128 and wider.num_features == 256
    assert len(default.layer1) == 1 and len(wider.layer1) == 2
    assert wider.head_drop.p == 0.2
    n_default = sum(p.numel() for p in default.parameters())
    n_resnet18 = sum(p.numel() for p in create_model("resnet18", in_channels=1, num_classes=2).parameters())
    assert n_default < n_resnet18 / 20


# --- registry errors and listing -----------------------------------------------------------


def test_unknown_model_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet19'; valid: ") as error:
        create_model("resnet19", in_channels=1, num_classes=2)
    for name in list_models():
        assert name in str(error.value)


def test_2d_only_model_on_3d_data_names_the_dims_and_the_3d_models() -> None:
    with pytest.raises(ValueError) as error:
        create_model("cnn_small", in_channels=1, num_classes=2, spatial_dims=3)
    message = str(error.value)
    assert "model 'cnn_small' is 2D only; the data is 3D" in message
    assert "3D models: " + ", ".join(list_models(spatial_dims=3)) in message


def test_bad_spatial_dims() -> None:
    with pytest.raises(ValueError, match=r"spatial_dims 4 is not valid; valid: 2 \(images\), 3 \(volumes\)"):
        create_model("resnet18", in_channels=1, num_classes=2, spatial_dims=4)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("resnet18", {"stemm": "small"}, r"model 'resnet18' has no option stemm; valid options .*stem='auto'"),
        ("cnn_small", {"stem": "small"}, r"model 'cnn_small' has no option stem; valid options .*dropout=0.5"),
        (
            "resnet18",
            {"stem": "big"},
            r"stem='big' is not valid for model 'resnet18'; valid: 'auto', 'small', 'standard'",
        ),
        ("densenet121", {"stem": "big"}, r"stem='big' is not valid for model 'densenet121'"),
        ("resnet50", {"dropout": 1.5}, r"dropout=1.5 is not valid for model 'resnet50'; expected a number in \[0, 1\)"),
        ("resnet_compact", {"width": 0}, r"width=0 is not valid for model 'resnet_compact'; expected an integer >= 4"),
        ("resnet_compact", {"depth": (1, 1)}, r"depth=\(1, 1\) is not valid for model 'resnet_compact'"),
        ("resnet_compact", {"depth": "1111"}, r"depth='1111' is not valid"),
    ],
)
def test_bad_options(name: str, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(name, in_channels=1, num_classes=2, **options)


@pytest.mark.parametrize(
    ("argument", "value"), [("in_channels", 0), ("num_classes", 0), ("input_size", 4), ("num_classes", 2.0)]
)
def test_bad_common_arguments(argument: str, value: object) -> None:
    arguments = {"in_channels": 1, "num_classes": 2, "input_size": 28, argument: value}
    with pytest.raises(ValueError, match=rf"{argument}={value!r} is not valid for model 'resnet18'"):
        create_model("resnet18", **arguments)


def test_numpy_integers_are_accepted() -> None:
    model = create_model("resnet_compact", in_channels=np.int64(1), num_classes=np.int64(4), input_size=np.int64(28))
    assert model.fc.out_features == 4
    model.reset_classifier(np.int64(3))
    assert model.fc.out_features == 3


def test_duplicate_registration_raises() -> None:
    def builder(*, in_channels, num_classes, spatial_dims, input_size):
        return nn.Linear(1, 1)

    with pytest.raises(ValueError, match="model 'resnet18' is already registered"):
        register_model("resnet18", spatial_dims=(2,), description="dup")(builder)
    register_model("tmp_test_model", spatial_dims=(2,), description="temporary")(builder)
    try:
        with pytest.raises(ValueError, match="model 'tmp_test_model' is already registered"):
            register_model("tmp_test_model", spatial_dims=(2,), description="again")(builder)
    finally:
        unregister_model("tmp_test_model")
    assert "tmp_test_model" not in list_models()


@pytest.mark.parametrize(
    ("name", "spatial_dims", "message"),
    [
        ("Bad-Name", (2,), "model name 'Bad-Name' is not valid"),
        ("tmp_test_model", (4,), r"spatial_dims \(4,\) for model 'tmp_test_model' is not valid"),
        ("tmp_test_model", (), r"spatial_dims \(\) for model 'tmp_test_model' is not valid"),
    ],
)
def test_register_model_rejects_bad_specs(name: str, spatial_dims: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_model(name, spatial_dims=spatial_dims, description="bad")


def test_register_model_rejects_a_builder_without_the_common_arguments() -> None:
    with pytest.raises(ValueError, match="missing: spatial_dims, input_size"):
        register_model("tmp_test_model", spatial_dims=(2,), description="bad")(lambda *, in_channels, num_classes: None)
    assert "tmp_test_model" not in list_models()


def test_list_models() -> None:
    names = list_models()
    assert names == sorted(names)
    assert {"cnn_small", "cnn_covid", "resnet18", "resnet50", "densenet121", "resnet_compact"} <= set(names)
    assert list_models("resnet*") == ["resnet18", "resnet50", "resnet_compact"]
    assert list_models("RESNET1?") == ["resnet18"]
    assert list_models("nothing*") == []
    assert list_models(spatial_dims=2) == names
    assert list_models(spatial_dims=3) == ["densenet121", "ensemble", "resnet18", "resnet50", "resnet_compact"]
    assert list_models("cnn*", spatial_dims=3) == []
    with pytest.raises(ValueError, match=r"spatial_dims 1 is not valid; valid: None, 2, 3"):
        list_models(spatial_dims=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"member": "ensemble"}, "member='ensemble' is not valid"),
        ({"members": 0}, "members=0 is not valid for model 'ensemble'; expected an integer >= 1"),
        ({"combine": "vote"}, "combine='vote' is not valid for model 'ensemble'; valid: auto, softmax, sigmoid"),
        ({"member": "resnet19"}, "unknown model 'resnet19'"),
    ],
)
def test_ensemble_options_are_checked(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        create_model("ensemble", in_channels=1, num_classes=2, **options)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_ensemble_averages_the_members_probabilities(num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_model("ensemble", in_channels=1, num_classes=num_classes, member="cnn_small", members=3).eval()
    x = _input(1, 2)
    with torch.no_grad():
        if num_classes == 1:  # one output: the logit of the mean sigmoid
            expected = torch.stack([m(x).sigmoid() for m in model.members]).mean(0)
            torch.testing.assert_close(model(x).sigmoid(), expected)
        else:
            expected = torch.stack([m(x).softmax(1) for m in model.members]).mean(0)
            torch.testing.assert_close(model(x).softmax(1), expected)


def test_ensemble_of_confident_members_stays_finite_and_ordered() -> None:
    model = create_model("ensemble", in_channels=1, num_classes=1, member="cnn_small", members=2).eval()
    logits = torch.tensor([[[60.0], [-60.0], [30.0], [-80.0]], [[40.0], [-70.0], [-30.0], [-90.0]]])  # (K, B, 1)
    features = torch.zeros(4, model.num_features, 1, 1)
    heads = iter(logits)
    for member in model.members:  # members whose heads return the fixed logits above
        fixed = next(heads)
        member.forward_head = lambda f, fixed=fixed: fixed
    out = model.forward_head(features).squeeze(1)
    assert torch.isfinite(out).all()
    # mean sigmoid: ~1, ~0, 0.5, ~0 (the last more certainly 0 than the second): order kept, no ties
    assert out[0] > out[2] > out[1] > out[3]
    assert abs(out[2].item()) < 1e-6


def test_get_model_spec() -> None:
    spec = get_model_spec(" ResNet18 ")
    assert isinstance(spec, ModelSpec)
    assert spec.name == "resnet18"
    assert spec.spatial_dims == (2, 3)
    assert spec.default_options == {"stem": "auto", "dropout": 0.0}
    assert get_model_spec("cnn_small").spatial_dims == (2,)
    for name in list_models():
        spec = get_model_spec(name)
        assert spec.description and "\n" not in spec.description
        assert isinstance(spec.channels_last, bool)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        get_model_spec("nope")


# --- autoencoder ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dims", "size"),
    [
        ("cnn_small", 2, 28),  # 7 -> 14 -> 28, exact
        ("cnn_covid", 2, 28),  # 3 -> 24, interpolated to 28
        ("resnet_compact", 2, 28),  # 4 -> 32, interpolated to 28
        ("resnet18", 2, 64),  # 8 -> 64
        ("densenet121", 2, 28),
        ("resnet_compact", 3, 16),
        ("resnet_compact", 3, 28),
        pytest.param("resnet18", 3, 16, marks=pytest.mark.slow),
    ],
)
def test_autoencoder_reconstructs_the_input_shape(name: str, dims: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=2, spatial_dims=dims, input_size=size)
    autoencoder = Autoencoder(model, in_channels=1, input_size=size, spatial_dims=dims)
    assert autoencoder.encoder is model
    assert autoencoder.training and model.training  # the shape probe restores the mode
    x = _input(1, dims, size=size)
    reconstruction = autoencoder(x)
    assert reconstruction.shape == x.shape
    nn.functional.mse_loss(reconstruction, x).backward()
    for param_name, param in autoencoder.named_parameters():
        in_head = param_name.startswith(("encoder.fc.", "encoder.hidden."))
        assert (param.grad is None) == in_head, f"{name}: unexpected gradient state for {param_name}"
    # The encoder IS the classifier: a step on the autoencoder moves the classifier's weights.
    first = next(model.parameters())
    before = first.detach().clone()
    torch.optim.SGD(autoencoder.parameters(), lr=0.1).step()
    assert not torch.equal(first.detach(), before)


def test_autoencoder_with_three_input_channels() -> None:
    model = create_model("resnet_compact", in_channels=3, num_classes=2, input_size=28)
    autoencoder = Autoencoder(model, in_channels=3, input_size=28, spatial_dims=2)
    x = _input(3, 2)
    assert autoencoder(x).shape == x.shape


def test_autoencoder_rejects_a_module_without_forward_features() -> None:
    with pytest.raises(ValueError, match="encoder Linear has no forward_features"):
        Autoencoder(nn.Linear(2, 2), in_channels=1, input_size=28, spatial_dims=2)
