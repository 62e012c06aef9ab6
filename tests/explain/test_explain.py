"""Grad-CAM and Grad-CAM++ on trained 2D and 3D models, every registered model, and `medlens explain`."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from helpers import single_line
from PIL import Image

from medlens.cli import main
from medlens.data.augment import Normalisation, to_float
from medlens.engine.checkpoint import load_model
from medlens.engine.config import build_config
from medlens.engine.train import train
from medlens.explain.gradcam import METHODS, gradcam
from medlens.models import create_model, get_model_spec, list_models


def _run(tmp_path_factory, name: str, spec: str, root, model: dict, epochs: int = 2, **data):
    run = tmp_path_factory.mktemp("explain") / name
    # Balanced class weights: the model must have learnt evidence for both classes to be explained.
    train(build_config({"data": {"spec": spec, "root": str(root), "class_weights": "balanced", **data},
                        "model": model, "optim": {"lr": 3e-3},
                        "train": {"epochs": epochs, "tracking_uri": "none", "progress": False}}), run)
    return run


@pytest.fixture(scope="module")
def breast_run(medmnist_root, tmp_path_factory):
    return _run(tmp_path_factory, "breast", "breastmnist", medmnist_root, {"name": "cnn_small"}, epochs=8)


@pytest.fixture(scope="module")
def adrenal_run(medmnist_root, tmp_path_factory):
    return _run(tmp_path_factory, "adrenal", "adrenalmnist3d", medmnist_root,
                {"name": "resnet_compact", "kwargs": {"width": 8, "stem": "standard"}}, batch_size=32)


def _test_batch(run, medmnist_root, n: int = 4) -> tuple[torch.nn.Module, torch.Tensor]:
    model, card = load_model(run)
    name = card.dataset["spec"].split("@")[0]
    images = np.load(medmnist_root / f"{name}.npz")["test_images"][:n]  # (n, H, W) or (n, D, H, W)
    x = to_float(torch.from_numpy(images[:, None]), Normalisation.from_dict(card.normalisation))
    return model, x


@pytest.mark.integration
@pytest.mark.parametrize("which", ["breast_run", "adrenal_run"])
@pytest.mark.parametrize("method", METHODS)
def test_trained_models_heatmaps_follow_the_input_and_the_target(which, method, request, medmnist_root):
    model, x = _test_batch(request.getfixturevalue(which), medmnist_root, n=8)
    first = gradcam(model, x, class_index=0, method=method)
    second = gradcam(model, x, class_index=1, method=method)
    assert first.shape == second.shape == (x.shape[0], *x.shape[2:])
    assert all(m.std() > 0.01 for h in (first, second) for m in h), "no heatmap may be constant"
    assert np.abs(first - second).max() > 0.05, "another target class must give another heatmap"


@pytest.mark.parametrize("method", METHODS)
def test_binary_model_with_a_single_output(method):
    torch.manual_seed(0)
    model = create_model("cnn_small", in_channels=1, num_classes=1, input_size=28).eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    for_one, for_zero = gradcam(model, x, class_index=1, method=method), gradcam(model, x, class_index=0, method=method)
    assert for_one.shape == (3, 28, 28) and not np.allclose(for_one, for_zero)
    predicted = (model(x)[:, 0] > 0).long().numpy()
    np.testing.assert_allclose(gradcam(model, x, method=method), np.stack(
        [for_one[i] if predicted[i] else for_zero[i] for i in range(3)]), atol=1e-6)
    with pytest.raises(ValueError, match="out of range for 2 classes"):
        gradcam(model, x, class_index=2)


def _every_model():
    for name in list_models():
        for dims in get_model_spec(name).spatial_dims:
            yield pytest.param(name, dims, id=f"{name}-{dims}d")


@pytest.mark.parametrize(("name", "dims"), list(_every_model()))
def test_every_registered_model_has_a_default_layer_that_works(name, dims):
    if name == "autoencoder":
        pytest.skip("the autoencoder reconstructs images; it is not a classifier")
    size = 32 if dims == 2 else 16
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=3, spatial_dims=dims, input_size=size).eval()
    x = torch.rand(2, 1, *([size] * dims), generator=torch.Generator().manual_seed(4))
    for method in METHODS:
        heat = gradcam(model, x, method=method)
        assert heat.shape == (2, *([size] * dims)) and np.isfinite(heat).all()
    assert gradcam(model, x, layer=model.gradcam_layer).shape == heat.shape  # overridable by dotted name


def _png_size(path) -> tuple[int, int]:
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        return img.size


@pytest.mark.integration
def test_explain_command_writes_a_figure_per_image(breast_run, adrenal_run, medmnist_root, tmp_path, capsys):
    import nibabel as nib

    images = np.load(medmnist_root / "breastmnist.npz")["test_images"][:3]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"case{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "cams"
    code = main(["explain", str(breast_run), *(str(tmp_path / f"case{i}.png") for i in range(3)),
                 str(tmp_path / "broken.png"), "--out", str(out), "--method", "gradcampp"])
    captured = capsys.readouterr()
    assert code == 1 and "broken.png" in captured.err  # the bad file is named; the others are explained
    assert sorted(p.name for p in out.iterdir()) == [f"case{i}_gradcam.png" for i in range(3)]
    assert "case0.png:" in captured.out
    width, height = _png_size(out / "case0_gradcam.png")
    assert width >= 256 and height > 256  # the 28-px image is enlarged, with a caption strip below

    volume = np.load(medmnist_root / "adrenalmnist3d.npz")["test_images"][0]  # (D, H, W)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    assert main(["explain", str(adrenal_run), str(tmp_path / "vol.nii.gz"), "--out", str(out),
                 "--target", "1"]) == 0
    width, height = _png_size(out / "vol_gradcam.png")
    assert width > 2.5 * (height - 48), "three orthogonal slices side by side"
    capsys.readouterr()

    assert main(["explain", str(breast_run), str(tmp_path / "case0.png"), "--out", str(out),
                 "--target", "cancer"]) == 1
    assert "valid: malignant, normal, benign" in single_line(capsys.readouterr().err.strip())
    assert main(["explain", str(breast_run), str(tmp_path / "case0.png"), "--out", str(out),
                 "--layer", "features.nope"]) == 1
    assert "features.nope" in single_line(capsys.readouterr().err.strip())
