"""ONNX export: files, card, parity with torch on real 2D and 3D test images, the CLI, refusals."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from medlens.cli import main
from medlens.serve import onnx_export
from medlens.serve.onnx_export import export_onnx
from medlens.serve.predictor import Predictor

pytestmark = pytest.mark.integration
ATOL = 1e-4


@pytest.fixture(scope="module")
def breast_export(breast_run, medmnist_root) -> str:
    """``medlens export RUN --format onnx --root ROOT`` on the BreastMNIST run; returns its stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["export", str(breast_run), "--format", "onnx", "--root", str(medmnist_root)]) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def adrenal_export(adrenal_run, medmnist_root) -> Path:
    """``export_onnx`` on the AdrenalMNIST3D run without ``root``: the run's own data root (then $MEDLENS_DATA)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDLENS_DATA", str(medmnist_root))
        return export_onnx(adrenal_run)


def _test_images(root: Path, name: str) -> np.ndarray:
    """Every official test image of a MedMNIST file as uint8 (N, 1, *spatial)."""
    return np.load(root / f"{name}.npz")["test_images"][:, None]


@pytest.mark.parametrize(("run_fixture", "dataset", "shape"), [
    ("breast_run", "breastmnist", ["batch", 1, 28, 28]),
    ("adrenal_run", "adrenalmnist3d", ["batch", 1, 28, 28, 28]),
])
def test_export_matches_torch_on_real_test_images(run_fixture, dataset, shape, request, medmnist_root):
    run = request.getfixturevalue(run_fixture)
    request.getfixturevalue("breast_export" if dataset == "breastmnist" else "adrenal_export")
    path = run / "export" / "model.onnx"
    onnx.checker.check_model(str(path))
    card = json.loads((run / "export" / "model.json").read_text())
    best = json.loads((run / "checkpoints" / "best.json").read_text())["card"]
    assert {k: card[k] for k in best} == json.loads(json.dumps(best))  # the whole model card...
    assert card["onnx"]["opset"] == onnx_export.OPSET  # ...plus how to call the graph
    assert (card["onnx"]["input_name"], card["onnx"]["output_name"]) == ("images", "probabilities")
    assert card["verification"]["max_abs_difference"] <= ATOL and card["verification"]["images"] > 100

    images = _test_images(medmnist_root, dataset)
    torch_predictor = Predictor.load(run)
    expected = torch_predictor.predict(images)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == shape  # dynamic batch axis
    assert session.get_inputs()[0].type == "tensor(uint8)"
    raw = session.run(["probabilities"], {"images": images})[0]  # the graph alone: raw pixels in, probabilities out
    assert np.abs(raw - expected).max() <= ATOL

    onnx_predictor = Predictor.load(run, backend="onnx")
    assert onnx_predictor.backend == "onnx" and onnx_predictor.info["backend"] == "onnx"
    # The version names what answers (issue 20): the graph's hash, recorded in its card, not the weights'.
    assert onnx_predictor.info["version"] == card["onnx_sha256"][:12] != torch_predictor.info["version"]
    onnx_predictor.batch_size = 37  # uneven batches, including a last one of a different size
    assert np.abs(onnx_predictor.predict(images) - expected).max() <= ATOL
    assert np.abs(onnx_predictor.predict(images[:1]) - expected[:1]).max() <= ATOL
    # Grad-CAM needs gradients: it always runs on the torch model, loaded on first use.
    np.testing.assert_allclose(onnx_predictor.explain(images[0]), torch_predictor.explain(images[0]), atol=1e-5)


def test_export_and_predict_commands(breast_run, breast_export, medmnist_root, tmp_path, capfd):
    out = breast_run / "export" / "model.onnx"
    assert f"exported to {out}" in breast_export and "156 test images of breastmnist@28" in breast_export
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(breast_run), "--format", "tflite"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite' (choose from 'onnx')" in capfd.readouterr().err

    images = np.load(medmnist_root / "breastmnist.npz")["test_images"][:5]
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"case{i}.png")
        Image.fromarray(image).save(files[-1])
    results = {}
    for backend in ("torch", "onnx"):
        target = tmp_path / f"{backend}.csv"
        assert main(["predict", str(breast_run), *map(str, files), "--backend", backend, "--out", str(target)]) == 0
        with open(target, newline="") as handle:
            results[backend] = np.array([[float(r["p_malignant"]), float(r["p_normal, benign"])]
                                         for r in csv.DictReader(handle)])
    assert results["torch"].shape == (5, 2)
    assert np.abs(results["torch"] - results["onnx"]).max() <= ATOL


def test_failed_verification_writes_nothing(breast_run, medmnist_root, tmp_path, monkeypatch):
    real_export = onnx_export._export

    def export_other_weights(graph, example, path):
        # An exporter that changes the numbers: a copy of the graph with one weight altered.
        import copy

        broken = copy.deepcopy(graph)
        with torch.no_grad():
            next(broken.parameters()).add_(0.5)
        real_export(broken, example, path)

    monkeypatch.setattr(onnx_export, "_export", export_other_weights)
    out = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match=r"ONNX Runtime and torch disagree on 156 test images of breastmnist@28: "
                                         r"max \|difference\| .* > 0.0001; not exported"):
        export_onnx(breast_run, out, root=medmnist_root)
    assert list(tmp_path.iterdir()) == []  # no .onnx, no .json, no temporary file


def test_missing_stale_or_unverifiable_exports_are_refused(breast_run, breast_export, medmnist_root, tmp_path,
                                                           monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(breast_run / "checkpoints", run / "checkpoints")  # a run folder without an export
    with pytest.raises(FileNotFoundError, match=r"model.onnx does not exist; run `medlens export .* --format onnx`"):
        Predictor.load(run, backend="onnx")
    # No data on this machine: not where the run was trained (the root in its card, a folder of
    # another machine) nor in $MEDLENS_DATA. The export cannot be verified, so it is not made.
    best_card = run / "checkpoints" / "best.json"
    document = json.loads(best_card.read_text())
    document["card"]["config"]["data"]["root"] = str(tmp_path / "other-machine" / "medmnist")
    best_card.write_text(json.dumps(document))
    monkeypatch.setenv("MEDLENS_DATA", str(tmp_path / "no-data"))
    with pytest.raises(FileNotFoundError, match=r"test images of breastmnist@28 are needed .* \$MEDLENS_DATA"):
        export_onnx(run)
    assert not (run / "export" / "model.onnx").exists()
    shutil.copytree(breast_run / "export", run / "export")
    assert Predictor.load(run, backend="onnx").backend == "onnx"
    # The checkpoint changes after the export (training went on): the old export is refused.
    card = json.loads((run / "export" / "model.json").read_text())
    card["weights_sha256"] = "0" * 64
    (run / "export" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="exported from other weights"):
        Predictor.load(run, backend="onnx")
    with pytest.raises(ValueError, match="the export must be a .onnx file"):
        export_onnx(run, tmp_path / "model.pt", root=medmnist_root)


def test_a_swapped_model_onnx_is_refused_and_the_version_names_what_answers(breast_run, breast_export, tmp_path):
    """Issue 20: a model.onnx replaced after the export was served unchecked, under the weights' hash."""
    import hashlib

    run = tmp_path / "run"
    shutil.copytree(breast_run / "checkpoints", run / "checkpoints")
    shutil.copytree(breast_run / "export", run / "export")
    onnx_file = run / "export" / "model.onnx"
    served = Predictor.load(run, backend="onnx")
    assert served.info["version"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()[:12]
    assert served.info["served_file"] == "model.onnx"
    assert json.loads((run / "export" / "model.json").read_text())["onnx_sha256"] == \
        hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    # Another graph under the same name (here: the same bytes with one changed): refused at load.
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.onnx is not the file that was exported .*medlens export"):
        Predictor.load(run, backend="onnx")
    # An export card without the graph's hash (an older medlens): refused, with what to do.
    shutil.copy(breast_run / "export" / "model.onnx", onnx_file)
    card = json.loads((run / "export" / "model.json").read_text())
    del card["onnx_sha256"]
    (run / "export" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="records no SHA-256 of model.onnx"):
        Predictor.load(run, backend="onnx")


def test_grad_cam_refuses_weights_that_changed_after_the_onnx_model_was_loaded(breast_run, breast_export, tmp_path):
    """The overlay must explain the model that answers: the weights the export was made from."""
    from medlens.engine.checkpoint import load_model, save_model

    run = tmp_path / "run"
    shutil.copytree(breast_run / "checkpoints", run / "checkpoints")
    shutil.copytree(breast_run / "export", run / "export")
    served = Predictor.load(run, backend="onnx")
    model, card = load_model(run)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_model(model, card, run / "checkpoints" / "best.safetensors")  # other weights, a valid checkpoint
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match="changed since the model was loaded; Grad-CAM would explain another model"):
        served.explain(image, class_index=0)
