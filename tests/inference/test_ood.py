"""The out-of-distribution detector: the threshold flags the requested share, far inputs are flagged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import single_line

from medlens.inference.ood import MahalanobisDetector, energy_score, penultimate


def _features(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    return centres[labels] + rng.normal(size=(n, 4)) + shift, labels


@pytest.mark.parametrize("share", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("n_val", [78, 1000])
def test_threshold_flags_the_requested_share_of_validation(share, n_val):
    train, labels = _features(500, 0)
    detector = MahalanobisDetector.fit(train, labels)
    val_scores = detector.score(_features(n_val, 1)[0])
    detector = detector.with_threshold(val_scores, share=share)
    flagged = detector.flag(val_scores).mean()
    assert flagged <= share and share - flagged <= 1 / n_val + 1e-12  # as near the share as n_val images allow
    # new images of the same distribution are flagged at about that share (a quantile of 1000 is
    # a steady estimate; of 78 it is not), shifted ones nearly all
    if n_val >= 1000:
        assert abs(detector.flag(detector.score(_features(5000, 2)[0])).mean() - share) < 0.03
    assert detector.flag(detector.score(_features(500, 3, shift=6.0)[0])).mean() > 0.99


def test_score_is_distance_to_the_nearest_class_mean():
    train, labels = _features(2000, 0)
    detector = MahalanobisDetector.fit(train, labels)
    assert detector.means.shape == (3, 4)
    np.testing.assert_allclose(detector.means, [[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0]], atol=0.15)
    scores = detector.score(np.array([[3.0, 0, 0, 0], [0, 0, 3.0, 0], [10.0, 0, 0, 0]]))
    assert scores[0] < 0.05 and scores[1] < 0.05 and scores[2] > 40  # about 49: (10-3)^2 with unit variance


def test_multilabel_uses_one_mean_and_the_tensors_round_trip():
    train, _ = _features(300, 0)
    detector = MahalanobisDetector.fit(train, np.zeros((300, 5))).with_threshold(np.arange(100.0), share=0.05)
    assert detector.means.shape == (1, 4)
    back = MahalanobisDetector.from_tensors(detector.tensors(), threshold=detector.threshold, share=detector.share)
    np.testing.assert_allclose(back.score(train[:5]), detector.score(train[:5]), rtol=1e-5)
    assert back.threshold == detector.threshold == 95.0


@pytest.mark.parametrize("share", [0, 1, 1.5, "x"])
def test_bad_share_is_one_line(share):
    detector = MahalanobisDetector.fit(*_features(50, 0))
    with pytest.raises(ValueError, match="the flagged share must be a number in") as info:
        detector.with_threshold(np.ones(10), share=share)
    single_line(info.value)


def test_penultimate_is_the_classifier_input_and_probabilities_match():
    from medlens.data.augment import Normalisation
    from medlens.data.registry import Task
    from medlens.inference.model import InferenceModel
    from medlens.models import create_model

    net = create_model("cnn_small", in_channels=1, num_classes=2, spatial_dims=2, input_size=28).eval()
    inference = InferenceModel(net, Normalisation((0.5,), (0.25,)), task=Task.BINARY, spatial_dims=2).eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        probs, features = penultimate(inference, images)
        classifier = net.get_classifier()
        np.testing.assert_allclose(torch.softmax(classifier(features), 1), probs, atol=1e-6)
        np.testing.assert_allclose(inference(images), probs, atol=1e-6)
    assert features.shape == (3, classifier.in_features)


def test_energy_score_is_higher_for_weaker_logits():
    assert energy_score(np.array([[5.0, 0.0]]))[0] < energy_score(np.array([[0.0, 0.0]]))[0]
