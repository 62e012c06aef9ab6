"""Ensembles (``train.members`` K > 1): members, the averaged checkpoint, resume, the time limit."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import RUN_FILES, quick_config, single_line
from medlens.cli import main
from medlens.engine.checkpoint import load_card, load_model
from medlens.engine.config import load_run_config
from medlens.workflows import resume, train



def test_ensemble_metrics_json_writes_nan_as_null(tmp_path):
    from pathlib import Path
    from types import SimpleNamespace

    from medlens.engine.run_folder import RunFolder
    from medlens.workflows.ensemble import _write_metrics

    nan = float("nan")
    member = {"best_epoch": 3, "epochs_run": 5, "seconds": 2.0, "train_images_per_second": 100.0,
              "val": {"acc": 1.0, "auc": nan, "n": 3}, "test": {"acc": 0.5, "auc": 0.75, "n": 4}}
    results = {"val": {"acc": 1.0, "auc": nan, "n": 3}, "test": {"acc": 0.5, "auc": 0.8, "n": 4}}
    run = RunFolder(tmp_path / "ens")
    _write_metrics(quick_config(data={"spec": "breastmnist"}, train={"members": 2}), run.path,
                   SimpleNamespace(spec="breastmnist@28"), [(run.member(0).path, member), (run.member(1).path, member)],
                   results)
    stored = json.loads(run.metrics.read_text(), parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert stored["val"]["auc"] is None and stored["members"][0]["val"]["auc"] is None
    assert [m["run"] for m in stored["members"]] == ["members/m0", "members/m1"]
    assert Path(run.path / stored["members"][1]["run"]) == run.member(1).path
    back = run.read_metrics()
    assert back["val"]["auc"] != back["val"]["auc"] and back["test"]["auc"] == 0.8


@pytest.mark.integration
def test_ensemble_members_resume_and_average(medmnist_root, tmp_path):
    """``train.members 2``: two member runs, one ensemble checkpoint that averages their probabilities."""
    from medlens.workflows.ensemble import member_seed
    from medlens.inference.predict import predict

    run = tmp_path / "ens"
    cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root)}, train={"epochs": 2, "members": 2})
    result = train(cfg, run)
    for name in ("config.yaml", "splits.json", "train.log", "metrics.json", "checkpoints/best.safetensors"):
        assert (run / name).is_file(), name
    for i in range(2):
        for name in RUN_FILES:
            assert (run / "members" / f"m{i}" / name).is_file(), (i, name)
    seeds = [load_run_config(run / "members" / f"m{i}").train.seed for i in range(2)]
    assert seeds == [0, member_seed(0, 1)] and seeds[1] != 1  # no member shared with the run of seed 1
    metrics = result.metrics
    assert metrics["model"] == "ensemble" and [m["run"] for m in metrics["members"]] == ["members/m0", "members/m1"]
    assert metrics["epochs_run"] == 4 and metrics["test"]["n"] == 156

    ensemble, card = load_model(run)
    assert card.architecture == "ensemble" and card.model_kwargs["member"] == "cnn_small"
    assert card.model_kwargs["members"] == 2 and card.model_kwargs["combine"] == "softmax"
    members = [load_model(run / "members" / f"m{i}")[0] for i in range(2)]
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        torch.testing.assert_close(ensemble(x).softmax(1), expected)
    # The score in metrics.json is the ensemble's, not a member's.
    from medlens.data.registry import Task
    from medlens.data.source import resolve
    from medlens.metrics import roc_auc_score

    test = resolve("breastmnist", root=str(medmnist_root)).splits["test"]
    scores = predict(ensemble, test, task=Task(card.task), mean=card.normalisation["mean"],
                     std=card.normalisation["std"])
    assert roc_auc_score(scores.y_true, scores.y_score, task=Task(card.task)) == pytest.approx(metrics["test"]["auc"])

    # Grad-CAM, the report and ONNX export take the ensemble like any model.
    from medlens.explain.gradcam import gradcam
    from medlens.report.html import build_report

    maps = gradcam(ensemble, torch.rand(2, 1, 28, 28))
    assert maps.shape == (2, 28, 28) and maps.max() > maps.min()
    page = build_report(run, gallery=8, n_bootstrap=50).read_text()
    assert "Ensemble of 2 members" in page and "members/m1" in page
    from medlens.serve.onnx_export import export_onnx

    assert export_onnx(run, root=medmnist_root, n_verify=32).is_file()  # verified against torch to 1e-4

    # Interrupted after member 0: resume keeps it and trains member 1 only.
    kept = (run / "members" / "m0" / "checkpoints" / "best.safetensors").stat().st_mtime_ns
    import shutil

    shutil.rmtree(run / "members" / "m1")
    (run / "metrics.json").unlink()
    again = resume(run)
    assert (run / "members" / "m0" / "checkpoints" / "best.safetensors").stat().st_mtime_ns == kept
    assert again.metrics["test"] == metrics["test"]  # member 1 retrained with its seed: the same weights


@pytest.mark.integration
def test_ensemble_stops_adding_members_the_time_left_would_starve(medmnist_root, tmp_path):
    run = tmp_path / "ens"
    cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root)},
                  train={"epochs": 1, "members": 2, "max_seconds": 600})
    train(cfg, run)
    # As if member 0 had used more than the whole limit and the run then stopped: member 1 would
    # get nothing, so the ensemble is made of member 0 alone, and says so.
    import shutil

    shutil.rmtree(run / "members" / "m1")
    (run / "metrics.json").unlink()
    kept = json.loads((run / "members" / "m0" / "metrics.json").read_text())
    (run / "members" / "m0" / "metrics.json").write_text(json.dumps({**kept, "seconds": 10_000.0}))
    result = resume(run)
    assert [m["run"] for m in result.metrics["members"]] == ["members/m0"] and result.metrics["members_planned"] == 2
    assert not (run / "members" / "m1").exists()
    assert "ensemble: stopping at 1 members" in (run / "train.log").read_text()
    assert load_card(run / "checkpoints" / "best.json").model_kwargs["members"] == 1


@pytest.mark.integration
def test_ensemble_bad_option_leaves_nothing_and_ensemble_is_not_trained_directly(medmnist_root, tmp_path, capsys):
    run = tmp_path / "bad"
    with pytest.raises(ValueError, match="has no option bogus"):
        train(quick_config(data={"spec": "breastmnist", "root": str(medmnist_root)},
                      model={"name": "cnn_small", "kwargs": {"bogus": 1}}, train={"members": 2}), run)
    assert not run.exists()
    code = main(["train", "breastmnist", "--root", str(medmnist_root), "--model", "ensemble", "--out", str(run),
                 "--tracking-uri", "none", "--no-progress"])
    assert code != 0 and not run.exists()
    message = single_line(capsys.readouterr().err.strip())
    assert message.startswith("medlens: error: model 'ensemble' is assembled from trained")


@pytest.mark.integration
def test_seeds_of_ensembles_report(medmnist_root, tmp_path, capsys):
    out = tmp_path / "group"
    assert main(["train", "breastmnist", "--root", str(medmnist_root), "--model", "cnn_small", "--epochs", "1",
                 "--members", "2", "--seeds", "2", "--out", str(out), "--tracking-uri", "none", "--no-progress"]) == 0
    assert (out / "report.html").is_file() and (out / "seeds_summary.json").is_file()
    assert "members' best epochs" not in capsys.readouterr().out  # the group prints its own table


def test_ensemble_refuses_ddp():
    with pytest.raises(ValueError, match="train.members 2 trains its members one after another"):
        quick_config(data={"spec": "breastmnist"}, train={"members": 2, "strategy": "ddp", "devices": 2})
