"""`medlens cv` (k-fold, resumable) and `medlens train --seeds` on BreastMNIST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import single_line
from medlens.cli import main
from medlens.engine.config import build_config, load_run_config, resolve_data

REPO = Path(__file__).resolve().parents[2]
QUICK = ["--model", "cnn_small", "--tracking-uri", "none", "--no-progress", "--batch-size", "64"]


@pytest.mark.integration
def test_folds_partition_train_and_val_and_keep_test(medmnist_root):
    base = {"spec": "breastmnist", "root": str(medmnist_root), "folds": 5}
    vals, trains = [], []
    for k in range(5):
        source = resolve_data(build_config({"data": {**base, "fold": k}}).data)
        vals.append(set(source.splits["val"].ids))
        trains.append(set(source.splits["train"].ids))
        assert len(source.splits["test"]) == 156 and source.split_method == f"official+fold{k}/5"
        assert not vals[-1] & trains[-1]
        counts = source.splits["val"].class_counts(2)
        assert abs(counts[0] / counts.sum() - 168 / 624) < 0.02  # stratified: malignant share kept
    assert sum(len(v) for v in vals) == 624 and len(set().union(*vals)) == 624  # disjoint, cover train+val


@pytest.mark.integration
@pytest.mark.slow
def test_cv_five_folds_writes_summary(medmnist_root, tmp_path, capsys):
    parent = tmp_path / "cv"
    assert main(["cv", "breastmnist", "--root", str(medmnist_root), "--folds", "5", "--epochs", "2",
                 *QUICK, "--out", str(parent)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((parent / "cv_summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == [f"fold{k}" for k in range(5)]
    for k in range(5):
        assert (parent / f"fold{k}" / "checkpoints" / "best.safetensors").is_file()
        assert load_run_config(parent / f"fold{k}").data.fold == k
    aucs = np.array([r["val_auc"] for r in summary["runs"]])
    assert summary["summary"]["val_auc"]["mean"] == pytest.approx(aucs.mean())
    assert summary["summary"]["val_auc"]["std"] == pytest.approx(aucs.std(ddof=1))
    assert summary["summary"]["test_auc"]["n"] == 5
    assert "mean ± std" in out and "fold4" in out


@pytest.mark.integration
@pytest.mark.slow
def test_interrupted_cv_resumes_without_retraining_finished_folds(medmnist_root, tmp_path):
    parent = tmp_path / "cv"
    args = [sys.executable, "-m", "medlens", "cv", "breastmnist", "--root", str(medmnist_root), "--folds", "3",
            "--epochs", "4", *QUICK, "--out", str(parent)]
    victim = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ})
    history = parent / "fold1" / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (history.is_file() and len(history.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert (parent / "fold0" / "metrics.json").is_file(), "fold 0 must have finished before the kill"
    assert not (parent / "fold1" / "metrics.json").exists(), "the kill must land inside fold 1"
    kept = {p: p.stat().st_mtime_ns for p in (parent / "fold0").rglob("*") if p.is_file()}

    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "fold0: finished earlier, kept" in again.stderr and "fold1: resuming" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished fold was touched"
    summary = json.loads((parent / "cv_summary.json").read_text())
    assert len(summary["runs"]) == 3 and all(r["val_auc"] is not None for r in summary["runs"])


def test_cv_refuses_a_folder_of_another_group(medmnist_root, tmp_path, capsys):
    parent = tmp_path / "cv"
    parent.mkdir()
    (parent / "notes.txt").write_text("mine")
    assert main(["cv", "breastmnist", "--root", str(medmnist_root), "--folds", "3", *QUICK,
                 "--out", str(parent)]) == 1
    assert "not a medlens cv group" in single_line(capsys.readouterr().err.strip())
    assert main(["cv", "breastmnist", "--root", str(medmnist_root), "--folds", "1", *QUICK,
                 "--out", str(tmp_path / "x")]) == 1
    assert "--folds must be an integer >= 2" in capsys.readouterr().err


@pytest.mark.integration
def test_train_seeds_reports_mean_and_std(medmnist_root, tmp_path, capsys):
    parent = tmp_path / "seeds"
    assert main(["train", "breastmnist", "--root", str(medmnist_root), "--epochs", "1", "--seed", "7",
                 "--seeds", "3", *QUICK, "--out", str(parent)]) == 0
    summary = json.loads((parent / "seeds_summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["seed7", "seed8", "seed9"]
    assert [load_run_config(parent / r["name"]).train.seed for r in summary["runs"]] == [7, 8, 9]
    accs = [r["test_acc"] for r in summary["runs"]]
    assert summary["summary"]["test_acc"]["mean"] == pytest.approx(np.mean(accs))
    assert "mean ± std" in capsys.readouterr().out


def test_a_group_record_from_before_a_new_config_field_still_matches():
    from medlens.engine.config import build_config
    from medlens.workflows.groups import _normalised

    cfg = build_config({"data": {"spec": "breastmnist"}, "model": {"name": "cnn_small"}})
    record = {"kind": "seeds", "members": {"seed0": cfg.to_dict()}}
    older = json.loads(json.dumps(record))
    del older["members"]["seed0"]["data"]["correct_priors"]  # written before the field existed
    assert _normalised(older) == json.loads(json.dumps(record))
    changed = json.loads(json.dumps(record))
    changed["members"]["seed0"]["optim"]["lr"] = 0.5
    assert _normalised(changed) != json.loads(json.dumps(record))
    assert _normalised({"kind": "cv", "members": {"f0": {"nonsense": {}}}})["members"] == {"f0": {"nonsense": {}}}
