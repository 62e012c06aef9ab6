"""Runs stopped by signals, run-folder locks, the MLflow first-use race, NaN losses and diverged runs (issue 20)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from medlens.cli import main
from medlens.engine.config import build_config, write_yaml
from medlens.engine.run_folder import RunFolder
from medlens.engine.tracking import read_history
from medlens.engine.train import _no_better_than_chance

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medlens", *args], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train_args(root: Path, out: Path, epochs: int = 6) -> list[str]:
    return ["train", "breastmnist", "--root", str(root), "--model", "cnn_small", "--epochs", str(epochs),
            "--batch-size", "32", "--seed", "3", "--tracking-uri", "none", "--no-progress", "--no-report",
            "--out", str(out)]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_at_a_safe_point_and_says_how_to_continue(medmnist_root, tmp_path, sig, code):
    """After SIGTERM training finished the epoch and exited 0 (a scheduler saw success); after SIGINT 1."""
    run = tmp_path / "run"
    victim = _cli(*_train_args(medmnist_root, run))
    history = run / "history.csv"
    deadline = time.monotonic() + 300
    while not (history.is_file() and len(history.read_text().splitlines()) >= 2):  # one finished epoch
        assert time.monotonic() < deadline and victim.poll() is None, victim.communicate()
        time.sleep(0.02)
    victim.send_signal(sig)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == code, err[-2000:]
    done = len(read_history(history))
    assert 1 <= done < 6
    assert f"interrupted after epoch {done}; continue with `medlens train --resume {run}`" in err
    assert "Traceback" not in err and not (run / "metrics.json").exists()
    resumed = _cli("train", "--resume", str(run), "--no-report")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert [row["epoch"] for row in read_history(history)] == list(range(6))


@pytest.mark.integration
def test_a_run_being_trained_is_locked_against_a_second_trainer(tmp_path, medmnist_root):
    run = tmp_path / "run"
    run.mkdir()
    write_yaml(build_config({"data": {"spec": "breastmnist", "root": str(medmnist_root)},
                             "model": {"name": "cnn_small"}, "train": {"epochs": 1, "tracking_uri": "none"}}),
               RunFolder(run).config)
    with RunFolder(run).training_lock():  # this process trains it
        second = _cli("train", "--resume", str(run), "--no-report")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 1
        lines = [line for line in err.splitlines() if line.startswith("medlens: error")]
        assert lines == [f"medlens: error: {run} is being trained by another process now (it holds .train.lock); "
                         "wait for it to finish, or stop it and resume afterwards"], err
        with pytest.raises(ValueError, match="being trained by another process"):
            with RunFolder(run).training_lock():
                pass
    with RunFolder(run).training_lock():  # released: the next trainer gets it
        pass
    # Two new runs into one folder at once: the refused one must not remove what the other started.
    from medlens.engine.train import train

    fresh = tmp_path / "fresh"
    config = build_config({"data": {"spec": "breastmnist", "root": str(medmnist_root)}, "model": {"name": "cnn_small"},
                           "train": {"epochs": 1, "tracking_uri": "none", "progress": False}})
    with RunFolder(fresh).training_lock():
        (fresh / "train.log").write_text("the first process is starting\n")
        with pytest.raises(ValueError, match="being trained by another process"):
            train(config, fresh)
        assert (fresh / "train.log").read_text() == "the first process is starting\n"


@pytest.mark.slow
def test_two_first_uses_of_a_new_mlflow_store_both_succeed(tmp_path):
    """Two runs started together on a new mlflow.db crashed one of them in 3 of 3 tries."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from medlens.engine.tracking import Tracker
        start = float(sys.argv[2])
        while time.time() < start:
            time.sleep(0.001)
        tracker = Tracker("sqlite:///{tmp_path}/runs/mlflow.db", Path("{tmp_path}/runs") / sys.argv[1], {{"a": 1}})
        tracker.finish([])
    """)
    start = str(time.time() + 8)  # both past their imports, then at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", script, name, start], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for name in ("a", "b"):
        (tmp_path / "runs" / name).mkdir(parents=True, exist_ok=True)
    results = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-1500:] for _, err in results]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/runs/mlflow.db")
    experiment = client.get_experiment_by_name("medlens")
    assert len(client.search_runs([experiment.experiment_id])) == 2


@pytest.mark.integration
def test_a_non_finite_loss_is_one_line_and_a_non_zero_exit(medmnist_root, tmp_path, monkeypatch, capsys):
    from medlens.engine import losses

    real = losses.create_loss

    def exploding(*args, **kwargs):
        loss = real(*args, **kwargs)
        forward = loss.forward
        loss.forward = lambda logits, target: forward(logits, target) * float("nan")
        return loss

    monkeypatch.setattr(losses, "create_loss", exploding)
    assert main(_train_args(medmnist_root, tmp_path / "run", epochs=1)) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medlens: error")]
    assert len(lines) == 1 and "the training loss became nan at epoch 0, batch 0: lower --lr" in lines[0], lines


def test_no_better_than_chance_is_constant_or_non_finite_scores():
    assert _no_better_than_chance(torch.full((50, 2), 0.5).numpy()) is not None
    assert "not finite" in _no_better_than_chance(torch.tensor([[0.1, float("nan")], [0.2, 0.8]]).numpy())
    # A weak model that still ranks images is not flagged, whatever its AUC.
    assert _no_better_than_chance(torch.tensor([[0.49, 0.51], [0.51, 0.49]]).numpy()) is None


@pytest.mark.integration
def test_a_diverged_run_is_stated_and_exits_non_zero(medmnist_root, tmp_path, monkeypatch, capsys):
    """A diverged run (loss 1e30, AUC .5) was saved as if fine."""
    from medlens.engine import train as train_module

    def frozen_model(*args, **kwargs):  # every image gets the same scores: what a diverged run gives
        model, loss, *rest = real(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.register_hook(lambda grad: torch.zeros_like(grad))
                torch.nn.init.zeros_(module.weight)
        return (model, loss, *rest)

    real = train_module.model_and_loss
    monkeypatch.setattr(train_module, "model_and_loss", frozen_model)
    run = tmp_path / "run"
    assert main(_train_args(medmnist_root, run, epochs=1)) == 1
    err = capsys.readouterr().err
    assert "is no better than chance: it gives every validation image the same scores" in err
    assert json.loads((run / "metrics.json").read_text())["diverged"].startswith("it gives every validation image")


def test_a_full_disk_under_train_log_is_one_warning_not_a_traceback_per_line(tmp_path, capsys):
    import errno
    import logging

    from medlens.engine.train import _setup_log, log

    handler = _setup_log(tmp_path, rank=0)

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    handler.stream = FullDisk()
    try:
        for i in range(3):
            log.info("epoch %d", i)
    finally:
        log.removeHandler(handler)
        handler.stream = None
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    assert err.count("\n") == 1 and "cannot write" in err and "No space left on device" in err
    assert logging.getLogger("medlens") is log
