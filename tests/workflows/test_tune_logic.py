"""The search loop of `medlens tune` without training: a scripted engine stands in for
`engine.train`, so pruning, the exact trial count across workers and the takeover of a dead
worker's trial are checked in seconds and deterministically."""

from __future__ import annotations

import math
import sqlite3
from datetime import datetime, timedelta

import pytest

from helpers import quick_config
from medlens.engine.run_folder import RunFolder
from medlens.workflows import tune as tune_module
from medlens.workflows.tune import tune
from medlens.workflows.tune_space import parse_space

SPACE = parse_space({"optim.lr": {"uniform": [0.1, 0.9]}})
EPOCHS = 9


def _scripted_train(calls: list):
    """An engine whose trial scores ``lr`` at every epoch (so the pruner's choice is known)."""
    from medlens._io import write_json
    from medlens.engine.config import write_yaml
    from medlens.engine.tracking import write_history
    from medlens.engine.train import TrainResult

    def train(config, out, *, source=None, on_epoch=None, tracking_tags=None):
        folder = RunFolder(out)
        assert not folder.is_run, "a trial folder is trained once"
        out.mkdir(parents=True)
        write_yaml(config, folder.config)
        calls.append(out.name)
        rows = []
        for epoch in range(config.train.epochs):
            value = config.optim.lr
            rows.append({"epoch": epoch, "train_loss": 1.0, "train_acc": 0.5, "train_auc": 0.5, "val_loss": 1 - value,
                         "val_acc": value, "val_auc": value, "lr": value, "seconds": 0.01, "images_per_second": 1.0})
            if on_epoch(epoch, {"val_auc": value, "val_loss": 1 - value, "val_acc": value}):
                break
        write_history(rows, folder.history)
        metrics = {"epochs_run": len(rows), "best_epoch": 0, "seconds": 0.01 * len(rows),
                   "val": {"acc": value, "auc": value, "n": 10}, "test": {"acc": 0.0, "auc": 0.0, "n": 10}}
        write_json(folder.metrics, metrics)
        return TrainResult(out, metrics, folder.best)

    return train


@pytest.fixture
def scripted(monkeypatch):
    from medlens.engine import train as engine

    calls: list[str] = []
    monkeypatch.setattr(engine, "train", _scripted_train(calls))
    monkeypatch.setattr(tune_module._Sources, "get", lambda self, data: None)
    return calls


def _base():
    return quick_config(data={"spec": "breastmnist"}, train={"epochs": EPOCHS})


def test_trials_behind_the_others_are_pruned_and_kept_as_runs(scripted, tmp_path):
    summary = tune(_base(), tmp_path / "t", space=SPACE, trials=8, say=lambda m: None)
    rows = summary["trials"]
    assert len(rows) == 8 and summary["counts"]["complete"] + summary["counts"]["pruned"] == 8
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    assert pruned and complete
    for r in pruned:
        assert r["epochs_run"] < EPOCHS and RunFolder(tmp_path / "t").trial(r["number"]).is_finished
        # Pruned at a rung: some trial that reached that rung earlier scored higher there.
        rung = r["epochs_run"]
        earlier = [o["curve"].get(str(rung)) for o in rows if o["number"] < r["number"] and str(rung) in o["curve"]]
        assert any(v > r["value"] for v in earlier)
    for r in complete:
        assert r["epochs_run"] == EPOCHS and r["value"] == pytest.approx(r["params"]["optim.lr"])
    assert summary["best"]["value"] == max(r["value"] for r in complete)
    assert scripted == [f"{r['number']:03d}" for r in rows]


def test_a_running_trial_of_another_worker_counts_and_no_trial_past_n_runs(scripted, tmp_path):
    import optuna

    out = tmp_path / "t"
    tune(_base(), out, space=SPACE, trials=2, pruner="none", say=lambda m: None)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{RunFolder(out).study_db}")
    elsewhere = study.ask()  # another machine's trial, still running (heartbeat fresh)
    elsewhere.set_user_attr("host", "another-machine")
    study._storage.record_heartbeat(elsewhere._trial_id)
    summary = tune(_base(), out, space=SPACE, trials=3, pruner="none", say=lambda m: None)
    assert summary["counts"] == {"complete": 2, "pruned": 0, "fail": 0, "running": 1, "waiting": 0}
    assert len(scripted) == 2, "the claim past --trials was not trained"
    surplus = [t for t in study.get_trials() if t.user_attrs.get("surplus")]
    assert len(surplus) == 1 and surplus[0].state.name == "FAIL"
    assert not RunFolder(out).trial(surplus[0].number).path.exists()


def test_a_trial_whose_heartbeat_stopped_is_failed_and_its_values_run_again(scripted, tmp_path):
    import optuna

    out = tmp_path / "t"
    tune(_base(), out, space=SPACE, trials=1, pruner="none", say=lambda m: None)
    storage = f"sqlite:///{RunFolder(out).study_db}"
    study = optuna.load_study(study_name="t", storage=storage)
    dead = study.ask({"optim.lr": optuna.distributions.FloatDistribution(0.1, 0.9)})
    dead.set_user_attr("host", "another-machine")
    study._storage.record_heartbeat(dead._trial_id)
    stale = datetime.now() - timedelta(seconds=tune_module.GRACE_S * 3)
    with sqlite3.connect(RunFolder(out).study_db) as db:
        db.execute("update trial_heartbeats set heartbeat = ?", (stale.strftime("%Y-%m-%d %H:%M:%S.%f"),))
    lines = []
    summary = tune(_base(), out, space=SPACE, trials=2, pruner="none", say=lines.append)
    states = {r["number"]: r["state"] for r in summary["trials"]}
    assert states[dead.number] == "FAIL"
    retry = [r for r in summary["trials"] if r["retry_of"] == dead.number]
    assert len(retry) == 1 and retry[0]["state"] == "COMPLETE"
    assert math.isclose(retry[0]["params"]["optim.lr"], dead.params["optim.lr"])
    assert any(f"(retry of {dead.number})" in line for line in lines)
