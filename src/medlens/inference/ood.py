"""Out-of-distribution scores: how unlike the training images an input is, from the model's own features.

The detector is a Mahalanobis distance on the penultimate features (Lee et al., 2018, "A simple
unified framework for detecting out-of-distribution samples"): the input of the classifier layer
(``model.get_classifier()``), one mean per class and one covariance shared by the classes
(Ledoit-Wolf shrinkage, so it stays invertible when there are fewer training images than feature
dimensions). The score of an image is its squared distance to the nearest class mean: higher is
further from the training data. Multi-label tasks have no one class per image and use one mean.

Why not the energy score (``-logsumexp(logits)``): it reads only the logits, and a binary model
has two, so it can tell "unlike the training data" from "confident" only as far as confidence
falls, and the failure this flag exists for is a confident answer on a wrong input (noise at
sigma .10 made a BreastMNIST model answer "benign" for every image with high probability). The
features keep the directions the logits throw away; that holds for every dataset and model.
:func:`energy_score` is kept for comparison (``benchmarks/robustness.py`` measures both). Measured
on a 3-epoch ``cnn_small`` BreastMNIST model, thresholds at 5% of validation, share flagged:
PneumoniaMNIST .90 / .00 (Mahalanobis / energy), RetinaMNIST grey .70 / .00, uniform noise
1.00 / .00, its own test .05 / .01: the energy score flagged none of the foreign images.

The threshold is set on the validation split: the ``1 - share`` quantile of its scores, so that
``share`` of validation images (default 5%) is flagged; images scoring above it are flagged.

Example:
    >>> rng = np.random.default_rng(0)
    >>> features = rng.normal(size=(200, 8)); labels = rng.integers(0, 2, 200)
    >>> detector = MahalanobisDetector.fit(features, labels)
    >>> detector = detector.with_threshold(detector.score(rng.normal(size=(100, 8))), share=0.05)
    >>> bool(detector.flag(detector.score(features + 50)).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

DEFAULT_SHARE = 0.05
METHOD = "mahalanobis"


def penultimate(inference, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and penultimate features of uint8 images, in one forward pass.

    Args:
        inference: an :class:`~medlens.inference.model.InferenceModel` whose model has the
            contract's ``get_classifier()`` (the final layer).
        images: uint8 ``(B, C, *spatial)`` on the module's device.

    Returns:
        ``(probabilities (B, K), features (B, D))``: the features are the classifier's input.

    Raises:
        ValueError: the model has no single classifier layer (an ensemble).
    """
    from medlens.inference.model import probabilities

    try:
        classifier = inference.model.get_classifier()
    except (NotImplementedError, ValueError, AttributeError) as exc:
        raise ValueError(f"out-of-distribution features need one classifier layer; {exc}") from None
    seen = []
    handle = classifier.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        logits = inference.logits(images)
    finally:
        handle.remove()
    return probabilities(logits, inference.task), seen[-1].flatten(1).float()


@torch.no_grad()
def split_features(inference, images: np.ndarray, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """:func:`penultimate` over a uint8 array ``(N, C, *spatial)`` in batches: ``(probabilities, features)``."""
    device = next(inference.parameters()).device
    was_training = inference.training
    inference.eval()
    probs, feats = [], []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        p, f = penultimate(inference, chunk)
        probs.append(p.cpu().numpy())
        feats.append(f.cpu().numpy())
    inference.train(was_training)
    return np.concatenate(probs), np.concatenate(feats).astype(np.float64)


def energy_score(logits: np.ndarray) -> np.ndarray:
    """``-logsumexp(logits)`` per row, negated so that higher is more out-of-distribution (Liu et al., 2020)."""
    from scipy.special import logsumexp

    return -logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


@dataclass(frozen=True)
class MahalanobisDetector:
    """Class means and a shared precision matrix of penultimate features, and a threshold.

    Attributes:
        means: ``(M, D)`` class means (M = 1 for multi-label tasks).
        precision: ``(D, D)`` inverse of the shared (shrunk) covariance.
        threshold: scores above it are flagged (NaN until :meth:`with_threshold`).
        share: the share of validation images the threshold flags.
    """

    means: np.ndarray
    precision: np.ndarray
    threshold: float = float("nan")
    share: float = DEFAULT_SHARE

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray | None) -> MahalanobisDetector:
        """Fit on training features ``(N, D)`` and class ids ``(N,)`` (None, or 2D labels: one mean).

        Raises:
            ValueError: fewer than 2 images.
        """
        from sklearn.covariance import LedoitWolf

        features = np.asarray(features, dtype=np.float64)
        if len(features) < 2:
            raise ValueError(f"fitting an out-of-distribution detector needs at least 2 images; got {len(features)}")
        groups = np.zeros(len(features), np.int64) if labels is None or np.ndim(labels) > 1 \
            else np.asarray(labels).reshape(-1)
        classes = np.unique(groups)
        means = np.stack([features[groups == c].mean(axis=0) for c in classes])  # (M, D)
        centred = features - means[np.searchsorted(classes, groups)]
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        return cls(means=means, precision=precision)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, ``(N,)``: higher is further out."""
        features = np.asarray(features, dtype=np.float64)
        diff = features[:, None, :] - self.means[None]  # (N, M, D)
        return np.einsum("nmd,de,nme->nm", diff, self.precision, diff).min(axis=1)

    def with_threshold(self, val_scores: np.ndarray, *, share: float = DEFAULT_SHARE) -> MahalanobisDetector:
        """This detector with its threshold at the ``1 - share`` quantile of validation scores.

        Raises:
            ValueError: ``share`` outside (0, 1) or no validation scores.
        """
        if not (isinstance(share, (int, float)) and 0 < share < 1):
            raise ValueError(f"the flagged share must be a number in (0, 1), e.g. 0.05; got {share!r}")
        val_scores = np.asarray(val_scores, dtype=np.float64)
        if not len(val_scores):
            raise ValueError("setting the out-of-distribution threshold needs validation images; got none")
        # 'higher': a score of the split itself, so at most `share` of validation lies strictly above it.
        return replace(self, threshold=float(np.quantile(val_scores, 1 - share, method="higher")), share=float(share))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """``scores > threshold``, ``(N,)`` bool."""
        return np.asarray(scores) > self.threshold

    def tensors(self) -> dict[str, torch.Tensor]:
        """What goes into the safetensors file."""
        return {"means": torch.from_numpy(self.means.astype(np.float32)),
                "precision": torch.from_numpy(self.precision.astype(np.float32))}

    @classmethod
    def from_tensors(cls, tensors: dict, *, threshold: float, share: float) -> MahalanobisDetector:
        """The detector of :meth:`tensors` and its card's threshold and share."""
        return cls(means=np.asarray(tensors["means"], dtype=np.float64),
                   precision=np.asarray(tensors["precision"], dtype=np.float64), threshold=float(threshold),
                   share=float(share))
