"""`medlens evaluate` and `medlens compare` on real runs: files, re-scoring, other data, errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from helpers import single_line

from medlens.cli import main
from medlens.data.registry import Task
from medlens.engine.config import build_config
from medlens.engine.train import train
from medlens.evaluate.evaluation import evaluate_run, parse_result_name, read_medmnist_result
from medlens.metrics import accuracy_score, roc_auc_score


def _quick(spec: str, root, **data) -> object:
    return build_config({"data": {"spec": spec, "root": str(root), **data}, "model": {"name": "cnn_small"},
                         "train": {"epochs": 2, "tracking_uri": "none", "progress": False}})


@pytest.fixture(scope="module")
def breast_run(medmnist_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "breast"
    train(_quick("breastmnist", medmnist_root), run)
    return run


@pytest.mark.integration
def test_evaluate_writes_every_file_and_the_result_file_rescores(breast_run, medmnist_root, capsys):
    assert main(["evaluate", str(breast_run), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    folder = breast_run / "eval" / "test"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["schema_version"] == 2 and metrics["split"] == "test" and metrics["n"] == 156
    assert metrics["data"] == "breastmnist@28" and metrics["class_names"] == ["malignant", "normal, benign"]
    # Same test metrics as training's own end-of-run evaluation of the best checkpoint.
    trained = json.loads((breast_run / "metrics.json").read_text())["test"]
    assert metrics["acc"] == pytest.approx(trained["acc"], abs=1e-12)
    assert metrics["auc"] == pytest.approx(trained["auc"], abs=1e-12)
    ci = metrics["ci"]["auc"]
    assert ci["lower"] <= metrics["auc"] <= ci["upper"] and ci["n_resamples"] <= 200

    # The official result file: its name carries the scores, and its rows re-score to them.
    [result] = folder.glob("breastmnist_test_*@breast.csv")
    parts = parse_result_name(result)
    assert (parts["flag"], parts["split"], parts["run"]) == ("breastmnist", "test", "breast")
    index, y_score = read_medmnist_result(result)
    assert index.tolist() == list(range(156)) and y_score.shape == (156, 2)
    assert result.read_bytes().startswith(b"\xef\xbb\xbf")  # utf_8_sig, as the MedMNIST v1 writer
    import pandas as pd  # how other tools read such a file: the same score matrix, row by row

    table = pd.read_csv(result, header=None, index_col=0, encoding="utf-8-sig")
    assert table.index.tolist() == list(range(156))
    np.testing.assert_allclose(table.to_numpy(), result_scores(breast_run), atol=1e-6)
    labels = np.load(medmnist_root / "breastmnist.npz")["test_labels"].reshape(-1)
    assert roc_auc_score(labels, y_score, task=Task.BINARY) == pytest.approx(metrics["auc"], abs=1e-7)
    assert accuracy_score(labels, y_score, task=Task.BINARY) == pytest.approx(metrics["acc"], abs=1e-12)
    assert parts["auc"] == float(f"{metrics['auc']:.3f}") and parts["acc"] == float(f"{metrics['acc']:.3f}")

    with (folder / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 156 and list(rows[0]) == ["id", "true", "predicted", "p_malignant", "p_normal, benign"]
    assert sum(r["true"] == r["predicted"] for r in rows) / 156 == pytest.approx(metrics["acc"])
    # The printed summary: ACC and AUC with their intervals, then the per-class table.
    assert f"ACC {metrics['acc']:.3f} [" in out and f"AUC {metrics['auc']:.3f} [" in out
    assert "malignant" in out and "macro avg" in out and "specificity" in out


@pytest.mark.integration
def test_evaluate_val_split_is_the_runs_own(breast_run):
    result = evaluate_run(breast_run, split="val", n_bootstrap=0)
    assert result.metrics["n"] == 78 and result.metrics["ci"] == {}
    assert result.folder == breast_run / "eval" / "val"


def result_scores(run) -> np.ndarray:
    """The test probabilities as predictions.csv holds them (independent of the result-file writer)."""
    with (run / "eval" / "test" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(r["p_malignant"]), float(r["p_normal, benign"])] for r in rows])


def _breast_folder(root, medmnist_root, edge: int) -> str:
    """BreastMNIST images as train/ and test/ class folders of PNGs at ``edge`` px (another 'site')."""
    from PIL import Image

    arrays = np.load(medmnist_root / "breastmnist.npz")
    names = ["malignant", "normal, benign"]
    for split, count in (("train", 40), ("test", 60)):
        for i in range(count):
            label = int(arrays[f"{split}_labels"][i, 0])
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arrays[f"{split}_images"][i]).resize((edge, edge)).save(folder / f"{i}.png")
    return f"folder:{root}"


@pytest.mark.integration
def test_evaluate_on_other_data(breast_run, medmnist_root, tmp_path, capsys):
    # Same classes from another source at another size: resized to the model's 28 px.
    spec = _breast_folder(tmp_path / "site", medmnist_root, edge=56)
    result = evaluate_run(breast_run, data=spec, n_bootstrap=0)
    assert result.metrics["n"] == 60 and result.folder.name == "test@site"
    assert result.images.images.shape[1:] == (1, 28, 28)
    labels = np.load(medmnist_root / "breastmnist.npz")["test_labels"][:60, 0]
    assert sorted(result.predictions.y_true.tolist()) == sorted(labels.tolist())
    # Other classes: one clear line, nothing written.
    code = main(["evaluate", str(breast_run), "--data", "pneumoniamnist", "--root", str(medmnist_root)])
    err = single_line(capsys.readouterr().err.strip())
    assert code == 1 and "pneumoniamnist" in err and "malignant" in err
    assert not list(breast_run.glob("eval/test@pneumonia*"))
    # Same classes, other dimensions: refused.
    assert main(["evaluate", str(breast_run), "--data", "adrenalmnist3d", "--root", str(medmnist_root)]) == 1
    assert "adrenalmnist3d" in single_line(capsys.readouterr().err.strip())


def test_evaluate_bad_input_is_one_line(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 1
    assert "not a finished medlens run folder" in single_line(capsys.readouterr().err.strip())
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path), "--split", "holdout"])


@pytest.mark.integration
def test_evaluate_covid_folder_prints_per_class_table_with_cis(shared_data, tmp_path, capsys):
    run = tmp_path / "covid"
    cfg = build_config({"data": {"spec": f"folder:{shared_data / 'covid19'}", "size": 28},
                        "model": {"name": "cnn_small"},
                        "train": {"epochs": 2, "tracking_uri": "none", "progress": False}})
    train(cfg, run)
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    names = metrics["class_names"]
    assert len(names) == 3 and metrics["task"] == "multiclass"
    for name in names:
        assert any(line.startswith(name) for line in out.splitlines()), name
    for key in ("acc", "auc", "macro_f1"):
        ci = metrics["ci"][key]
        assert ci["n_resamples"] > 900 and ci["lower"] <= ci["upper"]
    assert "ACC" in out and "[" in out and "balanced accuracy" in out
    with (run / "eval" / "test" / "predictions.csv").open() as handle:
        first = next(csv.DictReader(handle))
    assert "/" in first["id"] or first["id"].endswith((".png", ".jpg", ".jpeg"))  # file names, not row numbers
    [result] = (run / "eval" / "test").glob("covid19_test_*@covid.csv")
    assert read_medmnist_result(result)[1].shape == (metrics["n"], 3)


@pytest.mark.integration
def test_compare_with_published_medmnist_rows(breast_run, tmp_path, capsys):
    out_json = tmp_path / "compare.json"
    assert main(["compare", str(breast_run), "--benchmark", "medmnist", "--bootstrap", "200",
                 "--out", str(out_json)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    [row] = result["runs"]
    assert row["params"] > 1000 and row["flops"] > 2 * row["params"] and row["seconds"] > 0
    methods = [entry["method"] for entry in result["published"]["breastmnist"]]
    assert methods[0] == "ResNet-18 (28)" and "Google AutoML Vision" in methods and len(methods) == 7
    resnet = result["published"]["breastmnist"][0]
    assert (resnet["auc"], resnet["acc"]) == (0.901, 0.863)
    versus = resnet["versus"]["breast"]
    assert versus["auc_delta"] == pytest.approx(row["auc"] - 0.901)
    ci = row["ci"]["auc"]
    assert versus["auc_ci_excludes"] == (1 if ci["lower"] > 0.901 else -1 if ci["upper"] < 0.901 else 0)
    assert "ResNet-18 (28)" in out and "0.901" in out and "FLOPs/img" in out
    assert math.isfinite(row["auc"])
