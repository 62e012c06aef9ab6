"""Tests of ``medlens.data.loader``: ``BatchLoader`` and ``SplitDataset`` over a ``TensorSplit``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.data.loader import BatchLoader, SplitDataset
from medlens.data.source import TensorSplit


def make_split(n: int = 23, *, shape: tuple[int, ...] = (1, 6, 6), n_classes: int = 3,
               multilabel: int = 0) -> TensorSplit:
    """Image ``i`` holds the value ``i % 256`` at pixel 0 (and row id ``i``), so rows are traceable."""
    images = np.zeros((n,) + shape, dtype=np.uint8)
    images.reshape(n, -1)[:, 0] = np.arange(n) % 256
    images.reshape(n, -1)[:, 1] = np.arange(n) // 256
    if multilabel:
        labels = ((np.arange(n)[:, None] >> np.arange(multilabel)) & 1).astype(np.uint8)  # (N, K)
    else:
        labels = (np.arange(n) % n_classes).astype(np.int64)
    return TensorSplit(images, labels, np.arange(n).astype(str))


def rows_of(images: torch.Tensor) -> np.ndarray:
    flat = images.reshape(len(images), -1).numpy().astype(np.int64)
    return flat[:, 0] + 256 * flat[:, 1]


def epoch_rows(loader: BatchLoader) -> np.ndarray:
    return np.concatenate([rows_of(images) for images, _ in loader])


# --------------------------------------------------------------------------------------------
# BatchLoader
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 6, 6), (3, 5, 5), (1, 4, 4, 4)], ids=["gray", "rgb", "3d"])
def test_batches_dtype_and_shape(shape):
    split = make_split(23, shape=shape)
    loader = BatchLoader(split, batch_size=8)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert [len(images) for images, _ in batches] == [8, 8, 7]
    for images, labels in batches:
        assert isinstance(images, torch.Tensor) and images.dtype == torch.uint8
        assert tuple(images.shape[1:]) == shape
        assert labels.dtype == torch.int64 and labels.shape == (len(images),)
        np.testing.assert_array_equal(labels.numpy(), rows_of(images) % 3)  # labels travel with their images


def test_multilabel_labels_are_float32():
    split = make_split(20, multilabel=5)
    images, labels = next(iter(BatchLoader(split, batch_size=6, shuffle=True, seed=3)))
    assert images.dtype == torch.uint8
    assert labels.dtype == torch.float32 and labels.shape == (6, 5)
    np.testing.assert_array_equal(labels.numpy(), split.labels[rows_of(images)].astype(np.float32))


def test_unshuffled_order_is_the_split_order():
    split = make_split(23)
    assert epoch_rows(BatchLoader(split, batch_size=5)).tolist() == list(range(23))


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4, 23, 100])
def test_every_row_exactly_once_per_epoch(shuffle, batch_size):
    split = make_split(23)
    loader = BatchLoader(split, batch_size=batch_size, shuffle=shuffle, seed=1)
    for _ in range(3):
        rows = epoch_rows(loader)
        assert sorted(rows.tolist()) == list(range(23))


def test_large_split_every_row_once():
    split = make_split(1000, shape=(1, 2, 2))
    rows = epoch_rows(BatchLoader(split, batch_size=64, shuffle=True, seed=7))
    assert len(rows) == 1000 and len(np.unique(rows)) == 1000


@pytest.mark.parametrize("shuffle", [False, True])
def test_drop_last(shuffle):
    split = make_split(23)
    loader = BatchLoader(split, batch_size=5, drop_last=True, shuffle=shuffle, seed=0)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [5, 5, 5, 5]
    rows = np.concatenate([rows_of(images) for images, _ in batches])
    assert len(np.unique(rows)) == 20
    keep = BatchLoader(split, batch_size=5, drop_last=False)
    assert len(keep) == 5 and len(list(keep)[-1][0]) == 3


def test_drop_last_with_exact_multiple_keeps_everything():
    split = make_split(20)
    loader = BatchLoader(split, batch_size=5, drop_last=True)
    assert len(loader) == 4 and len(epoch_rows(loader)) == 20


def test_batch_larger_than_split_with_drop_last_is_empty():
    loader = BatchLoader(make_split(7), batch_size=8, drop_last=True)
    assert len(loader) == 0 and list(loader) == []


def test_shuffle_changes_order_per_epoch_and_is_seeded():
    split = make_split(50)
    a = BatchLoader(split, batch_size=8, shuffle=True, seed=11)
    b = BatchLoader(split, batch_size=8, shuffle=True, seed=11)
    c = BatchLoader(split, batch_size=8, shuffle=True, seed=12345)
    a_epochs = [epoch_rows(a) for _ in range(3)]
    b_epochs = [epoch_rows(b) for _ in range(3)]
    for x, y in zip(a_epochs, b_epochs, strict=True):
        np.testing.assert_array_equal(x, y)  # same seed: same orders, epoch by epoch
    assert not np.array_equal(a_epochs[0], a_epochs[1])
    assert not np.array_equal(a_epochs[1], a_epochs[2])
    assert not np.array_equal(a_epochs[0], np.arange(50))
    assert not np.array_equal(epoch_rows(c), a_epochs[0])
    assert a.epoch == 3


def test_order_is_a_pure_function_of_epoch():
    split = make_split(30)
    loader = BatchLoader(split, batch_size=4, shuffle=True, seed=5)
    np.testing.assert_array_equal(loader.order(2), loader.order(2))
    assert sorted(loader.order(0).tolist()) == list(range(30))
    list(loader)
    list(loader)
    # the third epoch follows order(2), as a set of batches (rows within a batch may be sorted)
    expected = loader.order(2)
    got = [set(rows_of(images).tolist()) for images, _ in loader]
    assert got == [set(expected[i:i + 4].tolist()) for i in range(0, 30, 4)]


def test_weights_oversample_the_weighted_class():
    # 90 rows of class 0 and 10 of class 1; class-1 rows weighted 9x -> about half the draws are class 1
    n = 100
    images = np.zeros((n, 1, 2, 2), np.uint8)
    images.reshape(n, -1)[:, 0] = np.arange(n)
    labels = np.array([0] * 90 + [1] * 10, dtype=np.int64)
    split = TensorSplit(images, labels, np.arange(n).astype(str))
    weights = np.where(labels == 1, 9.0, 1.0)
    loader = BatchLoader(split, batch_size=32, seed=0, weights=weights)
    drawn = np.concatenate([lab.numpy() for _ in range(20) for _, lab in loader])
    assert len(drawn) == 20 * n  # N draws per epoch
    share = (drawn == 1).mean()
    assert 0.40 < share < 0.60, share  # unweighted it would be 0.10
    plain = np.concatenate([lab.numpy() for _ in range(20)
                            for _, lab in BatchLoader(split, batch_size=32, shuffle=True)])
    assert (plain == 1).mean() == pytest.approx(0.10)


def test_zero_weight_rows_are_never_drawn():
    split = make_split(40, n_classes=2)
    weights = (split.labels == 1).astype(float)
    loader = BatchLoader(split, batch_size=10, seed=2, weights=weights)
    labels = np.concatenate([lab.numpy() for _ in range(5) for _, lab in loader])
    assert set(labels.tolist()) == {1}


def test_weights_draw_is_seeded():
    split = make_split(40)
    w = np.linspace(1, 2, 40)
    a = BatchLoader(split, batch_size=7, seed=4, weights=w)
    b = BatchLoader(split, batch_size=7, seed=4, weights=w)
    np.testing.assert_array_equal(epoch_rows(a), epoch_rows(b))


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "8", None])
def test_invalid_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(make_split(10), batch_size=batch_size)


@pytest.mark.parametrize(
    "weights",
    [np.ones(9), np.ones(11), np.ones((10, 1)), -np.ones(10), np.zeros(10),
     np.r_[np.ones(9), -1.0]],
    ids=["short", "long", "2d", "negative", "all-zero", "one-negative"],
)
def test_invalid_weights(weights):
    with pytest.raises(ValueError, match="weights"):
        BatchLoader(make_split(10), batch_size=4, weights=weights)


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_non_finite_weights_rejected_up_front(bad):
    weights = np.ones(10)
    weights[3] = bad
    with pytest.raises(ValueError, match="weights"):
        BatchLoader(make_split(10), batch_size=4, weights=weights)


def test_batches_are_independent_copies():
    split = make_split(10)
    images, _ = next(iter(BatchLoader(split, batch_size=4)))
    images.zero_()
    assert split.images.reshape(10, -1)[1:4, 0].tolist() == [1, 2, 3]


def test_memmapped_split(tmp_path):
    array = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(30, 1, 4, 4))
    array[:] = 0
    array.reshape(30, -1)[:, 0] = np.arange(30)
    array.flush()
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    split = TensorSplit(mapped, np.arange(30) % 2, np.arange(30).astype(str))
    rows = epoch_rows(BatchLoader(split, batch_size=7, shuffle=True, seed=0))
    assert sorted(rows.tolist()) == list(range(30))


# --------------------------------------------------------------------------------------------
# SplitDataset
# --------------------------------------------------------------------------------------------


def test_split_dataset_items():
    split = make_split(12, shape=(3, 5, 5))
    dataset = SplitDataset(split)
    assert len(dataset) == 12
    image, label = dataset[7]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 5, 5)
    assert label.dtype == torch.int64 and label.shape == ()
    assert int(label) == 7 % 3
    assert int(image.reshape(-1)[0]) == 7


def test_split_dataset_3d_and_multilabel():
    split = make_split(9, shape=(1, 4, 4, 4), multilabel=3)
    image, label = SplitDataset(split)[5]
    assert tuple(image.shape) == (1, 4, 4, 4) and image.dtype == torch.uint8
    assert label.dtype == torch.float32 and label.tolist() == [1.0, 0.0, 1.0]


def test_torch_dataloader_over_split_dataset():
    split = make_split(21, shape=(1, 6, 6))
    loader = torch.utils.data.DataLoader(SplitDataset(split), batch_size=8, shuffle=False)
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [8, 8, 5]
    images, labels = batches[0]
    assert images.dtype == torch.uint8 and tuple(images.shape) == (8, 1, 6, 6)
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 3 for i in range(8)]
    rows = np.concatenate([rows_of(images) for images, _ in batches])
    assert rows.tolist() == list(range(21))


def test_torch_dataloader_multilabel_shuffled():
    split = make_split(16, multilabel=4)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(SplitDataset(split), batch_size=8, shuffle=True, generator=generator)
    seen = []
    for images, labels in loader:
        assert labels.dtype == torch.float32 and tuple(labels.shape) == (8, 4)
        rows = rows_of(images)
        np.testing.assert_array_equal(labels.numpy(), split.labels[rows])
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(16))


# --------------------------------------------------------------------------------------------
# integration: real PneumoniaMNIST
# --------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_full_epoch_of_pneumoniamnist(medmnist_root):
    from medlens.data.source import resolve

    if not (medmnist_root / "pneumoniamnist.npz").is_file():
        pytest.skip("pneumoniamnist.npz not found")
    source = resolve("pneumoniamnist", root=medmnist_root, download_missing=False)
    train = source.splits["train"]
    loader = BatchLoader(train, batch_size=256, shuffle=True, seed=0)
    total, positives = 0, 0
    for images, labels in loader:
        assert images.dtype == torch.uint8 and tuple(images.shape[1:]) == (1, 28, 28)
        assert labels.dtype == torch.int64
        total += len(images)
        positives += int(labels.sum())
    assert total == 4708
    assert positives == 3494
    assert len(loader) == -(-4708 // 256)
