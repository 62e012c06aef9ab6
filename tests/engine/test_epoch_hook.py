"""The engine's per-epoch hook (what a search's pruner listens to) and the MLflow tags of a run."""

from __future__ import annotations

import math
import sqlite3

import pytest

from helpers import quick_config
from medlens.engine.run_folder import RunFolder
from medlens.engine.train import train


@pytest.mark.integration
def test_hook_sees_every_epoch_and_stops_the_run_which_still_finishes(medmnist_root, tmp_path):
    seen = []

    def hook(epoch: int, metrics: dict) -> bool:
        seen.append((epoch, metrics["val_auc"], metrics["val_loss"]))
        return epoch == 1  # stop after the second epoch

    config = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root), "batch_size": 64},
                          train={"epochs": 5})
    result = train(config, tmp_path / "run", on_epoch=hook)
    assert [epoch for epoch, _, _ in seen] == [0, 1]
    assert all(math.isfinite(auc) and math.isfinite(loss) for _, auc, loss in seen)
    assert result.metrics["epochs_run"] == 2 and RunFolder(tmp_path / "run").is_finished
    history = RunFolder(tmp_path / "run").history.read_text().splitlines()
    assert len(history) == 3 and abs(float(history[2].split(",")[6]) - seen[1][1]) < 1e-4


@pytest.mark.integration
def test_tracking_tags_nest_a_run_under_another(medmnist_root, tmp_path):
    config = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root), "batch_size": 64},
                          train={"epochs": 1, "tracking_uri": None})
    train(config, tmp_path / "child", tracking_tags={"mlflow.parentRunId": "abc123"})
    with sqlite3.connect(RunFolder(tmp_path / "child").tracking_db) as db:
        tags = db.execute("select t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                          "where r.name = 'child' and t.key = 'mlflow.parentRunId'").fetchall()
    assert tags == [("abc123",)]
