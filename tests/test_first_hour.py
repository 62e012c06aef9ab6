"""The smaller stumbles of a new user's first hour (issue 21), one test each."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medlens.cli import main
from helpers import write_tiny_npz


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return write_tiny_npz(tmp_path_factory.mktemp("first-hour") / "tiny.npz", sizes=(24, 8, 8), edge=16)


def test_the_gradcam_overlay_leaves_cold_pixels_as_they_are():
    from medlens.explain.render import overlay_png

    image = np.full((1, 8, 8), 120, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:2, :2] = 1.0
    with Image.open(io.BytesIO(overlay_png(image, heat))) as picture:
        rgb = np.asarray(picture.convert("RGB")).astype(int)
    assert (rgb[4:, 4:] == 120).all()  # no heat: the image itself, not 45% dark blue over it
    assert np.abs(rgb[0, 0] - 120).max() > 40  # the hot corner is coloured


@pytest.mark.slow
def test_repeated_cv_says_it_covers_the_repeats_and_double_balancing_warns(tiny_npz, tmp_path, capsys):
    code = main(["cv", f"npz:{tiny_npz}", "--folds", "2", "--repeats", "2", "--model", "cnn_small", "--epochs", "1",
                 "--class-weights", "balanced", "--oversample", "--tracking-uri", "none", "--no-report",
                 "--no-progress", "--out", str(tmp_path / "cv")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "2 repeats of 2-fold cross-validation (4 runs; the summary covers every run of every repeat)" in out
    assert "balance them twice" in err
