"""Torch views of a :class:`~medlens.data.source.TensorSplit`: a map-style dataset and a batch loader.

``SplitDataset`` yields one ``(image, label)`` pair per index for code that wants a
``torch.utils.data.Dataset``. ``BatchLoader`` is what medlens trains with: it gathers a whole
batch with one numpy fancy-index (no per-item Python, no collate), so in-memory MedMNIST arrays
iterate at hundreds of thousands of images per second. Batches stay uint8 until the
augment / normalise step.

Example:
    >>> import numpy as np
    >>> from medlens.data.source import TensorSplit
    >>> split = TensorSplit(np.zeros((10, 1, 28, 28), np.uint8), np.arange(10) % 2, np.arange(10).astype(str))
    >>> images, labels = next(iter(BatchLoader(split, batch_size=4, shuffle=True, seed=0)))
    >>> tuple(images.shape), images.dtype
    ((4, 1, 28, 28), torch.uint8)
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from medlens.data.source import TensorSplit


def _labels_tensor(labels: np.ndarray) -> torch.Tensor:
    """int64 class ids stay int64 (for cross-entropy); multi-label 0/1 rows become float32."""
    if labels.ndim == 2:
        return torch.from_numpy(labels.astype(np.float32))
    return torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))


class SplitDataset(torch.utils.data.Dataset):
    """Map-style dataset over a split.

    Items: ``(image, label)``: image uint8 ``(C, H, W)`` or ``(C, D, H, W)``; label a 0-d int64
    tensor, or a float32 0/1 vector ``(K,)`` for multi-label tasks.
    """

    def __init__(self, split: TensorSplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.split.take(np.asarray([index]))
        return torch.from_numpy(images[0]), _labels_tensor(labels)[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # torch's DataLoader fetches a whole batch through this: one gather, not len(indices).
        images, labels = self.split.take(np.asarray(indices))
        images_t, labels_t = torch.from_numpy(images), _labels_tensor(labels)
        return list(zip(images_t.unbind(0), labels_t.unbind(0), strict=True))


class BatchLoader:
    """Iterate a split in batches of uint8 tensors.

    Args:
        split: the :class:`TensorSplit`.
        batch_size: images per batch (> 0).
        shuffle: new random order each epoch (seeded by ``(seed, epoch)``).
        seed: base seed of the order.
        drop_last: drop a final short batch.
        weights: optional ``(N,)`` sampling weights: each epoch draws ``N`` rows with replacement
            in proportion to them (oversampling); implies shuffling.
        num_replicas: processes sharing the epoch (DDP); each takes every ``num_replicas``-th
            row of the same epoch order, starting at ``rank``. The order is padded by wrapping
            around so every process gets the same number of batches (as torch's
            ``DistributedSampler`` does).
        rank: this process's index in ``[0, num_replicas)``.

    Yields:
        ``(images, labels)``: uint8 ``(B, C, ...)`` and int64 ``(B,)`` or float32 ``(B, K)``.
    """

    def __init__(self, split: TensorSplit, *, batch_size: int = 128, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, weights: np.ndarray | None = None, num_replicas: int = 1,
                 rank: int = 0):
        try:
            size = operator.index(batch_size)  # accepts numpy integers, refuses floats
        except TypeError:
            size = 0
        if size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        batch_size = size
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if (weights.shape != (len(split),) or not np.isfinite(weights).all() or (weights < 0).any()
                    or weights.sum() <= 0):
                raise ValueError(f"weights must be {len(split)} finite non-negative numbers with a positive sum")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas); got rank {rank} of {num_replicas}")
        self.num_replicas = num_replicas
        self.rank = rank
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.weights = weights
        self.epoch = 0

    def _rows_per_replica(self) -> int:
        return -(-len(self.split) // self.num_replicas)

    def __len__(self) -> int:
        n = self._rows_per_replica()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Row order of epoch ``epoch`` (deterministic given the seed)."""
        n = len(self.split)
        rng = np.random.default_rng([self.seed, epoch])  # independent streams per (seed, epoch)
        if self.weights is not None:
            return rng.choice(n, size=n, replace=True, p=self.weights / self.weights.sum())
        return rng.permutation(n) if self.shuffle else np.arange(n)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (a resumed run restarts at its epoch)."""
        self.epoch = epoch

    def __iter__(self):
        # A generator: the order is drawn at the first ``next()``, so a ``set_epoch`` made after
        # ``iter()`` but before the first batch still counts (Lightning creates iterators early).
        order = self.order(self.epoch)
        self.epoch += 1
        if self.num_replicas > 1:
            total = self._rows_per_replica() * self.num_replicas
            order = np.resize(order, total)[self.rank::self.num_replicas]  # wrap-around padding
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            # Sorted rows read a memory-mapped file forwards; order within a batch does not matter.
            rows = np.sort(order[start:start + self.batch_size])
            images, labels = self.split.take(rows)
            yield torch.from_numpy(images), _labels_tensor(labels)
