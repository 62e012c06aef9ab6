"""One self-contained HTML report per run (or per cross-validation / seeds group).

Everything is inlined: Plotly's JavaScript, the figure specs, the gallery images as PNG data
URIs, CSS and the page's own script, so the file opens offline and makes no request. The page
holds the run's config and data summary, training curves, the test metrics with confidence
intervals, the per-class table, confusion matrices, ROC / precision-recall curves, a reliability
diagram, the published MedMNIST v2 rows for MedMNIST data, and a gallery of test images (all
errors first, then a stratified sample of the correct ones) with Grad-CAM overlays, filterable by
class and outcome and sortable by confidence. The same figures go to ``figures/*.png`` for papers.
"""

from __future__ import annotations

import base64
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from medlens._io import atomic_path, json_ready
from medlens.engine.run_folder import RunFolder

GALLERY_DEFAULT = 240
THUMB_EDGE = 112


def build_report(run: str | Path, *, out: str | Path | None = None, gallery: int = GALLERY_DEFAULT,
                 split: str = "test", explain: bool = True, n_bootstrap: int = 1000, figures: bool = True) -> Path:
    """Write the HTML report of a run folder, or of a ``cv`` / ``seeds`` group folder.

    Args:
        run: a run folder from ``medlens train``, or a group folder from ``medlens cv`` /
            ``medlens train --seeds``.
        out: the HTML file (default ``RUN/report.html``).
        gallery: most images in the gallery (errors first, then a stratified sample); 0 = none.
        split: the split evaluated for metrics and gallery (default test).
        explain: add Grad-CAM overlays to the gallery.
        n_bootstrap: bootstrap resamples of the confidence intervals.
        figures: also write print PNGs to ``RUN/figures/``.

    Returns:
        The path of the HTML file.

    Raises:
        FileNotFoundError: ``run`` is neither a finished run nor a group folder.
    """
    run = Path(run)
    out = Path(out) if out is not None else RunFolder(run).report
    if RunFolder(run).is_tune:
        body, title = _tune_sections(run)
    elif RunFolder(run).is_group:
        body, title = _group_sections(run)
    else:
        body, title = _run_sections(run, gallery=gallery, split=split, explain=explain, n_bootstrap=n_bootstrap,
                                    figures=figures)
    page = _page(title, body)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


# ----------------------------------------------------------------------------- sections


def _run_sections(run: Path, *, gallery: int, split: str, explain: bool, n_bootstrap: int,
                  figures: bool) -> tuple[list[str], str]:
    from medlens.engine.tracking import read_history
    from medlens.evaluate.evaluation import evaluate_run
    from medlens.report.figures import (
        confusion_figures,
        curve_figures,
        reliability_figure,
        roc_pr_figures,
        write_pngs,
    )

    # A run on data with metadata (a csv: manifest) gets the subgroup audit by default.
    by = ["auto"] if _metadata_columns(run) else None
    evaluation = evaluate_run(run, split=split, n_bootstrap=n_bootstrap, by=by)
    metrics = evaluation.metrics
    _, card = evaluation.model
    layout = RunFolder(run)
    history = read_history(layout.history) if layout.history.is_file() else []
    train_metrics = layout.read_metrics() if layout.is_finished else {}
    if figures:
        write_pngs(layout.figures, history, metrics)
    sections = [
        _header(run, card, train_metrics),
        _data_section(run, card),
        _plots("Training curves", curve_figures(history)) if history else "",
        _members_section(run, train_metrics),
        _metrics_section(metrics),
        _plots("Confusion matrix", confusion_figures(metrics)),
        _plots("ROC, precision-recall and calibration", [*roc_pr_figures(metrics), reliability_figure(metrics)]),
        _published_section(card.dataset.get("spec", ""), metrics["auc"], metrics["acc"], metrics.get("ci", {})),
        _subgroup_section(metrics),
        _external_section(run),
        _gallery_section(evaluation, limit=gallery, explain=explain) if gallery else "",
        _robustness_section(layout),
        _ood_section(layout),
    ]
    return sections, f"medlens report: {run.name}"


def _metadata_columns(run: Path) -> list[str]:
    """The metadata columns ``train`` recorded in ``splits.json`` (none for data without a table)."""
    path = RunFolder(run).splits
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("metadata_columns") or [])


def _subgroup_section(metrics: dict) -> str:
    """The subgroup audit: a forest plot of AUC with CIs and the table (n, ACC, AUC, sensitivity, specificity, gaps)."""
    from medlens.report.figures import forest_figure

    subgroups = metrics.get("subgroups")
    if not subgroups or not subgroups.get("columns"):
        return ""
    rows = []
    for column, entry in subgroups["columns"].items():
        for group in entry["groups"]:
            ci = group["ci"].get("auc") or {}
            interval = f" [{_fmt(ci['lower'])}, {_fmt(ci['upper'])}]" if ci else ""
            rows.append([column, group["value"] + (" (too small for a CI)" if group["too_small"] else ""),
                         str(group["n"]), _fmt(group["acc"]), _fmt(group["auc"]) + interval, _fmt(group["sensitivity"]),
                         _fmt(group["specificity"]), _fmt(group["gap"]["acc"]), _fmt(group["gap"]["auc"])])
    table = _table(["column", "subgroup", "n", "ACC", "AUC [95% CI]", "sensitivity", "specificity", "ACC gap",
                    "AUC gap"], rows)
    skipped = subgroups.get("skipped")
    note = (f"<p class=muted>Per subgroup of each metadata column; sensitivity and specificity are macro means over "
            f"the classes present; gaps are the subgroup's value minus the whole set's; subgroups under "
            f"{subgroups['min_n']} images get no interval and are marked, not hidden."
            + (f" Not audited (too many distinct values): {_e(', '.join(skipped))}." if skipped else "") + "</p>")
    plot = _plots("", [forest_figure({**subgroups, "whole_auc": metrics["auc"]})]).replace("<section><h2></h2>", "")
    plot = plot.removesuffix("</section>")
    return f"<section><h2>Subgroups</h2>{note}{plot}{table}</section>"


def _with_interval(metrics: dict, name: str) -> str:
    """``0.812 [0.790, 0.833]`` from an evaluation's value and bootstrap interval (the value alone without one)."""
    entry = metrics.get("ci", {}).get(name) or {}
    interval = f" [{_fmt(entry['lower'])}, {_fmt(entry['upper'])}]" if entry.get("lower") is not None else ""
    return _fmt(metrics.get(name)) + interval


def _external_section(run: Path) -> str:
    """Evaluations of this run on other data (``evaluate --data``), each marked as external validation."""
    rows = []
    for path in RunFolder(run).other_data_metrics():
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not metrics.get("external"):
            continue
        rows.append([metrics.get("data", "?"), metrics.get("split", "?"), str(metrics.get("n", "?")),
                     _with_interval(metrics, "acc"), _with_interval(metrics, "auc"),
                     _fmt(metrics.get("per_class", {}).get("balanced_accuracy"))])
    if not rows:
        return ""
    table = _table(["data", "split", "n", "ACC [95% CI]", "AUC [95% CI]", "balanced accuracy"], rows)
    return ("<section><h2>External validation</h2><p>This model evaluated on data it was not trained or "
            "selected on (<code>medlens evaluate --data</code>); split <code>all</code> is every image of "
            f"that data.</p>{table}</section>")


def _group_sections(parent: Path) -> tuple[list[str], str]:
    from medlens.workflows.groups import summarise
    from medlens.report.figures import figure_spec, fold_figure

    group = json.loads(RunFolder(parent).group.read_text())
    kind = group["kind"]
    names = [n for n in group["members"] if RunFolder(parent / n).is_finished]
    if not names:
        raise FileNotFoundError(f"{parent} holds no finished {kind} run yet")
    summary = summarise(parent, names, kind=kind)
    first = group["members"][names[0]]
    rows = [[r["name"], *(_fmt(r[c]) for c in ("val_acc", "val_auc", "test_acc", "test_auc")),
             _fmt(r["seconds"], 0)] for r in summary["runs"]]
    stats = summary["summary"]
    rows.append(["mean ± std", *(f"{_fmt(stats[c]['mean'])} ± {_fmt(stats[c]['std'])}"
                                 for c in ("val_acc", "val_auc", "test_acc", "test_auc")),
                 _fmt(stats["seconds"]["mean"], 0)])
    what = (f"{len(names)} of {len(group['members'])} folds of stratified k-fold cross-validation on train+val "
            "(val = the held-out fold; the test split is untouched)" if kind == "cv"
            else f"{len(names)} of {len(group['members'])} runs with different seeds")
    table = _table(["run", "val ACC", "val AUC", "test ACC", "test AUC", "seconds"], rows, last_bold=True)
    curves = []
    for name in names:
        curves += _val_auc_curve(name, RunFolder(parent / name).history)  # none for an ensemble: its members have them
    spec = first["data"]["spec"]
    sections = [
        f"<header><h1>{_e(parent.name)}</h1><p>{_e(kind)} group: {_e(what)}. Data <b>{_e(spec)}</b>, model "
        f"<b>{_e(first['model']['name'])}</b>. Generated {_now()}.</p></header>",
        f"<section><h2>Per-{'fold' if kind == 'cv' else 'seed'} results</h2>{table}</section>",
        _plots("Per run", [fold_figure(summary), figure_spec("val AUC per epoch", curves)]),
        _published_section(spec, stats["test_auc"]["mean"], stats["test_acc"]["mean"], {},
                           note=f"mean test AUC / ACC over {len(names)} runs"),
        "<section><h2>Config of the first run</h2><pre>" + _e(_yaml(first)) + "</pre></section>",
    ]
    return sections, f"medlens report: {parent.name} ({kind})"


def _tune_sections(parent: Path) -> tuple[list[str], str]:
    """A tune folder: what was searched, every trial, Optuna's figures, the best config, the refit."""
    summary_file = RunFolder(parent).tune_summary
    if not summary_file.is_file():
        raise FileNotFoundError(f"{parent} holds no tune_summary.json yet: no trial has finished")
    summary = json.loads(summary_file.read_text())
    counts, best, monitor = summary["counts"], summary["best"], summary["monitor"]
    names = list(summary["space"])
    rows = [[str(r["number"]) + (" (best)" if best and r["number"] == best["number"] else ""), r["state"].lower(),
             _fmt(r["value"], 4), _fmt(r["epochs_run"], 0), _fmt(r["duration_s"], 0),
             *(_param(r["params"].get(n, "-")) for n in names)] for r in summary["trials"]]
    table = _table(["trial", "state", monitor, "epochs", "seconds", *names], rows)
    what = (f"{counts['complete']} complete, {counts['pruned']} pruned and {counts['fail']} failed trials on "
            f"<b>{_e(summary['data'])}</b>; objective: the best validation <b>{_e(monitor)}</b> of each trial "
            f"({_e(summary['direction'])}; the test split is not used to choose)")
    sections = [
        f"<header><h1>{_e(parent.name)}</h1><p>Hyperparameter search (Optuna): {what}. Generated {_now()}.</p>"
        "</header>",
        f"<section><h2>Trials</h2>{table}</section>",
        _plots("Search", _tune_figures(summary)),
        "<section><h2>Search space</h2><pre>" + _e(_yaml(summary["space"])) + "</pre></section>",
    ]
    if best is not None:
        sections.append(f"<section><h2>Best trial: {best['number']} ({_e(monitor)} {_fmt(best['value'], 4)})</h2>"
                        "<p>Train it again with <code>medlens train --config best.yaml --out RUN</code>.</p><pre>"
                        + _e(_yaml(best["config"])) + "</pre></section>")
    refit = summary.get("refit")
    if refit:
        test = refit["test"]
        sections.append(f"<section><h2>Refit on train + val</h2><p>Trial {refit['trial']}'s config trained "
                        f"{refit['epochs']} epochs on train + val, scored once on test: ACC {_fmt(test['acc'])}, "
                        f"AUC {_fmt(test['auc'])} (n = {test['n']}).</p></section>")
    return sections, f"medlens report: {parent.name} (tune)"


def _param(value) -> str:
    return _e(f"{value:.3g}" if isinstance(value, float) else str(value))


def _tune_figures(summary: dict) -> list[dict]:
    """Optuna's own figures of the search: optimisation history, intermediate values, parameter
    importances and parallel coordinates (each left out when the trials cannot make it)."""
    import warnings

    import optuna.visualization as vis
    from optuna.importance import FanovaImportanceEvaluator

    from medlens.workflows.tune import study_from_summary

    study = study_from_summary(summary)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    makers = [vis.plot_optimization_history, vis.plot_intermediate_values, vis.plot_parallel_coordinate]
    if len(done) >= 2:  # importances need at least two finished trials; seeded, so the page is reproducible
        makers.insert(1, lambda s: vis.plot_param_importances(s, evaluator=FanovaImportanceEvaluator(seed=0)))
    figures = []
    for make in makers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                figure = make(study)
        except (ValueError, RuntimeError):
            continue
        figures.append(json.loads(figure.to_json()))
    return figures


def _val_auc_curve(name: str, history_csv: Path) -> list[dict]:
    """One Plotly line of val AUC per epoch from a run's ``history.csv`` (none if it has no history)."""
    from medlens.engine.tracking import read_history

    if not history_csv.is_file():
        return []
    history = read_history(history_csv)
    return [{"type": "scatter", "mode": "lines", "name": name, "x": [r["epoch"] for r in history],
             "y": [r["val_auc"] if math.isfinite(r["val_auc"]) else None for r in history]}]


def _members_section(run: Path, train_metrics: dict) -> str:
    """An ensemble run: each member's scores beside the ensemble's, and their val AUC per epoch."""
    from medlens.report.figures import figure_spec

    members = train_metrics.get("members")
    if not isinstance(members, list) or not members:
        return ""
    rows = [[m["run"], str(m["seed"]), str(m["best_epoch"]), str(m["epochs_run"]), _fmt(m["val"]["auc"]),
             _fmt(m["test"]["acc"]), _fmt(m["test"]["auc"]), _fmt(m["seconds"], 0)] for m in members]
    rows.append(["ensemble (mean probability)", "", "", str(train_metrics.get("epochs_run", "")),
                 _fmt(train_metrics["val"]["auc"]), _fmt(train_metrics["test"]["acc"]),
                 _fmt(train_metrics["test"]["auc"]), _fmt(train_metrics.get("seconds"), 0)])
    table = _table(["member", "seed", "best epoch", "epochs", "val AUC", "test ACC", "test AUC", "seconds"], rows,
                   last_bold=True)
    curves = [curve for m in members for curve in _val_auc_curve(m["run"], RunFolder(run / m["run"]).history)]
    plot = _plots("Members: val AUC per epoch", [figure_spec("val AUC per epoch", curves)]) if curves else ""
    return (f"<section><h2>Ensemble of {len(members)} members</h2><p>Each member is a full run folder with its own "
            f"seed; the model evaluated below averages their class probabilities.</p>{table}</section>{plot}")


def _header(run: Path, card, train_metrics: dict) -> str:
    seconds = train_metrics.get("seconds")
    facts = [f"model <b>{_e(card.architecture)}</b> {_e(json.dumps(card.model_kwargs)) if card.model_kwargs else ''}",
             f"data <b>{_e(card.dataset.get('spec', '?'))}</b> ({_e(card.task)}, {card.in_channels} channel(s), "
             f"{card.input_size} px, {card.spatial_dims}D)"]
    best = train_metrics.get("best_epoch")
    if isinstance(best, list):  # an ensemble: one best epoch per member
        facts.append(f"members' best epochs {', '.join(map(str, best))}; "
                     f"{train_metrics.get('epochs_run')} epochs in all"
                     + (f", trained in {seconds:.0f} s" if seconds else ""))
    elif train_metrics:
        facts.append(f"best epoch {best} of {train_metrics.get('epochs_run')}"
                     + (f", trained in {seconds:.0f} s" if seconds else ""))
    return (f"<header><h1>{_e(run.name)}</h1><p>{' · '.join(facts)}</p>"
            f"<p class=muted>medlens {_e(card.versions.get('medlens', '?'))}, generated {_now()}</p></header>")


def _data_section(run: Path, card) -> str:
    counts = card.dataset.get("class_counts") or {}
    parts = ["<section><h2>Data and config</h2>"]
    if counts:
        splits = list(counts)
        rows = [[name, *(str(counts[s][i]) for s in splits)] for i, name in enumerate(card.class_names)]
        parts.append(_table(["class", *splits], rows))
        train = np.asarray(counts.get("train", []), dtype=float)
        if len(train) and train.min() > 0 and train.max() / train.min() > 2:
            ratio = train.max() / train.min()
            note = (" This model was trained balanced, then prior-corrected: its probabilities are for the "
                    "training class mix." if (card.config.get("data") or {}).get("correct_priors") else "")
            parts.append(f"<p class=warn>Imbalanced training data: the largest class has {ratio:.1f}x the images "
                         f"of the smallest (class weights or oversampling help; see the config).{note}</p>")
    else:
        sizes = card.dataset.get("sizes", {})
        parts.append("<p>" + ", ".join(f"{_e(k)} {v}" for k, v in sizes.items()) + " images</p>")
    for warning in card.dataset.get("warnings", []):
        parts.append(f"<p class=warn>{_e(warning)}</p>")
    parts.append(f"<p class=muted>split: {_e(card.dataset.get('split_method', '?'))}, fingerprint "
                 f"{_e(card.dataset.get('fingerprint', '?'))}</p>")
    layout = RunFolder(run)
    config = layout.config.read_text() if layout.is_run else _yaml(card.config)
    parts.append(f"<details><summary>{layout.config.name}</summary><pre>{_e(config)}</pre></details></section>")
    return "".join(parts)


def _metrics_section(metrics: dict) -> str:
    ci = metrics.get("ci", {})

    def with_ci(name: str, value) -> str:
        entry = ci.get(name) or {}
        if entry.get("lower") is None:
            return _fmt(value)
        return f"{_fmt(value)} <span class=muted>[{_fmt(entry['lower'])}, {_fmt(entry['upper'])}]</span>"

    per_class = metrics["per_class"]
    head = (f"<p class=big>ACC {with_ci('acc', metrics['acc'])} &nbsp; AUC {with_ci('auc', metrics['auc'])} &nbsp; "
            f"macro F1 {with_ci('macro_f1', per_class['macro']['f1'])}</p>"
            f"<p>balanced accuracy {_fmt(per_class['balanced_accuracy'])} · "
            f"{'quadratic-weighted ' if per_class.get('kappa_weights') == 'quadratic' else ''}Cohen's kappa "
            f"{_fmt(per_class['kappa'])}"
            + (f" · mean absolute grade error {_fmt(metrics['ordinal']['mean_absolute_grade_error'])}"
               if metrics.get("ordinal") else "")
            + f" · ECE {_fmt(metrics['calibration']['ece'])} · Brier "
            f"{_fmt(metrics['calibration']['brier'])} · n = {metrics['n']}"
            + (f" · 95% CIs from {next(iter(ci.values()))['n_resamples']} stratified bootstrap resamples" if ci else "")
            + "</p>")
    rows = [[c["name"], _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["specificity"]), _fmt(c["f1"]),
             str(int(c["support"]))] for c in per_class["classes"]]
    for label in ("macro", "weighted"):
        avg = per_class[label]
        rows.append([f"{label} avg", _fmt(avg["precision"]), _fmt(avg["recall"]), _fmt(avg["specificity"]),
                     _fmt(avg["f1"]), ""])
    table = _table(["class", "precision", "recall (sensitivity)", "specificity", "F1", "support"], rows)
    return f"<section><h2>{_e(metrics['split'].capitalize())} metrics</h2>{head}{table}</section>"


def _published_section(spec: str, auc: float, acc: float, ci: dict, *, note: str = "this run") -> str:
    from medlens.evaluate.compare import ci_excludes
    from medlens.evaluate.published import SOURCE, published_rows

    rows_published = published_rows(spec.split("@")[0])
    if not rows_published:
        return ""
    rows = [["<b>medlens</b> (" + _e(note) + ")", _fmt(auc), _fmt(acc), "", ""]]
    for method, p_auc, p_acc in rows_published:
        cells = []
        for value, published, key in ((auc, p_auc, "auc"), (acc, p_acc, "acc")):
            delta = value - published
            star = "*" if ci_excludes(ci.get(key), published) else ""
            cells.append(f"<span class={'ahead' if delta > 0 else 'behind'}>{delta:+.3f}{star}</span>")
        rows.append([_e(method), f"{p_auc:.3f}", f"{p_acc:.3f}", *cells])
    table = _table(["method", "test AUC", "test ACC", "ΔAUC (medlens − published)", "ΔACC"], rows, raw=True)
    return (f"<section><h2>Published MedMNIST v2 results</h2>{table}<p class=muted>* the run's 95% CI excludes "
            f"the published number. Source: {_e(SOURCE)}. Published numbers are at 28 px unless the method "
            "says 224.</p></section>")


# ----------------------------------------------------------------------------- gallery


def _gallery_indices(y_true: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, limit: int,
                     seed: int = 0) -> np.ndarray:
    """All errors first (most confident first), then a class-stratified sample of correct ones."""
    wrong = np.flatnonzero(predicted != y_true)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    room = limit - len(wrong)
    right = np.flatnonzero(predicted == y_true)
    if room <= 0 or not len(right):
        return wrong
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y_true[right], return_counts=True)
    room = min(room, len(right))
    # Largest-remainder quotas: proportional to class size, summing exactly to the room left.
    raw = counts / counts.sum() * room
    quota = np.floor(raw).astype(int)
    quota[np.argsort(-(raw - quota), kind="stable")[: room - quota.sum()]] += 1
    picked = np.concatenate([rng.choice(right[y_true[right] == cls], size=take, replace=False)
                             for cls, take in zip(classes, quota, strict=True)])
    return np.concatenate([wrong, np.sort(picked)])


def _gallery_section(evaluation, *, limit: int, explain: bool) -> str:
    import torch

    from medlens.explain.render import overlay_png
    from medlens.inference import InferenceModel, decide

    predictions = evaluation.predictions
    model, card = evaluation.model
    names = list(card.class_names)
    multilabel = predictions.task.is_multilabel
    y_score = predictions.y_score
    if multilabel:  # one label per image for the gallery: the most probable one, checked against the truth
        predicted = y_score.argmax(axis=1)
        y_true = np.where(np.asarray(predictions.y_true)[np.arange(len(predicted)), predicted] > 0, predicted, -1)
        confidence = y_score.max(axis=1)
    else:
        predicted = decide(y_score, predictions.task)
        y_true = np.asarray(predictions.y_true).reshape(-1)
        confidence = y_score[np.arange(len(predicted)), predicted] if y_score.shape[1] > 1 else \
            np.where(predicted == 1, y_score[:, 0], 1 - y_score[:, 0])
    index = _gallery_indices(y_true, predicted, confidence, limit)
    images, _ = evaluation.images.take(index)
    images = np.ascontiguousarray(images)
    heatmaps = np.zeros((len(index), *images.shape[2:]), np.float32)
    if explain and len(index):
        from medlens.explain.gradcam import gradcam

        inference = InferenceModel.from_card(model, card)
        for start in range(0, len(index), 32):
            with torch.no_grad():
                x = inference.normalise(torch.from_numpy(images[start:start + 32]))  # the model's input
            heatmaps[start:start + 32] = gradcam(inference.model, x, class_index=predicted[index[start:start + 32]])
    items = []
    for k, row in enumerate(index):
        item = {"id": str(predictions.ids[row]), "true": "" if y_true[row] < 0 else names[int(y_true[row])],
                "pred": names[int(predicted[row])], "conf": round(float(confidence[row]), 4),
                "correct": bool(predicted[row] == y_true[row]),
                "img": _data_uri(overlay_png(images[k], heatmaps[k], alpha=0.0, min_edge=THUMB_EDGE))}
        if explain:
            item["cam"] = _data_uri(overlay_png(images[k], heatmaps[k], min_edge=THUMB_EDGE))
        items.append(item)
    n_wrong = int(sum(not i["correct"] for i in items))
    options = "".join(f"<option value='{_e(n)}'>{_e(n)}</option>" for n in names)
    note = (f"{len(items)} of {len(predictions.y_true)} {evaluation.metrics['split']} images: all {n_wrong} errors "
            "first" if n_wrong < limit else f"{len(items)} errors (the most confident)") + \
        (", then a class-stratified sample of correct ones." if len(items) > n_wrong else ".")
    hint = " Hover or click an image for its Grad-CAM overlay." if explain else ""
    return (f"<section><h2>Gallery</h2><p class=muted>{_e(note)}{hint}</p>"
            "<div class=controls><label>true class <select id=f-class><option value=''>all</option>"
            f"{options}</select></label> <label>outcome <select id=f-outcome><option value=''>all</option>"
            "<option value='wrong'>wrong</option><option value='correct'>correct</option></select></label> "
            "<label>sort <select id=f-sort><option value='errors'>errors first</option><option value='conf-desc'>"
            "confidence, high first</option><option value='conf-asc'>confidence, low first</option></select></label>"
            " <span id=g-count></span></div><div id=gallery></div>"
            f"<script type='application/json' id=gallery-data>{_script_json(items)}</script></section>")


# ----------------------------------------------------------------------------- page


def _ood_section(layout: RunFolder) -> str:
    """The out-of-distribution score of val and test images against the threshold, when the run has a detector."""
    from medlens.engine.ood import read_scores
    from medlens.report.figures import figure_spec

    stored = read_scores(layout.path)
    if stored is None:
        return ""
    card = stored["card"]
    threshold = card["threshold"]
    data = [{"type": "histogram", "name": f"{split} ({np.mean(stored[split] > threshold):.1%} flagged)",
             "x": np.log10(np.maximum(stored[split], 1e-12)).astype(float).tolist(), "opacity": 0.6,
             "histnorm": "probability"} for split in ("val", "test")]
    figure = figure_spec("Out-of-distribution score (log10)", data, barmode="overlay",
                         xaxis={"title": {"text": "log10 squared Mahalanobis distance"}},
                         shapes=[{"type": "line", "x0": math.log10(threshold), "x1": math.log10(threshold),
                                  "y0": 0, "y1": 1, "yref": "paper", "line": {"dash": "dash"}}])
    text = (f"<p>Mahalanobis distance of the penultimate features to the nearest training class mean. The dashed "
            f"threshold flags {_fmt(100 * card['share'], 1)}% of validation images; predict and serve mark images "
            f"above it as out-of-distribution.</p>")
    return _plots("Out-of-distribution scores", [figure]).replace("</h2>", "</h2>" + text, 1)


def _robustness_section(layout: RunFolder) -> str:
    """``medlens robustness``'s results when the run has them: ACC and balanced accuracy vs severity, examples."""
    if not layout.robustness_metrics.is_file():
        return ""
    from medlens.report.figures import robustness_figures

    metrics = json.loads(layout.robustness_metrics.read_text())
    summary = metrics["summary"]
    collapsed = ", ".join(f"{name} {severity}" for name, severity in summary["collapsed"]) or "none"
    text = (f"<p>Test split under each corruption (severity 0 = clean). Mean corruption error relative to clean "
            f"{_fmt(summary['mce'], 2)}, mean AUC {_fmt(summary['mean_auc'])} (drop {_fmt(summary['mean_auc_drop'])}). "
            f"Collapsed (one predicted class or balanced accuracy at chance): {_e(collapsed)}.</p>")
    plots = _plots("Robustness to corruptions", robustness_figures(metrics))
    image = ""
    if layout.robustness_examples.is_file():
        image = (f"<p>One test image: clean, then severities {_e(metrics['severities'])}; rows: "
                 f"{_e(', '.join(metrics['corruptions']))}.</p><img alt='corruption examples' "
                 f"style='image-rendering:pixelated;width:min(100%,640px)' "
                 f"src='{_data_uri(layout.robustness_examples.read_bytes())}'>")
    return plots.replace("</h2>", "</h2>" + text, 1).replace("</section>", image + "</section>")


def _plots(title: str, figures: list[dict]) -> str:
    divs = "".join("<div class=plot data-figure='"
                   f"{html.escape(json.dumps(fig, allow_nan=False, default=_nan), quote=True)}'>"
                   "</div>" for fig in (json_ready(f) for f in figures))
    return f"<section><h2>{_e(title)}</h2><div class=grid>{divs}</div></section>"


def _nan(value):
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _page(title: str, sections: list[str]) -> str:
    from plotly.offline import get_plotlyjs

    body = "\n".join(s for s in sections if s)
    # Plotly's bundle is inlined, so the page needs no network; '</' is escaped so no string in
    # it can close the script element early.
    plotly_js = get_plotlyjs().replace("</script", "<\\/script")
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body>{body}
<script>{plotly_js}</script>
<script>{_JS}</script>
</body></html>
"""


def _table(header: list[str], rows: list[list[str]], *, raw: bool = False, last_bold: bool = False) -> str:
    cell = (lambda v: v) if raw else _e
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=total' if last_bold and i == len(rows) - 1 else ''}>"
        + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _script_json(value) -> str:
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _yaml(value: dict) -> str:
    import yaml

    return yaml.safe_dump(value, sort_keys=False)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# The page's Content-Security-Policy: its inline script and style only, nothing fetched.
_CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
        "img-src data: blob:; font-src data:")

# A line ending in a backslash goes on with the next: the stylesheet has no line break there.
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;\
margin:0 auto;max-width:1200px;padding:16px;color:#222}
h1{margin:.2em 0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
.muted{color:#777}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px}
.big{font-size:18px}table{border-collapse:collapse;margin:8px 0}
td,th{border-bottom:1px solid #eee;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.total td{font-weight:bold;border-top:2px solid #999}.ahead{color:#08711f}.behind{color:#b00020}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
.plot{min-height:320px;border:1px solid #eee}pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:400px}
.controls{margin:8px 0}.controls label{margin-right:14px}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:8px;max-height:900px;overflow-y:auto}
.card{border:2px solid #ccc;border-radius:4px;padding:4px;font-size:12px;cursor:pointer;background:#fff}
.card.wrong{border-color:#d33}.card.correct{border-color:#3a3}\
.card img{width:100%;image-rendering:pixelated;display:block}
.card .lab{font-size:11px;line-height:1.25;overflow-wrap:anywhere}
"""

_JS = r"""
(function(){
  document.querySelectorAll('.plot').forEach(function(div){
    var fig = JSON.parse(div.getAttribute('data-figure'));
    Plotly.newPlot(div, fig.data, fig.layout, {responsive:true, displaylogo:false});
  });
  var data = document.getElementById('gallery-data');
  if(!data) return;
  var items = JSON.parse(data.textContent);
  var gallery = document.getElementById('gallery');
  var fClass = document.getElementById('f-class'), fOutcome = document.getElementById('f-outcome'),
      fSort = document.getElementById('f-sort'), count = document.getElementById('g-count');
  items.forEach(function(it, i){
    var card = document.createElement('div');
    card.className = 'card ' + (it.correct ? 'correct' : 'wrong');
    card.dataset.index = i;
    var img = document.createElement('img');
    img.src = it.img; img.alt = it.id;
    var pinned = false;
    if(it.cam){
      card.addEventListener('mouseenter', function(){ img.src = it.cam; });
      card.addEventListener('mouseleave', function(){ if(!pinned) img.src = it.img; });
      card.addEventListener('click', function(){ pinned = !pinned; img.src = pinned ? it.cam : it.img; });
    }
    var lab = document.createElement('div');
    lab.className = 'lab';
    lab.title = it.id + ': true ' + it.true + ', predicted ' + it.pred + ' (' + it.conf.toFixed(3) + ')';
    lab.textContent = 'true ' + it.true;
    var pred = document.createElement('div');
    pred.textContent = 'pred ' + it.pred + ' (' + it.conf.toFixed(2) + ')';
    lab.appendChild(pred);
    card.appendChild(img); card.appendChild(lab);
    it.card = card; it.order = i;
  });
  function render(){
    var shown = items.filter(function(it){
      return (!fClass.value || it.true === fClass.value) &&
             (!fOutcome.value || (fOutcome.value === 'correct') === it.correct);
    });
    if(fSort.value === 'conf-desc') shown.sort(function(a, b){ return b.conf - a.conf; });
    else if(fSort.value === 'conf-asc') shown.sort(function(a, b){ return a.conf - b.conf; });
    else shown.sort(function(a, b){ return a.order - b.order; });
    gallery.replaceChildren.apply(gallery, shown.map(function(it){ return it.card; }));
    count.textContent = shown.length + ' of ' + items.length + ' shown';
  }
  [fClass, fOutcome, fSort].forEach(function(el){ el.addEventListener('change', render); });
  render();
})();
"""
