"""The memory estimate before training, and the refusal of a run that would not fit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from helpers import single_line
from medlens.engine import memory
from medlens.engine.config import default_batch_size
from medlens.engine.memory import GB, MemoryEstimate, check_memory, estimate_memory
from medlens.models import create_model


def _source(n: int, size: int, dims: int):
    images = np.zeros((n, 1, *[size] * dims), np.uint8)
    return SimpleNamespace(size=size, splits={"train": SimpleNamespace(images=images),
                                              "val": SimpleNamespace(images=images[:2])})


def test_the_estimate_grows_with_the_batch_and_counts_every_part():
    model = create_model("cnn_small", in_channels=1, num_classes=2, spatial_dims=2, input_size=28)
    source = _source(10, 28, 2)
    small = estimate_memory(model, source, batch_size=8, optimizer="adam")
    large = estimate_memory(model, source, batch_size=64, optimizer="adam")
    weights = sum(p.numel() for p in model.parameters())
    assert small.parameters == weights * 4 * 4  # weights, gradients, two Adam moments
    assert estimate_memory(model, source, batch_size=8, optimizer="sgd").parameters == weights * 4 * 3
    assert large.activations == 8 * small.activations
    assert small.data == 12 * 28 * 28 and model.training  # the probe leaves the model in training mode


def test_a_run_above_the_share_is_refused_with_the_estimate_and_what_to_change():
    estimate = MemoryEstimate(parameters=int(1 * GB), activations=int(9 * GB), data=int(2 * GB), device="cpu")
    with pytest.raises(ValueError) as err:
        check_memory(estimate, total=int(16 * GB), share=0.6, batch_size=128, size=64, spatial_dims=3)
    text = single_line(err.value)
    assert "about 12.0 GB" in text and "60% of this machine's 16.0 GB" in text
    assert "--batch-size 32" in text and "--size 28" in text and "train.memory_share" in text
    check_memory(estimate, total=int(21 * GB), share=0.6, batch_size=128, size=64, spatial_dims=3)  # 12 <= 12.6
    check_memory(estimate, total=int(1 * GB), share=0, batch_size=128, size=64, spatial_dims=3)  # 0: no check
    # On a GPU the data stays in the host's memory.
    gpu = MemoryEstimate(parameters=int(1 * GB), activations=int(9 * GB), data=int(200 * GB), device="cuda")
    check_memory(gpu, total=int(17 * GB), share=0.6, batch_size=128, size=64, spatial_dims=3)


def test_3d_data_gets_a_3d_sized_batch():
    assert default_batch_size(2) == 128 and default_batch_size(3) == 32


@pytest.fixture()
def volumes_npz(tmp_path):
    """The issue's case in small: a few 3D volumes at 64³."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 64, 64, 64), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    path = tmp_path / "volumes.npz"
    np.savez(path, **arrays)
    return path


def test_training_that_would_not_fit_is_refused_before_it_starts(volumes_npz, tmp_path, monkeypatch, capsys):
    from medlens.cli import main

    monkeypatch.setattr(memory, "machine_memory", lambda device="cpu": int(16 * GB))
    out = tmp_path / "run"
    code = main(["train", f"npz:{volumes_npz}", "--model", "resnet18", "--batch-size", "128", "--epochs", "1",
                 "--tracking-uri", "none", "--no-report", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "medlens: error: this run needs about" in err and "--batch-size 32" in err, err
    assert not out.exists()  # nothing left behind
