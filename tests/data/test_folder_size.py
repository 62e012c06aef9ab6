"""A folder's default size: 64 px for 2D images; 3D volumes keep their own size up to 64.

Small volumes used to be upsampled to 64³ (12x the voxels of 28³ for no information), which with
2D-sized batches is what filled 20 of 23 GB in the issue that changed it.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medlens.data.source import resolve


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path / "cache"))


def _volumes(root, edge: int, n: int = 10):
    import nibabel as nib

    rng = np.random.default_rng(0)
    for cls in ("lesion", "normal"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            volume = rng.normal(size=(edge, edge, edge - 2)).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), root / cls / f"v{i}.nii.gz")
    return root


def test_small_volumes_keep_their_own_size(tmp_path):
    source = resolve(f"folder:{_volumes(tmp_path / 'vols', 20)}")
    assert source.size == 20 and source.splits["train"].images.shape[1:] == (1, 20, 20, 20)
    assert source.spec.endswith("@20")
    assert resolve(f"folder:{tmp_path / 'vols'}", size=32).size == 32  # a size given still wins


def test_large_volumes_are_resized_to_64(tmp_path):
    assert resolve(f"folder:{_volumes(tmp_path / 'vols', 66)}").size == 64


def test_2d_images_default_to_64(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    assert resolve(f"folder:{tmp_path / 'imgs'}").size == 64
