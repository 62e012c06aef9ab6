"""Trained runs shared by the serving tests: 1-epoch models on real BreastMNIST (2D) and AdrenalMNIST3D.

Module-scoped, so each test module trains its own and may write into them (exports, overlays).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medlens.engine.config import build_config
from medlens.engine.train import train


def _train(out: Path, spec: str, root: Path, model: dict) -> Path:
    cfg = build_config({"data": {"spec": spec, "root": str(root), "batch_size": 64}, "model": model,
                        "train": {"epochs": 1, "tracking_uri": "none", "progress": False}})
    train(cfg, out)
    return out


@pytest.fixture(scope="module")
def breast_run(medmnist_root, tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("serve") / "breast", "breastmnist", medmnist_root, {"name": "cnn_small"})


@pytest.fixture(scope="module")
def adrenal_run(medmnist_root, tmp_path_factory) -> Path:
    # width 8 with the strided stem: one epoch in about a second on two CPU cores
    return _train(tmp_path_factory.mktemp("serve") / "adrenal", "adrenalmnist3d", medmnist_root,
                  {"name": "resnet_compact", "kwargs": {"width": 8, "stem": "standard"}})
