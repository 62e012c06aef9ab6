"""A run's test split under every corruption and severity: how far its metrics fall, and where it collapses.

``robustness_run`` rebuilds the model from its checkpoint, resolves the run's own test split,
corrupts it with :func:`medlens.data.corrupt.corrupt` (the table there) at each severity,
predicts through :func:`medlens.inference.predict.predict` (the one inference path) and writes
``RUN/eval/robustness/metrics.json`` and ``examples.png``.

``metrics.json`` (``schema_version`` 1): the header of ``medlens evaluate``'s file (``run``,
``split``, ``data``, ``fingerprint``, ``model``, ``checkpoint_sha256``, ``class_names``,
``medlens``) plus ``seed``, ``n_bootstrap``, ``severities``, then

- ``clean``: the metrics of the uncorrupted split (below);
- ``corruptions``: ``{name: {"description", "parameters", "severities": {"1": metrics, ...},
  "mean_acc", "mean_auc", "auc_drop", "relative_error"}}``;
- ``summary``: ``mce`` (the mean over corruptions of ``relative_error``), ``mean_auc``,
  ``mean_auc_drop`` and ``collapsed`` (``[[name, severity], ...]``).

Each metrics block holds ``acc``, ``auc``, ``balanced_accuracy``, ``ece`` (the functions of
:mod:`medlens.metrics`), ``ci`` (their stratified bootstrap intervals, :func:`~medlens.metrics.bootstrap_ci`;
empty with ``n_bootstrap=0``), ``predicted_classes`` (how many distinct predictions),
``majority_share`` (the share of the most predicted class) and ``collapse``.

``relative_error`` is ImageNet-C's corruption error with the model's own clean error as the
reference: mean over severities of (1 - ACC), divided by (1 - clean ACC); 1 means corruption
costs nothing, 2 doubles the errors. ``auc_drop`` is clean AUC minus the mean corrupted AUC.

A **collapse** is a model that stopped telling the classes apart: every image gets the same
prediction (one class; multi-label: no label's prediction varies), or balanced accuracy is at
or below chance (1 / K for K classes, 0.5 per label for binary and multi-label). Accuracy alone
hides this: BreastMNIST at 73% malignant-free is .731 ACC for a model that says "benign" always.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from medlens._io import atomic_path, file_sha256, write_json
from medlens.data.corrupt import CORRUPTIONS, SEVERITIES, check_corruptions, check_severity, corrupt
from medlens.engine.run_folder import RunFolder

SCHEMA_VERSION = 1
ROBUSTNESS_METRICS = ("acc", "auc", "balanced_accuracy", "ece")


def _chance(task, num_outputs: int) -> float:
    """Balanced accuracy of a model that cannot tell the classes apart."""
    if task.is_multilabel or num_outputs <= 2:
        return 0.5
    return 1.0 / num_outputs


def score_block(y_true: np.ndarray, y_score: np.ndarray, *, task, n_bootstrap: int = 0, seed: int = 0) -> dict:
    """The metrics of one corruption and severity (or of the clean split), with the collapse flag.

    Args:
        y_true: class ids ``(N,)``, or 0/1 ``(N, K)`` for multi-label.
        y_score: probabilities ``(N, K)``.
        task: the :class:`~medlens.data.registry.Task`.
        n_bootstrap: resamples for the intervals (0: ``ci`` is empty).
        seed: seed of the bootstrap.

    Returns:
        ``{"acc", "auc", "balanced_accuracy", "ece", "ci", "predicted_classes", "majority_share",
        "collapse"}`` (see the module docstring).

    Example:
        >>> from medlens.data.registry import Task
        >>> block = score_block(np.array([0, 1, 1, 0]), np.array([[.9, .1]] * 4), task=Task.BINARY)
        >>> block["collapse"], block["predicted_classes"], block["balanced_accuracy"]
        (True, 1, 0.5)
    """
    from medlens.inference.model import decide
    from medlens.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        bootstrap_ci,
        expected_calibration_error_loss,
        roc_auc_score,
    )

    values = {"acc": accuracy_score(y_true, y_score, task=task), "auc": roc_auc_score(y_true, y_score, task=task),
              "balanced_accuracy": balanced_accuracy_score(y_true, y_score, task=task),
              "ece": expected_calibration_error_loss(y_true, y_score, task=task)}
    ci = (bootstrap_ci(y_true, y_score, task=task, metrics=ROBUSTNESS_METRICS, n_resamples=n_bootstrap, seed=seed)
          if n_bootstrap else {})
    predicted = decide(y_score, task)
    if task.is_multilabel:
        varying = [len(np.unique(predicted[:, k])) > 1 for k in range(predicted.shape[1])]
        predicted_classes = int(sum(varying))  # labels whose prediction varies
        one_class = not any(varying)
        majority = float(np.mean([max(np.mean(predicted[:, k]), 1 - np.mean(predicted[:, k]))
                                  for k in range(predicted.shape[1])]))
    else:
        _, counts = np.unique(predicted, return_counts=True)
        predicted_classes = int(len(counts))
        one_class = predicted_classes == 1
        majority = float(counts.max() / counts.sum())
    chance = _chance(task, y_score.shape[1])
    balanced = values["balanced_accuracy"]
    at_chance = bool(np.isfinite(balanced) and balanced <= chance + 1e-12)
    return {**values, "ci": {name: {k: v for k, v in ci[name].items() if k != "value"} for name in ci},
            "predicted_classes": predicted_classes, "majority_share": majority,
            "collapse": bool(one_class or at_chance)}


def parse_severities(text: str) -> list[int]:
    """``"1-5"``, ``"3"`` or ``"1,3,5"`` -> severities, each checked.

    Raises:
        ValueError: anything that is not severities in 1..5.

    Example:
        >>> parse_severities("2-4"), parse_severities("1,5")
        ([2, 3, 4], [1, 5])
    """
    try:
        if "-" in text:
            low, high = (int(part) for part in text.split("-"))
            values = list(range(low, high + 1))
        else:
            values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v not in SEVERITIES for v in values):
        raise ValueError(f"severities must be a range like 1-5 or a list like 1,3,5 of values in 1..5; got {text!r}")
    return sorted(set(values))


def robustness_run(run: str | Path, *, corruptions=None, severities=SEVERITIES, root: str | None = None,
                   n_bootstrap: int = 200, seed: int = 0, batch_size: int = 256) -> dict:
    """Score a run's best checkpoint on its test split under each corruption and severity.

    Args:
        run: a run folder written by ``medlens train``.
        corruptions: names from :data:`medlens.data.corrupt.CORRUPTIONS` (None: all of them).
        severities: severities to run, from 1..5 (default all).
        root: MedMNIST data folder (as ``medlens evaluate``'s).
        n_bootstrap: bootstrap resamples per block (default 200: 51 blocks x 4 metrics; 0: none).
        seed: seed of the corruptions and the bootstrap.
        batch_size: images per forward pass.

    Returns:
        The ``metrics.json`` content (NaN as float NaN), also written to
        ``RUN/eval/robustness/metrics.json`` with ``examples.png`` beside it.

    Raises:
        FileNotFoundError: ``run`` is not a finished run folder.
        ValueError: an unknown corruption or severity.
    """
    from medlens import __version__
    from medlens.data.registry import Task
    from medlens.data.source import TensorSplit
    from medlens.engine.checkpoint import load_model
    from medlens.engine.config import load_run_config, resolve_data
    from medlens.inference.predict import predict
    from medlens.models import get_model_spec

    names = check_corruptions(corruptions)
    severities = sorted({check_severity(s) for s in severities})
    if not severities:
        raise ValueError("severities must name at least one of 1..5")
    layout = RunFolder(run)
    if not layout.best.is_file():
        raise FileNotFoundError(f"{layout.path} is not a finished medlens run folder: {layout.best} is missing")
    model, card = load_model(layout.best)
    config = load_run_config(layout.path)
    source = resolve_data(replace(config.data, root=str(layout.data_root(root, config=config.to_dict()))))
    task = Task(card.task)
    test = source.splits["test"]
    clean_images = np.ascontiguousarray(test.images)

    def scores_of(images: np.ndarray) -> np.ndarray:
        split = TensorSplit(images=images, labels=test.labels, ids=test.ids)
        return predict(model, split, task=task, mean=card.normalisation["mean"], std=card.normalisation["std"],
                       batch_size=batch_size, channels_last=get_model_spec(card.architecture).channels_last).y_score

    y_true = np.asarray(test.labels)
    clean = score_block(y_true, scores_of(clean_images), task=task, n_bootstrap=n_bootstrap, seed=seed)
    results, examples = {}, {}
    for name in names:
        blocks = {}
        examples[name] = []
        for severity in severities:
            corrupted = corrupt(clean_images, name, severity, seed=seed)
            examples[name].append(corrupted[0])
            blocks[str(severity)] = score_block(y_true, scores_of(corrupted), task=task, n_bootstrap=n_bootstrap,
                                                seed=seed)
        results[name] = {"description": CORRUPTIONS[name].description,
                         "parameters": [CORRUPTIONS[name].parameters[s - 1] for s in severities],
                         "severities": blocks, **_corruption_summary(clean, list(blocks.values()))}
    metrics = {
        "schema_version": SCHEMA_VERSION, "run": str(layout.path), "split": "test", "data": source.spec,
        "fingerprint": source.fingerprint, "model": card.architecture, "checkpoint_sha256": file_sha256(layout.best),
        "class_names": list(card.class_names), "medlens": __version__, "seed": seed, "n_bootstrap": n_bootstrap,
        "n": int(len(y_true)), "severities": severities, "clean": clean, "corruptions": results,
        "summary": {
            "mce": _nan_mean([r["relative_error"] for r in results.values()]),
            "mean_auc": _nan_mean([r["mean_auc"] for r in results.values()]),
            "mean_auc_drop": _nan_mean([r["auc_drop"] for r in results.values()]),
            "collapsed": [[name, int(s)] for name, r in results.items()
                          for s, block in r["severities"].items() if block["collapse"]],
        },
    }
    layout.robustness_dir.mkdir(parents=True, exist_ok=True)
    write_json(layout.robustness_metrics, metrics)
    _write_examples(layout.robustness_examples, clean_images[0], examples)
    return metrics


def _nan_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def _corruption_summary(clean: dict, blocks: list[dict]) -> dict:
    mean_acc = _nan_mean([b["acc"] for b in blocks])
    mean_auc = _nan_mean([b["auc"] for b in blocks])
    clean_error = 1.0 - clean["acc"]
    return {"mean_acc": mean_acc, "mean_auc": mean_auc, "auc_drop": clean["auc"] - mean_auc,
            "relative_error": (1.0 - mean_acc) / clean_error if clean_error > 0 else float("nan")}


def _display(image: np.ndarray) -> np.ndarray:
    """``(C, *spatial)`` uint8 -> ``(H, W)`` or ``(H, W, 3)`` for a picture; 3D shows its middle slice."""
    if image.ndim == 4:
        image = image[:, image.shape[1] // 2]
    return image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)


def _write_examples(path: Path, clean: np.ndarray, examples: dict[str, list[np.ndarray]]) -> None:
    """A grid PNG: one row per corruption, the clean image then each severity (4 px gaps)."""
    from PIL import Image

    first = _display(clean)
    h, w = first.shape[:2]
    cols = 1 + max(len(v) for v in examples.values())
    mode = "L" if first.ndim == 2 else "RGB"
    grid = Image.new(mode, (cols * (w + 4), len(examples) * (h + 4)), color=255 if mode == "L" else (255,) * 3)
    for r, images in enumerate(examples.values()):
        for c, image in enumerate([clean, *images]):
            grid.paste(Image.fromarray(_display(image)), (c * (w + 4), r * (h + 4)))
    with atomic_path(path) as tmp, tmp.open("wb") as handle:
        grid.save(handle, format="PNG")


def format_robustness(metrics: dict) -> str:
    """The console table: one row per corruption, ACC / AUC / balanced accuracy per severity."""
    from medlens._table import format_table

    severities = metrics["severities"]
    clean = metrics["clean"]
    header = ["corruption", *[f"s{s} acc/auc/bacc" for s in severities], "rel err", "collapse"]
    rows = []
    for name, r in metrics["corruptions"].items():
        cells = [f"{b['acc']:.3f}/{b['auc']:.3f}/{b['balanced_accuracy']:.3f}" for b in r["severities"].values()]
        collapsed = [s for s, b in r["severities"].items() if b["collapse"]]
        rows.append([name, *cells, f"{r['relative_error']:.2f}", ",".join(collapsed) or "-"])
    summary = metrics["summary"]
    lines = [f"clean: ACC {clean['acc']:.3f}  AUC {clean['auc']:.3f}  balanced acc {clean['balanced_accuracy']:.3f}"
             f"  ECE {clean['ece']:.3f}  (n={metrics['n']})", format_table(header, rows),
             f"mean corruption error (relative to clean) {summary['mce']:.2f}; mean AUC {summary['mean_auc']:.3f} "
             f"(drop {summary['mean_auc_drop']:.3f})"]
    if clean["collapse"]:
        lines.append("the clean model already collapses (one predicted class or balanced accuracy at chance)")
    if summary["collapsed"]:
        by_name: dict[str, list[str]] = {}
        for name, severity in summary["collapsed"]:
            by_name.setdefault(name, []).append(str(severity))
        lines.append("COLLAPSE (one predicted class or balanced accuracy at chance): "
                     + ", ".join(f"{n} at severity {','.join(s)}" for n, s in by_name.items()))
    return "\n".join(lines)
