"""Out-of-distribution flags end to end: fitted at the end of training, refit by `medlens ood fit`,
carried by `medlens predict` (ood_score, ood columns) and by the server (each result)."""

from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest
from PIL import Image

from medlens.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pngs(medmnist_root, tmp_path_factory):
    """Six BreastMNIST test images and six uniform-noise images, as PNG files."""
    folder = tmp_path_factory.mktemp("ood-pngs")
    own = np.load(medmnist_root / "breastmnist.npz")["test_images"][:6]
    noise = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    paths = {"own": [], "noise": []}
    for kind, images in (("own", own), ("noise", noise)):
        for i, image in enumerate(images):
            paths[kind].append(folder / f"{kind}_{i}.png")
            Image.fromarray(image).save(paths[kind][-1])
    return paths


def test_training_fits_a_detector_that_flags_the_requested_share_of_val(breast_run):
    card = json.loads((breast_run / "checkpoints" / "ood.json").read_text())
    assert card["method"] == "mahalanobis" and card["share"] == 0.05 and card["n_train"] == 546
    assert card["n_val"] == 78 and 0.05 - 1 / 78 <= card["val_flagged"] <= 0.05
    assert (breast_run / "checkpoints" / "ood.safetensors").is_file()


def test_ood_fit_refits_with_another_share(breast_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(breast_run, run)
    assert main(["ood", "fit", str(run), "--share", "0.2"]) == 0
    assert "flags 19.2% of val (asked 20.0%)" in capsys.readouterr().out  # 15 of 78
    card = json.loads((run / "checkpoints" / "ood.json").read_text())
    assert card["share"] == 0.2 and card["val_flagged"] == pytest.approx(15 / 78)


def test_predict_carries_ood_columns_and_flags_noise(breast_run, pngs, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(breast_run), *map(str, pngs["own"] + pngs["noise"]), "--out", str(out)]) == 0
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[-2:] == ["ood_score", "ood"]
    flagged = {row["file"]: row["ood"] == "True" for row in rows}
    assert all(flagged[str(p)] for p in pngs["noise"])  # noise is nothing like an ultrasound image
    threshold = json.loads((breast_run / "checkpoints" / "ood.json").read_text())["threshold"]
    assert all((float(row["ood_score"]) > threshold) == (row["ood"] == "True") for row in rows)
    assert "flagged ood" in capsys.readouterr().err


def test_a_detector_fitted_on_other_weights_is_refused(breast_run, tmp_path):
    import shutil

    from medlens.serve.predictor import Predictor

    run = tmp_path / "copy"
    shutil.copytree(breast_run, run)
    card = json.loads((run / "checkpoints" / "ood.json").read_text())
    (run / "checkpoints" / "ood.json").write_text(json.dumps({**card, "weights_sha256": "0" * 64}))
    predictor = Predictor.load(run)
    assert predictor.ood is None and "fitted on other weights" in predictor.ood_reason
    assert "ood fit" in predictor.ood_reason


def test_server_adds_the_flag_to_each_result(breast_run, pngs):
    from fastapi.testclient import TestClient

    from medlens.serve.app import create_app
    from medlens.serve.predictor import Predictor

    predictor = Predictor.load(breast_run)
    with TestClient(create_app(predictor)) as client:
        deadline = time.monotonic() + 20
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in pngs["own"][:2] + pngs["noise"][:2]]
        predictions = client.post("/v1/predict", files=files).json()["predictions"]
        info = client.get("/v1/model").json()
    assert [p["ood"] for p in predictions[2:]] == [True, True]
    assert all(p["ood"] == (p["ood_score"] > predictor.ood.threshold) for p in predictions)
    assert info["ood"]["method"] == "mahalanobis" and info["ood"]["threshold"] == predictor.ood.threshold


def test_report_shows_the_val_and_test_score_distribution(breast_run, tmp_path):
    from medlens.report.html import build_report

    page = build_report(breast_run, out=tmp_path / "report.html", gallery=0, figures=False).read_text()
    section = page[page.index("<h2>Out-of-distribution scores</h2>"):]
    section = section[:section.index("</section>")]
    assert section.count("class=plot") == 1 and "flags 5.0% of validation images" in section
    assert "val (" in section and "test (" in section and "flagged)" in section


def test_onnx_backend_refuses_the_flag_with_a_reason(breast_run, pngs, tmp_path):
    import shutil

    from medlens.serve.files import predict_files
    from medlens.serve.predictor import Predictor

    run = tmp_path / "copy"
    shutil.copytree(breast_run, run)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    predictor = Predictor.load(run, backend="onnx")
    assert predictor.ood is None and "ONNX export has no feature output" in predictor.ood_reason
    assert predictor.info["ood"] == {"available": False, "reason": predictor.ood_reason}
    rows, failed = predict_files(predictor, pngs["noise"][:2])
    assert not failed and all("ood" not in row and "ood_score" not in row for row in rows)
