"""`medlens robustness`: the collapse flag, metrics recomputed independently, the files, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import quick_config, single_line
from sklearn.metrics import accuracy_score as sk_accuracy
from sklearn.metrics import balanced_accuracy_score as sk_balanced
from sklearn.metrics import roc_auc_score as sk_auc

from medlens.cli import main
from medlens.data.corrupt import corrupt
from medlens.data.registry import Task
from medlens.evaluate.robustness import parse_severities, robustness_run, score_block


def test_collapse_fires_on_a_model_that_predicts_one_class():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 200)
    # confident, varied scores that all fall on one side of 0.5: one predicted class
    one_class = np.stack([1 - (p := rng.uniform(0.05, 0.45, 200)), p], axis=1)
    block = score_block(y_true, one_class, task=Task.BINARY)
    assert block["collapse"] and block["predicted_classes"] == 1 and block["majority_share"] == 1.0
    assert block["balanced_accuracy"] == 0.5
    # a model that tells the classes apart does not collapse
    good = np.where(y_true[:, None] == 1, [[0.2, 0.8]], [[0.8, 0.2]]) + rng.normal(0, 0.05, (200, 1)) * [1, -1]
    block = score_block(y_true, good, task=Task.BINARY, n_bootstrap=50)
    assert not block["collapse"] and block["predicted_classes"] == 2 and block["balanced_accuracy"] == 1.0
    assert set(block["ci"]) == {"acc", "auc", "balanced_accuracy", "ece"}
    assert block["ci"]["acc"]["lower"] <= block["acc"] <= block["ci"]["acc"]["upper"]


def test_collapse_fires_at_chance_with_several_predicted_classes():
    # three classes predicted in turn, unrelated to the truth: balanced accuracy 1/3 = chance
    y_true = np.repeat([0, 1, 2], 30)
    y_score = np.eye(3)[np.tile([0, 1, 2], 30)] * 0.8 + 0.2 / 3
    block = score_block(y_true, y_score, task=Task.MULTICLASS)
    assert block["predicted_classes"] == 3 and block["balanced_accuracy"] == pytest.approx(1 / 3)
    assert block["collapse"]


def test_multilabel_collapse_is_no_label_varying():
    y_true = np.array([[0, 1], [1, 0], [1, 1], [0, 0]])
    assert score_block(y_true, np.full((4, 2), 0.3), task=Task.MULTILABEL)["collapse"]
    assert not score_block(y_true, y_true * 0.8 + 0.1, task=Task.MULTILABEL)["collapse"]


@pytest.mark.parametrize(("text", "expected"), [("1-5", [1, 2, 3, 4, 5]), ("3", [3]), ("5,1", [1, 5])])
def test_parse_severities(text, expected):
    assert parse_severities(text) == expected


@pytest.mark.parametrize("text", ["0-3", "6", "a", "1-", ""])
def test_bad_severities_are_one_line(text):
    with pytest.raises(ValueError, match="severities must be a range like 1-5") as info:
        parse_severities(text)
    single_line(info.value)


@pytest.fixture(scope="module")
def breast_run(medmnist_root, tmp_path_factory):
    from medlens.engine.train import train

    run = tmp_path_factory.mktemp("robust") / "breast"
    train(quick_config(data={"spec": "breastmnist", "root": str(medmnist_root)}), run)
    return run


@pytest.mark.integration
def test_metrics_recomputed_independently_and_files_written(breast_run, medmnist_root, capsys):
    assert main(["robustness", str(breast_run), "--severities", "1,5", "--corruptions", "gaussian_noise",
                 "contrast", "--bootstrap", "30"]) == 0
    out = capsys.readouterr().out
    assert "gaussian_noise" in out and "mean corruption error" in out
    metrics = json.loads((breast_run / "eval" / "robustness" / "metrics.json").read_text())
    assert (breast_run / "eval" / "robustness" / "examples.png").is_file()
    assert metrics["severities"] == [1, 5] and list(metrics["corruptions"]) == ["gaussian_noise", "contrast"]

    # Independently: the checkpoint, the official test images, corrupt(), a plain forward pass, scikit-learn.
    from medlens.engine.checkpoint import load_model

    model, card = load_model(breast_run / "checkpoints" / "best.safetensors")
    npz = np.load(medmnist_root / "breastmnist.npz")
    images, labels = npz["test_images"][:, None], npz["test_labels"].reshape(-1)
    mean, std = card.normalisation["mean"][0], card.normalisation["std"][0]
    errors = []
    for name in ("gaussian_noise", "contrast"):
        for severity in (1, 5):
            x = (torch.from_numpy(corrupt(images, name, severity, seed=0)).float() / 255 - mean) / std
            with torch.no_grad():
                p = torch.softmax(model(x), dim=1).numpy()
            block = metrics["corruptions"][name]["severities"][str(severity)]
            predicted = p.argmax(1)
            assert block["acc"] == pytest.approx(sk_accuracy(labels, predicted), abs=1e-12)
            assert block["auc"] == pytest.approx(sk_auc(labels, p[:, 1]), abs=1e-6)
            assert block["balanced_accuracy"] == pytest.approx(sk_balanced(labels, predicted), abs=1e-12)
            assert block["collapse"] == (len(np.unique(predicted)) == 1 or block["balanced_accuracy"] <= 0.5)
            errors.append(1 - block["acc"])
        r = metrics["corruptions"][name]
        assert r["relative_error"] == pytest.approx(np.mean(errors[-2:]) / (1 - metrics["clean"]["acc"]))
    assert metrics["summary"]["mce"] == pytest.approx(np.mean([r["relative_error"]
                                                               for r in metrics["corruptions"].values()]))


@pytest.mark.integration
def test_unknown_corruption_is_one_line(breast_run):
    with pytest.raises(ValueError, match="unknown corruption snow; valid: gaussian_noise") as info:
        robustness_run(breast_run, corruptions=["snow"])
    single_line(info.value)


@pytest.mark.integration
def test_report_shows_the_robustness_section(breast_run, tmp_path):
    from medlens.report.html import build_report

    robustness_run(breast_run, corruptions=["jpeg", "pixelate"], severities=[2, 4], n_bootstrap=0)
    page = build_report(breast_run, out=tmp_path / "report.html", gallery=0, figures=False).read_text()
    section = page[page.index("<h2>Robustness to corruptions</h2>"):]
    section = section[:section.index("</section>")]
    assert section.count("class=plot") == 2 and "Mean corruption error relative to clean" in section
    assert "corruption examples" in section and "data:image/png;base64," in section
