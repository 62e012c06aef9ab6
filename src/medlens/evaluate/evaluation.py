"""Evaluate a trained run on a split: predictions, every metric, and the files reviewers ask for.

``evaluate_run`` rebuilds the model from its self-describing checkpoint, resolves the data the
way training did (same spec, split seed and fold, so ``val`` is the run's own validation split),
predicts, and writes into ``RUN/eval/<split>/`` (``RUN/eval/<split>@<data>/`` for ``--data``):

    metrics.json     every metric of :func:`~medlens.metrics.evaluate_scores`, with a
                     header (schema below); NaN is written as ``null``
    predictions.csv  id (file or row), true label, predicted label, one probability per class
    <flag>_<split>_[AUC]x.xxx_[ACC]x.xxx@<run>.csv
                     the scores in the MedMNIST result-file layout: the official evaluator's file
                     name, no header, rows ``index,score_0,...,score_K-1`` (what
                     ``pandas.read_csv(path, header=None, index_col=0)`` reads back as the score
                     matrix), so they can be re-scored by the official tool

``metrics.json`` schema (``schema_version`` 2): ``schema_version``, ``run``, ``split`` (``train``,
``val``, ``test``, or ``all``: every image of the data), ``data`` (spec), ``external`` (true when
``--data`` named other data than the run's), ``fingerprint`` (of the data and its split), ``model``
(architecture), ``checkpoint_sha256`` (of the weights evaluated), ``class_names``,
``medlens`` (version), then the body of :func:`~medlens.metrics.evaluate_scores`: ``n``,
``task``, ``acc``, ``auc``, ``ci`` (bootstrap intervals of ACC, AUC and macro F1), ``per_class``,
``confusion``, ``roc``, ``pr``, ``calibration``, ``ordinal`` (ordinal tasks only: quadratic-weighted
kappa and mean absolute grade error); with ``--by``, ``subgroups``: ``{"min_n", "columns": {column:
{"kind": categorical | bins | quantiles, "edges", "groups": [{"value", "n", "acc", "auc",
"sensitivity", "specificity", "per_class", "ci", "gap", "too_small"}]}}}`` (see
:mod:`medlens.evaluate.audit`). Version 1 had no ``external``, ``ordinal`` or ``subgroups``.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medlens._io import atomic_path, file_sha256, write_json
from medlens.engine.run_folder import RunFolder

SPLIT_NAMES = ("train", "val", "test", "all")
_RESULT_NAME = re.compile(
    r"^(?P<flag>.+)_(?P<split>train|val|test)_\[AUC\](?P<auc>nan|\d\.\d{3})_\[ACC\](?P<acc>nan|\d\.\d{3})@(?P<run>.+)\.csv$")


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate_run` computed and wrote.

    Attributes:
        metrics: the ``metrics.json`` content (NaN kept as float NaN here).
        predictions: :class:`~medlens.inference.predict.Predictions` on the split.
        folder: the ``eval/...`` folder written.
        files: ``{"metrics": path, "predictions": path, "medmnist": path}``.
        images: the split evaluated (:class:`~medlens.data.source.TensorSplit`, uint8 images in
            the predictions' order), for galleries and explanations.
        model: the rebuilt model (eval mode) and its card, ``(model, card)``.
    """

    metrics: dict
    predictions: object
    folder: Path
    files: dict
    images: object
    model: tuple


def evaluate_run(run: str | Path, *, split: str = "test", data: str | None = None, root: str | None = None,
                 n_bootstrap: int = 1000, seed: int = 0, batch_size: int = 256, skip_bad: bool | None = None,
                 download: bool | None = None, verify: bool | None = None, by: list[str] | None = None,
                 bins: dict | None = None, source_options: dict | None = None) -> Evaluation:
    """Predict with a run's best checkpoint on one split and write the evaluation files.

    Args:
        run: a run folder written by ``medlens train``.
        split: ``test`` (default), ``val``, ``train``, or ``all`` (every image of the data, for an
            external validation set that needs no split).
        data: another dataset spec with the model's classes, matched by name (default: the
            run's own data and split); the evaluation is marked ``external``.
        root: MedMNIST data folder (default: the run's own when it exists here, else
            ``$MEDLENS_DATA``, else ``~/.medlens/data``: :meth:`RunFolder.data_root
            <medlens.engine.run_folder.RunFolder.data_root>`).
        n_bootstrap: bootstrap resamples for the confidence intervals (0: none).
        seed: seed of the bootstrap.
        batch_size: images per forward pass.
        skip_bad, download, verify: how the data is read (the run's ``data`` config entries of
            the same names); None: as the run was trained.
        by: metadata columns to audit subgroups by (:mod:`medlens.evaluate.audit`).
        bins: ``{column: edges or quantile count}`` for numeric ``by`` columns.
        source_options: the table options of ``data`` (a ``csv:`` manifest's columns).

    Returns:
        :class:`Evaluation`.

    Raises:
        FileNotFoundError: ``run`` is not a run folder with a best checkpoint.
        ValueError: unknown split; ``data`` with other classes, task, channels or dimensions.
    """
    from medlens.data.registry import Task
    from medlens.engine.checkpoint import load_model
    from medlens.engine.config import load_run_config, resolve_data
    from medlens.metrics import METRICS_SCHEMA_VERSION, evaluate_scores
    from medlens.inference.predict import predict
    from medlens.models import get_model_spec

    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLIT_NAMES)}")
    run_dir = Path(run)
    layout = RunFolder(run_dir)
    checkpoint = layout.best
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished medlens run folder: {checkpoint} is missing")
    model, card = load_model(checkpoint)
    config = load_run_config(run_dir)
    reading = {k: v for k, v in {"skip_bad": skip_bad, "download": download, "verify": verify}.items()
               if v is not None}
    data_cfg = replace(config.data, root=str(layout.data_root(root, config=config.to_dict())), **reading)
    source = (resolve_data(data_cfg) if data is None
              else _other_source(data, data_cfg, card, source_options, unsplit=split == "all"))
    data_name = None if data is None else _slug(source.spec)
    task = Task(card.task)
    target = _all_splits(source) if split == "all" else source.splits[split]
    predictions = predict(model, target, task=task, mean=card.normalisation["mean"], std=card.normalisation["std"],
                          batch_size=batch_size, channels_last=get_model_spec(card.architecture).channels_last)
    body = evaluate_scores(predictions.y_true, predictions.y_score, task=task, class_names=card.class_names,
                           n_bootstrap=n_bootstrap, seed=seed)
    from medlens import __version__

    if by:
        from medlens.evaluate.audit import audit

        body["subgroups"] = audit(source.metadata, predictions.ids, predictions.y_true, predictions.y_score,
                                  columns=list(by), bins=bins, task=task, class_names=card.class_names,
                                  n_bootstrap=n_bootstrap, seed=seed)
    metrics = {"schema_version": METRICS_SCHEMA_VERSION, "run": str(run_dir), "split": split, "data": source.spec,
               "external": data is not None, "fingerprint": source.fingerprint, "model": card.architecture,
               "checkpoint_sha256": file_sha256(checkpoint), "class_names": list(card.class_names),
               "medlens": __version__, **body}
    files = _write(layout, split, data_name, metrics, predictions, card.class_names, flag=_flag(source.spec),
                   run_name=run_dir.resolve().name)
    return Evaluation(metrics=metrics, predictions=predictions, folder=layout.eval_dir(split, data_name), files=files,
                      images=target, model=(model, card))


def _all_splits(source):
    """Every image of ``source`` as one split (train, then val, then test)."""
    from medlens.data.source import TensorSplit

    parts = [source.splits[name] for name in ("train", "val", "test") if len(source.splits[name])]
    return TensorSplit(np.concatenate([np.asarray(p.images) for p in parts]), np.concatenate([p.labels for p in parts]),
                       np.concatenate([p.ids for p in parts]))


def _other_source(spec: str, data_cfg, card, source_options: dict | None = None, *, unsplit: bool = False):
    """Resolve ``--data`` at the model's size and channels; its classes must be the model's, by name.

    Classes in another order are renumbered to the model's (a folder sorts names, a table may
    give them in any order); other names, or a missing or extra class, are refused. ``unsplit``:
    a folder or table is not split (``--split all``).
    """
    from medlens.data.source import TensorSplit, resolve
    from medlens.data.spec import parse_spec

    # A spec with its own size (breastmnist@64) loads that file and is resized to the model's input.
    parsed = parse_spec(spec)
    source = resolve(spec, root=data_cfg.root, size=parsed.size or card.input_size, seed=data_cfg.split_seed,
                     ratios=data_cfg.ratios, channels=card.in_channels if parsed.source.decodes_images else None,
                     skip_bad=data_cfg.skip_bad, download_missing=data_cfg.download, verify=data_cfg.verify,
                     source_options=source_options, unsplit=unsplit)
    names, task = list(source.info.class_names), source.info.task.value
    model_names = list(card.class_names)
    multilabel = "multilabel" in (task, card.task)
    if sorted(names) != sorted(model_names) or (multilabel and task != card.task):
        missing, extra = sorted(set(model_names) - set(names)), sorted(set(names) - set(model_names))
        raise ValueError(f"--data {spec} has classes {names} ({task}); the model was trained on {model_names} "
                         f"({card.task})" + (f"; missing {missing}" if missing else "")
                         + (f"; not the model's: {extra}" if extra else "")
                         + ": evaluate on data with the model's classes (the same names)")
    if names != model_names:
        order = np.asarray([model_names.index(name) for name in names])
        source.splits = {name: TensorSplit(split.images, order[split.labels] if split.labels.ndim == 1
                                           else split.labels[:, np.argsort(order)], split.ids)
                         for name, split in source.splits.items()}
    images = source.splits["train"].images
    if images.ndim - 2 != card.spatial_dims or images.shape[1] != card.in_channels:
        raise ValueError(f"--data {spec} holds {images.shape[1]}-channel {images.ndim - 2}D images; the model takes "
                         f"{card.in_channels}-channel {card.spatial_dims}D images")
    if source.size != card.input_size:
        source.splits = {name: _resized(split, card.input_size) for name, split in source.splits.items()}
        source.size = card.input_size
    return source


def _resized(split, size: int):
    """A copy of ``split`` with every spatial edge resized to ``size`` (antialiased, like the loaders)."""
    import torch
    import torch.nn.functional as F

    from medlens.data.source import TensorSplit

    x = torch.from_numpy(np.ascontiguousarray(split.images)).float()  # (N, C, *spatial)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    out = torch.cat([F.interpolate(chunk, size=(size,) * (x.ndim - 2), mode=mode, align_corners=False,
                                   antialias=x.ndim == 4) for chunk in x.split(256)])
    images = out.round().clamp(0, 255).to(torch.uint8).numpy()
    return TensorSplit(images, split.labels, split.ids)


def _slug(text: str) -> str:
    text = re.sub(r"@\d+$", "", text)  # the size suffix of a resolved spec
    text = re.sub(r"\.(csv|tsv|tab)$", "", text, flags=re.IGNORECASE)  # a manifest is named by its stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.split(":", 1)[-1].rstrip("/").split("/")[-1]).strip("_") or "data"


def _flag(spec: str) -> str:
    """The MedMNIST file flag of a spec: ``breastmnist@28`` -> ``breastmnist``, ``@64`` -> ``breastmnist_64``."""
    name, _, size = spec.partition("@")
    if ":" in name:
        return _slug(name)
    return name if size in ("", "28") else f"{name}_{size}"


def _labels_text(y: np.ndarray, class_names: list[str], multilabel: bool) -> list[str]:
    if multilabel:  # the names of the positive labels, ';'-joined
        return [";".join(n for n, on in zip(class_names, row, strict=True) if on) for row in np.asarray(y)]
    return [class_names[int(i)] for i in np.asarray(y).reshape(-1)]


def _write(layout: RunFolder, split: str, data_name: str | None, metrics: dict, predictions, class_names: list[str],
           *, flag: str, run_name: str) -> dict:
    """Write ``eval/<split>[@<data_name>]/``: metrics, predictions and the MedMNIST result file."""
    from medlens.metrics import predicted_labels

    folder = layout.eval_dir(split, data_name)
    folder.mkdir(parents=True, exist_ok=True)
    task = predictions.task
    files = {"metrics": layout.eval_metrics(split, data_name), "predictions": layout.eval_predictions(split, data_name)}
    write_json(files["metrics"], metrics)

    predicted = predicted_labels(predictions.y_score, task=task)
    with atomic_path(files["predictions"]) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "true", "predicted", *[f"p_{name}" for name in class_names]])
        for row in zip(predictions.ids, _labels_text(predictions.y_true, class_names, task.is_multilabel),
                       _labels_text(predicted, class_names, task.is_multilabel), predictions.y_score, strict=True):
            writer.writerow([row[0], row[1], row[2], *(f"{p:.6g}" for p in row[3])])

    name = f"{flag}_{split}_[AUC]{_three(metrics['auc'])}_[ACC]{_three(metrics['acc'])}@{run_name}.csv"
    official = folder / name
    write_medmnist_result(official, predictions.y_score)
    for stale in folder.glob(f"{flag}_{split}_*@{run_name}.csv"):  # an earlier evaluation's scores
        if stale != official and _RESULT_NAME.match(stale.name):
            stale.unlink()
    return {**files, "medmnist": official}


def _three(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3f}"


def write_medmnist_result(path: str | Path, y_score: np.ndarray) -> Path:
    """Write scores in the MedMNIST result-file layout.

    No header; one row per sample ``index,score_0,...,score_K-1``; UTF-8 with a byte-order mark,
    as the MedMNIST v1 tool wrote (``utf_8_sig``; pandas and the csv module read it either way).
    Scores are written with 9 significant digits, so the file re-scores to the same ACC/AUC.
    """
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        for index, row in enumerate(np.asarray(y_score)):
            writer.writerow([index, *(f"{p:.9g}" for p in row)])
    return path


def read_medmnist_result(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an official-layout result file.

    Returns:
        ``(index (N,) int, y_score (N, K) float64)``.

    Raises:
        ValueError: rows of different widths, or a non-numeric cell (naming the line).
    """
    rows = []
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            try:
                rows.append([float(cell) for cell in row])
            except ValueError:
                raise ValueError(f"{path} line {number} is not 'index,score_0,...': {','.join(row)[:80]!r}") from None
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"{path}: rows have different numbers of columns")
    table = np.asarray(rows)
    return table[:, 0].astype(np.int64), table[:, 1:]


def parse_result_name(path: str | Path) -> dict:
    """Parts of an official result-file name: flag, split, auc, acc (floats, NaN for ``nan``), run.

    Raises:
        ValueError: a name not of the form ``<flag>_<split>_[AUC]x.xxx_[ACC]x.xxx@<run>.csv``.
    """
    match = _RESULT_NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{Path(path).name!r} is not a MedMNIST result name "
                         "<flag>_<split>_[AUC]x.xxx_[ACC]x.xxx@<run>.csv")
    parts = match.groupdict()
    return {**parts, "auc": float(parts["auc"]), "acc": float(parts["acc"])}


def _interval(ci: dict, name: str) -> str:
    entry = ci.get(name)
    if not entry or entry.get("lower") is None or not math.isfinite(entry["lower"]):
        return ""
    return f" [{entry['lower']:.3f}, {entry['upper']:.3f}]"


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def format_evaluation(metrics: dict) -> str:
    """The printed summary: ACC/AUC/macro F1 with their 95% intervals, then the per-class table."""
    from medlens._table import format_table

    per_class = metrics["per_class"]
    rows = [[c["name"], _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["specificity"]), _fmt(c["f1"]),
             str(int(c["support"]))] for c in per_class["classes"]]
    support = sum(int(c["support"]) for c in per_class["classes"])
    for label in ("macro", "weighted"):
        avg = per_class[label]
        rows.append([f"{label} avg", _fmt(avg["precision"]), _fmt(avg["recall"]), _fmt(avg["specificity"]),
                     _fmt(avg["f1"]), str(support)])
    table = format_table(["class", "precision", "recall", "specificity", "F1", "support"], rows)
    ci = metrics.get("ci", {})
    level = ""
    if ci:
        any_entry = next(iter(ci.values()))
        level = f" ({any_entry.get('n_resamples', '?')} bootstrap resamples, 95% CI)"
    macro_f1 = per_class["macro"]["f1"]
    calib = metrics["calibration"]
    kappa = "quadratic kappa" if per_class.get("kappa_weights") == "quadratic" else "kappa"
    external = " (external data)" if metrics.get("external") else ""
    lines = [
        f"{metrics['data']}{external} {metrics['split']} (n={metrics['n']}, {metrics['task']}), "
        f"model {metrics['model']}{level}",
        f"ACC {_fmt(metrics['acc'])}{_interval(ci, 'acc')}   AUC {_fmt(metrics['auc'])}{_interval(ci, 'auc')}   "
        f"macro F1 {_fmt(macro_f1)}{_interval(ci, 'macro_f1')}",
        f"balanced accuracy {_fmt(per_class['balanced_accuracy'])}   {kappa} {_fmt(per_class['kappa'])}   "
        f"ECE {_fmt(calib['ece'])}   Brier {_fmt(calib['brier'])}",
    ]
    ordinal = metrics.get("ordinal")
    if ordinal:
        lines.append(f"ordinal: quadratic-weighted kappa {_fmt(ordinal['quadratic_kappa'])}   mean absolute grade "
                     f"error {_fmt(ordinal['mean_absolute_grade_error'])}")
    lines += ["", table]
    if metrics.get("subgroups"):
        from medlens.evaluate.audit import format_audit

        lines += ["", format_audit(metrics["subgroups"])]
    return "\n".join(lines)
