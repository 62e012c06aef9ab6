"""The corruption table: deterministic for a seed, severity ordering, shapes, 3D, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import single_line

from medlens.data.corrupt import CORRUPTIONS, SEVERITIES, corrupt


def _scan_like(n: int, channels: int, spatial: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Smooth blobs on a gradient with fine texture: a stand-in for a grey-level scan (uint8)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 1, s) for s in spatial], indexing="ij")
    out = np.empty((n, channels, *spatial), np.uint8)
    for i in range(n):
        for c in range(channels):
            x = 0.3 + 0.2 * grids[-1]
            for _ in range(4):
                centre = rng.uniform(0.2, 0.8, len(spatial))
                r2 = sum((g - m) ** 2 for g, m in zip(grids, centre, strict=True))
                x = x + rng.uniform(0.1, 0.3) * np.exp(-r2 / rng.uniform(0.005, 0.03))
            x = x + 0.03 * rng.standard_normal(spatial)
            out[i, c] = np.round(np.clip(x, 0, 1) * 255)
    return out


CASES = {"grey 28": (1, (28, 28)), "rgb 64": (3, (64, 64)), "3D 28": (1, (28, 28, 28))}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_image_change_grows_with_severity(name, case):
    channels, spatial = CASES[case]
    images = _scan_like(6, channels, spatial)
    change = [np.abs(corrupt(images, name, s).astype(float) - images).mean() for s in SEVERITIES]
    assert change[0] > 0, f"{name} severity 1 changed nothing"
    assert all(a < b for a, b in zip(change, change[1:], strict=False)), f"{name} {case}: {np.round(change, 2)}"


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_for_a_seed_and_batch_independent(name):
    images = _scan_like(5, 1, (28, 28))
    before = images.copy()
    first = corrupt(images, name, 3, seed=7)
    assert first.dtype == np.uint8 and first.shape == images.shape
    np.testing.assert_array_equal(first, corrupt(images, name, 3, seed=7))
    np.testing.assert_array_equal(images, before)  # the input is never changed
    # image i draws from its own stream: corrupting a prefix gives the same images
    np.testing.assert_array_equal(first[:2], corrupt(images[:2], name, 3, seed=7))


def test_noise_depends_on_the_seed():
    images = _scan_like(2, 1, (28, 28))
    noisy = [corrupt(images, "gaussian_noise", 2, seed=seed) for seed in (0, 1)]
    assert not np.array_equal(*noisy)


def test_channels_last_input_is_read_by_value():
    images = _scan_like(3, 3, (28, 28))
    strided = np.ascontiguousarray(images.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # channels-last memory
    np.testing.assert_array_equal(corrupt(strided, "jpeg", 2), corrupt(images, "jpeg", 2))


def test_3d_motion_blur_and_jpeg_act_per_slice_and_blur_in_3d():
    volume = _scan_like(1, 1, (6, 28, 28))
    for name in ("motion_blur", "jpeg"):
        out = corrupt(volume, name, 5)
        for s in range(volume.shape[2]):  # each slice exactly as the 2D corruption of that slice
            np.testing.assert_array_equal(out[:, :, s], corrupt(volume[:, :, s], name, 5), err_msg=name)
    # Gaussian blur and pixelation act on all three axes: unlike any per-slice result
    for name in ("gaussian_blur", "pixelate"):
        out = corrupt(volume, name, 5)
        assert not np.array_equal(out[:, :, 2], corrupt(volume[:, :, 2], name, 5)), name


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "snow", "severity": 1}, "unknown corruption snow; valid: gaussian_noise"),
    ({"name": "jpeg", "severity": 6}, "severity must be one of 1, 2, 3, 4, 5; got 6"),
    ({"name": "jpeg", "severity": True}, "severity must be one of"),
])
def test_bad_names_and_severities_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        corrupt(np.zeros((1, 1, 8, 8), np.uint8), **kwargs)
    single_line(info.value)


def test_float_images_are_refused():
    with pytest.raises(ValueError, match="images must be uint8"):
        corrupt(np.zeros((1, 1, 8, 8), np.float32), "contrast", 1)
