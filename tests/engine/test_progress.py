"""The one progress display of a training run, and early stopping by the best-epoch rule.

On a terminal (driven here through a pseudo-terminal, as a user's shell is) every epoch leaves a
bar with its loss, validation metric, speed and time left; piped into a file every epoch is one
plain line, and none of Lightning's own "Validation DataLoader" bars.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from medlens.engine.callbacks import RunRecorder
from helpers import write_tiny_npz

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return write_tiny_npz(tmp_path_factory.mktemp("progress") / "tiny.npz", sizes=(32, 8, 8), edge=16)


def _argv(tiny_npz: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medlens", "train", f"npz:{tiny_npz}", "--model", "cnn_small", "--epochs", "2",
            "--batch-size", "8", "--tracking-uri", "none", "--no-report", "--out", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "160", "TERM": "xterm"}


def _run_in_pty(argv: list[str], cwd: Path) -> str:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal; everything it wrote."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, cwd=cwd, env=_env(),
                            close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=300) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_shows_a_bar_per_epoch(tiny_npz, tmp_path):
    text = _run_in_pty(_argv(tiny_npz, tmp_path / "run"), tmp_path)
    # What stays on screen: the last state of each carriage-return-redrawn line.
    screen = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    for epoch in (0, 1):
        bars = [line for line in screen if line.startswith(f"epoch {epoch}/2 ")]
        assert len(bars) == 1, text
        assert re.search(r"4/4 \[[\d:]+<[\d:]+\], loss \d\.\d{4} val auc \S+ \d+ img/s ETA \d+s", bars[0]), bars[0]
    assert "Validation DataLoader" not in text and "test ACC" in text


@pytest.mark.slow
def test_a_pipe_gets_one_plain_line_per_epoch(tiny_npz, tmp_path):
    proc = subprocess.run(_argv(tiny_npz, tmp_path / "run"), capture_output=True, text=True, cwd=tmp_path,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 0/2", "epoch 1/2"], proc.stderr
    assert all(re.search(r"val loss \S+ ACC \S+ AUC \S+ \|", line) for line in epochs)
    assert "\r" not in proc.stderr and "Validation DataLoader" not in proc.stderr
    # --no-progress keeps its meaning: no per-epoch output (train.log still has every line).
    proc = subprocess.run(_argv(tiny_npz, tmp_path / "quiet", "--no-progress"), capture_output=True, text=True,
                          cwd=tmp_path, env=_env(), timeout=300)
    assert proc.returncode == 0 and not [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert (tmp_path / "quiet" / "train.log").read_text().count(": train loss") == 2


def _stopper(monitor: str = "val_acc", patience: int = 2) -> RunRecorder:
    return RunRecorder("unused", card=None, monitor=monitor, mode="min" if monitor == "val_loss" else "max",
                       tracker=None, patience=patience)


def _epoch(recorder: RunRecorder, epoch: int, value: float, loss: float) -> tuple[bool, bool]:
    """``(best, stop)`` of one epoch through the recorder's own rule."""
    trainer = SimpleNamespace(current_epoch=epoch, should_stop=False,
                              strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision))
    best = recorder._consider(epoch, value, loss)
    stop = recorder._should_stop(trainer)
    assert trainer.should_stop == stop
    return best, stop


def test_early_stopping_follows_the_best_epoch_rule():
    # The run: equal ACC at a lower loss, every epoch marked *best*: it must not stop.
    recorder = _stopper()
    for epoch, loss in enumerate([0.9, 0.8, 0.7, 0.6, 0.5]):
        assert _epoch(recorder, epoch, 0.75, loss) == (True, False)
    # Then two epochs without a new best: it stops exactly `patience` epochs after the last one.
    assert _epoch(recorder, 5, 0.75, 0.55) == (False, False)
    assert _epoch(recorder, 6, 0.70, 0.40) == (False, True)
    assert recorder.best_epoch == 4


def test_early_stopping_on_the_loss_and_never_without_patience():
    recorder = _stopper("val_loss", patience=1)
    assert _epoch(recorder, 0, 0.5, 0.5) == (True, False)
    assert _epoch(recorder, 1, 0.5, 0.5) == (False, True)  # an equal loss is no improvement
    recorder = _stopper(patience=None)
    for epoch in range(5):
        assert _epoch(recorder, epoch, math.nan, math.nan)[1] is False


@pytest.mark.slow
def test_early_stopping_says_why_and_when(tiny_npz, tmp_path):
    proc = subprocess.run(_argv(tiny_npz, tmp_path / "run", "--epochs", "6", "--early-stop", "1", "--lr", "1e-12",
                                "--monitor", "val_acc", "--no-progress"),
                          capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("early stopping after epoch")]
    assert len(said) == 1 and "no better val_acc" in said[0] and "since the best epoch" in said[0], proc.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    stopped_at = int(said[0].split("epoch ")[1].split(":")[0])
    assert log.count(": train loss") == stopped_at + 1 < 6
