"""One inference path: every consumer turns the same uint8 batch into the same probabilities.

Each run here is a random-weight ``cnn_small`` saved with its model card beside a tiny ``npz:``
dataset in ``tmp_path``, so no real data and no training is needed. The reference is the path
written out by hand from :func:`medlens.data.augment.to_float` and torch's own softmax/sigmoid.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from medlens.data.augment import Normalisation, to_float
from medlens.data.registry import Task
from medlens.data.source import resolve
from medlens.engine.checkpoint import ModelCard, load_model, save_model
from medlens.engine.config import build_config, write_yaml
from medlens.inference import InferenceModel, decide, predict, probabilities
from medlens.metrics import predicted_labels
from medlens.models import create_model

NORM = Normalisation(mean=(0.37,), std=(0.21,))  # not a round number: exercises the float32 factors
SIZES = {"train": 10, "val": 6, "test": 12}
OUTPUTS = {Task.BINARY: 2, Task.MULTICLASS: 3, Task.MULTILABEL: 3}
TORCH_ATOL = 1e-6
ONNX_ATOL = 1e-4


def _labels(task: Task, n: int, rng: np.random.Generator) -> np.ndarray:
    """MedMNIST-layout labels: ``(n, 1)`` class ids with every class present, or ``(n, 3)`` 0/1 rows."""
    if task is Task.MULTILABEL:
        rows = rng.integers(0, 2, size=(n, 3)).astype(np.uint8)
        rows[0], rows[1] = 0, 1  # both values in every label column
        return rows
    return (np.arange(n) % OUTPUTS[task]).reshape(n, 1).astype(np.int64)


def _make_run(folder, task: Task, *, zero_classifier: bool = False):
    """A run folder (config, best checkpoint with its card) over a tiny ``npz:`` dataset; returns (run, source)."""
    rng = np.random.default_rng(list(OUTPUTS).index(task))
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = _labels(task, n, rng)
    data = folder / f"toy{task.value}.npz"
    np.savez(data, **arrays)
    source = resolve(f"npz:{data}")
    assert source.info.task is task
    cfg = build_config({"data": {"spec": source.spec}, "model": {"name": "cnn_small"}})
    run = folder / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_yaml(cfg, run / "config.yaml")
    torch.manual_seed(0)
    model = create_model("cnn_small", in_channels=1, num_classes=OUTPUTS[task], spatial_dims=2, input_size=28)
    if zero_classifier:  # every logit exactly 0: every probability exactly 0.5
        torch.nn.init.zeros_(model.fc.weight)
        torch.nn.init.zeros_(model.fc.bias)
    card = ModelCard(architecture="cnn_small", model_kwargs={}, task=task.value,
                     class_names=list(source.info.class_names), in_channels=1, spatial_dims=2, input_size=28,
                     normalisation=NORM.to_dict(), dataset={"spec": source.spec}, config=cfg.to_dict())
    save_model(model.eval(), card, run / "checkpoints" / "best.safetensors")
    return run, source


def _reference(model: torch.nn.Module, images: np.ndarray, task: Task) -> np.ndarray:
    """The path written out by hand: to_float, the model, then softmax (sigmoid for multi-label)."""
    with torch.no_grad():
        logits = model(to_float(torch.from_numpy(images), NORM)).float()
    return (torch.sigmoid(logits) if task.is_multilabel else torch.softmax(logits, dim=1)).numpy()


def _close(got: np.ndarray, expected: np.ndarray, atol: float) -> None:
    assert got.shape == expected.shape and got.dtype == np.float32
    assert float(np.abs(got - expected).max()) <= atol


@pytest.fixture(scope="module", params=list(OUTPUTS), ids=lambda task: task.value)
def toy(request, tmp_path_factory):
    """(task, run folder, source, test images uint8 (N, 1, 28, 28), reference probabilities)."""
    task = request.param
    run, source = _make_run(tmp_path_factory.mktemp(task.value), task)
    model, _ = load_model(run / "checkpoints" / "best.safetensors")
    images = np.ascontiguousarray(source.splits["test"].images)
    return task, run, source, images, _reference(model, images, task)


def test_split_predictions_match_the_reference(toy):
    task, run, source, _, expected = toy
    model, card = load_model(run / "checkpoints" / "best.safetensors")
    model.train()  # predict() evaluates in eval mode and gives the model back as it was
    for channels_last in (False, True):
        predictions = predict(model, source.splits["test"], task=task, mean=card.normalisation["mean"],
                              std=card.normalisation["std"], batch_size=5, channels_last=channels_last)
        _close(predictions.y_score, expected, TORCH_ATOL)
        assert predictions.task is task and predictions.ids.tolist() == source.splits["test"].ids.tolist()
    assert model.training


def test_torch_predictor_and_its_explanations_match_the_reference(toy):
    from medlens.explain.gradcam import gradcam
    from medlens.serve.predictor import Predictor

    _, run, _, images, expected = toy
    predictor = Predictor.load(run, backend="torch")
    predictor.batch_size = 5  # uneven chunks
    _close(predictor.predict(images), expected, TORCH_ATOL)
    model, _ = load_model(run / "checkpoints" / "best.safetensors")
    heatmap = predictor.explain(images[3], class_index=1)
    np.testing.assert_allclose(heatmap, gradcam(model, to_float(torch.from_numpy(images[3:4]), NORM), class_index=1)[0],
                               atol=1e-6)


def test_evaluation_and_report_gallery_use_the_same_path(toy, monkeypatch):
    import medlens.explain.gradcam
    from medlens.evaluate.evaluation import evaluate_run
    from medlens.report.html import _gallery_section

    _, run, _, images, expected = toy
    evaluation = evaluate_run(run, n_bootstrap=0)
    _close(evaluation.predictions.y_score, expected, TORCH_ATOL)

    seen = []

    def record(model, x, *, class_index):  # the gallery's Grad-CAM call: what model, what input
        seen.append((model, x.clone()))
        return np.zeros((len(x), *x.shape[2:]), np.float32)

    monkeypatch.setattr(medlens.explain.gradcam, "gradcam", record)
    page = _gallery_section(evaluation, limit=len(images), explain=True)
    items = json.loads(re.search(r"id=gallery-data>(.*?)</script>", page, re.DOTALL).group(1))
    assert len(items) == len(images)
    ids = evaluation.predictions.ids.tolist()
    names = list(evaluation.model[1].class_names)
    order = [ids.index(item["id"]) for item in items]
    for item, row in zip(items, order, strict=True):  # the confidence shown is the probability of the class shown
        assert abs(item["conf"] - float(expected[row, names.index(item["pred"])])) <= 5e-5 + TORCH_ATOL
    assert all(model is evaluation.model[0] for model, _ in seen)
    shown = torch.cat([x for _, x in seen])  # Grad-CAM input, in gallery order
    assert torch.equal(shown, to_float(torch.from_numpy(images[order]), NORM))


def test_onnx_export_matches_the_reference(toy):
    import onnxruntime as ort

    from medlens.serve.onnx_export import export_onnx
    from medlens.serve.predictor import Predictor

    _, run, _, images, expected = toy
    path = export_onnx(run, n_verify=len(images))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _close(session.run(["probabilities"], {"images": images})[0], expected, ONNX_ATOL)
    _close(Predictor.load(run, backend="onnx").predict(images), expected, ONNX_ATOL)


def test_validation_uses_the_same_probabilities(toy):
    from medlens.engine.losses import create_loss
    from medlens.engine.module import ClassifierModule

    task, run, source, images, expected = toy
    model, _ = load_model(run / "checkpoints" / "best.safetensors")
    cfg = build_config({"data": {"spec": source.spec}, "model": {"name": "cnn_small"}})
    module = ClassifierModule(model, create_loss("bce" if task.is_multilabel else "ce", task=task,
                                                 num_classes=OUTPUTS[task]),
                              config=cfg, task=task, normalisation=NORM, spatial_dims=2, num_classes=OUTPUTS[task])
    module.eval()
    with torch.no_grad():
        module.validation_step((torch.from_numpy(images), torch.from_numpy(source.splits["test"].labels)), 0)
    # Training normalises in two steps (to_unit, then normalise), so the input differs by rounding.
    _close(module._val_outputs[0][2].numpy(), expected, 1e-5)


def test_normalise_is_to_float_in_2d_and_3d_and_checks_its_input():
    for spatial_dims, channels_last in ((2, False), (2, True), (3, False), (3, True)):
        images = torch.randint(0, 256, (2, 3) + (8,) * spatial_dims, dtype=torch.uint8)
        norm = Normalisation(mean=(0.1, 0.5, 0.9), std=(0.3, 0.07, 1.7))
        net = torch.nn.Identity()  # normalise() never calls the model
        inference = InferenceModel(net, norm, task=Task.BINARY, spatial_dims=spatial_dims, channels_last=channels_last)
        x = inference.normalise(images)
        assert torch.equal(x, to_float(images, norm))
        layout = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
        assert x.is_contiguous(memory_format=layout) == channels_last
    with pytest.raises(ValueError, match=r"images must be uint8 \(B, 3, S, S, S\), got torch.float32"):
        inference.normalise(images.float())
    with pytest.raises(ValueError, match=r"got torch.uint8 \(2, 1, 8, 8, 8\)"):
        inference.normalise(images[:, :1])
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        InferenceModel(net, norm, task=Task.BINARY, spatial_dims=1)


def test_probabilities_by_task_and_for_a_single_output():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(probabilities(logits, Task.MULTICLASS), torch.softmax(logits, dim=1))
    torch.testing.assert_close(probabilities(logits, Task.ORDINAL), torch.softmax(logits, dim=1))
    torch.testing.assert_close(probabilities(logits, Task.MULTILABEL), torch.sigmoid(logits))
    torch.testing.assert_close(probabilities(logits[:, :2], Task.BINARY), torch.softmax(logits[:, :2], dim=1))
    # One output is a binary model's logit for class 1 (as Grad-CAM and the ensemble read it).
    single = torch.tensor([[2.0], [-3.0]])
    torch.testing.assert_close(probabilities(single, Task.BINARY), torch.sigmoid(single))
    assert decide(probabilities(single, Task.BINARY), Task.BINARY).tolist() == [1, 0]
    net = create_model("cnn_small", in_channels=1, num_classes=1, spatial_dims=2, input_size=28).eval()
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        got = InferenceModel(net, NORM, task=Task.BINARY, spatial_dims=2)(images)
        torch.testing.assert_close(got, torch.sigmoid(net(to_float(images, NORM))))


DECISIONS = {  # scores with ties and values exactly at 0.5, and the labels the one rule gives
    Task.BINARY: ([[0.5, 0.5], [0.4, 0.6], [0.6, 0.4]], [0, 1, 0]),
    Task.MULTICLASS: ([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.2, 0.3, 0.5]], [0, 2, 2]),
    Task.ORDINAL: ([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.2, 0.3, 0.5]], [0, 2, 2]),
    Task.MULTILABEL: ([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.2, 0.3, 0.5000001]], [[0, 0, 0], [0, 0, 0], [0, 0, 1]]),
}


@pytest.mark.parametrize("task", list(Task), ids=lambda task: task.value)
def test_decide_is_predicted_labels_at_exactly_one_half(task):
    scores, labels = DECISIONS[task]
    scores = np.array(scores, np.float32)
    expected = predicted_labels(scores, task=task)
    assert expected.tolist() == labels  # 0.5 is not above 0.5
    np.testing.assert_array_equal(decide(scores, task), expected)
    np.testing.assert_array_equal(decide(torch.from_numpy(scores), task), expected)
    if task is Task.BINARY:  # one column: the score of class 1
        np.testing.assert_array_equal(decide(scores[:, 1:], task), expected)
    np.testing.assert_array_equal(decide(scores, task, threshold=0.45), predicted_labels(scores, task=task,
                                                                                         threshold=0.45))


def test_server_positive_labels_follow_the_decision_rule_at_one_half(tmp_path):
    from fastapi.testclient import TestClient

    from medlens.serve.app import create_app
    from medlens.serve.predictor import Predictor

    run, source = _make_run(tmp_path, Task.MULTILABEL, zero_classifier=True)
    buffer = io.BytesIO()
    Image.fromarray(source.splits["test"].images[0, 0]).save(buffer, "PNG")
    with TestClient(create_app(Predictor.load(run))) as client:
        response = client.post("/v1/predict", files=[("files", ("a.png", buffer.getvalue(), "image/png"))])
    assert response.status_code == 200, response.text
    entry, = response.json()["predictions"]
    scores = np.array([list(entry["probabilities"].values())], np.float32)
    assert scores.tolist() == [[0.5, 0.5, 0.5]]  # exactly on the threshold
    decided = predicted_labels(scores, task=Task.MULTILABEL)[0]
    positive = [name for name, flag in zip(source.info.class_names, decided, strict=True) if flag]
    assert entry["positive"] == positive == []
