"""A run's out-of-distribution detector: fitted at the end of training (or later), stored beside the weights.

``fit_run_detector`` takes the run's best checkpoint and its own splits, fits a
:class:`~medlens.inference.ood.MahalanobisDetector` on the training images' penultimate features,
sets the threshold so that ``share`` of the validation images is flagged, and writes

    checkpoints/ood.safetensors   means, precision, and the val and test scores (for the report)
    checkpoints/ood.json          its card: method, share, threshold, counts, the flagged shares of
                                  val and test, the feature size and the SHA-256 of the weights it
                                  was fitted on (a detector is refused for other weights)

Example:
    >>> RunFolder("runs/breast").ood.as_posix()
    'runs/breast/checkpoints/ood.safetensors'
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from medlens._io import atomic_path, file_sha256, write_json
from medlens.engine.run_folder import RunFolder
from medlens.inference.ood import DEFAULT_SHARE, METHOD, MahalanobisDetector, split_features


def fit_run_detector(run: str | os.PathLike, *, source=None, share: float = DEFAULT_SHARE, root: str | None = None,
                     batch_size: int = 256) -> dict:
    """Fit and store the out-of-distribution detector of a finished run.

    Args:
        run: a run folder with ``checkpoints/best``.
        source: the run's resolved data (training passes its own); None: resolved from the run's config.
        share: share of validation images to flag, in (0, 1); default 0.05.
        root: MedMNIST data folder when ``source`` is None (as ``medlens evaluate``'s).
        batch_size: images per forward pass.

    Returns:
        The card written to ``checkpoints/ood.json``.

    Raises:
        FileNotFoundError: no best checkpoint.
        ValueError: ``share`` outside (0, 1), or a model without one classifier layer (an ensemble).
    """
    import torch
    from safetensors.torch import save_file

    from medlens import __version__
    from medlens.engine.checkpoint import load_model
    from medlens.inference.model import InferenceModel

    layout = RunFolder(run)
    if not layout.best.is_file():
        raise FileNotFoundError(f"{layout.path} is not a finished medlens run folder: {layout.best} is missing")
    model, card = load_model(layout.best)
    if source is None:
        from medlens.engine.config import load_run_config, resolve_data

        config = load_run_config(layout.path)
        source = resolve_data(replace(config.data, root=str(layout.data_root(root, config=config.to_dict()))))
    inference = InferenceModel.from_card(model, card).eval()
    splits = source.splits
    _, train_features = split_features(inference, splits["train"].images, batch_size=batch_size)
    detector = MahalanobisDetector.fit(train_features, np.asarray(splits["train"].labels))
    scores = {name: detector.score(split_features(inference, splits[name].images, batch_size=batch_size)[1])
              for name in ("val", "test")}
    detector = detector.with_threshold(scores["val"], share=share)
    ood_card = {
        "method": METHOD, "layer": "input of model.get_classifier() (penultimate features)",
        "share": detector.share, "threshold": detector.threshold, "n_train": int(len(train_features)),
        "n_val": int(len(scores["val"])), "val_flagged": float(detector.flag(scores["val"]).mean()),
        "test_flagged": float(detector.flag(scores["test"]).mean()), "feature_dim": int(train_features.shape[1]),
        "weights_sha256": file_sha256(layout.best), "data": source.spec, "medlens": __version__,
    }
    tensors = {**detector.tensors(), **{f"{name}_scores": torch.from_numpy(s.astype(np.float32))
                                        for name, s in scores.items()}}
    with atomic_path(layout.ood) as tmp:
        save_file(tensors, str(tmp))
    write_json(layout.ood_card, ood_card)
    return ood_card


def load_run_detector(weights: str | os.PathLike) -> tuple[MahalanobisDetector | None, str]:
    """The detector stored beside a checkpoint, or None and why not.

    Args:
        weights: the ``.safetensors`` checkpoint the model is loaded from.

    Returns:
        ``(detector, "")``, or ``(None, reason)`` when there is none or it was fitted on other weights.
    """
    from safetensors.numpy import load_file

    weights = Path(weights)
    layout = RunFolder.of(weights)
    if not layout.ood.is_file() or not layout.ood_card.is_file():
        return None, f"no out-of-distribution detector beside {weights}; run `medlens ood fit {layout.path}`"
    card = json.loads(layout.ood_card.read_text())
    if card.get("weights_sha256") != file_sha256(weights):
        return None, (f"the out-of-distribution detector in {layout.ood_card} was fitted on other weights than "
                      f"{weights}; run `medlens ood fit {layout.path}` again")
    return MahalanobisDetector.from_tensors(load_file(str(layout.ood)), threshold=card["threshold"],
                                            share=card["share"]), ""


def read_scores(run: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """The stored val and test scores and the card, for the report: ``{"val", "test", "card"}`` or None."""
    from safetensors.numpy import load_file

    layout = RunFolder(run)
    if not layout.ood.is_file() or not layout.ood_card.is_file():
        return None
    tensors = load_file(str(layout.ood))
    return {"val": tensors["val_scores"], "test": tensors["test_scores"],
            "card": json.loads(layout.ood_card.read_text())}
