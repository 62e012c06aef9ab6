"""The report's figures, twice: interactive Plotly specs for the HTML page, and print PNGs.

Both are built from the same inputs (``history.csv`` rows and an evaluation's ``metrics.json``),
so the page and the paper figures always show the same numbers. Plotly specs are plain dicts
(``{"data": [...], "layout": {...}}``) that the page hands to ``Plotly.newPlot``; the PNGs are
drawn with matplotlib's object API (no pyplot state) at 300 dpi.
"""

from __future__ import annotations

import math
from pathlib import Path

from medlens._io import atomic_path
from medlens.data.registry import Task

CURVES = (("loss", "Loss"), ("acc", "ACC"), ("auc", "AUC"))
_EPOCH_AXIS = {"title": {"text": "epoch"}, "tickformat": "d"}
_LAYOUT = {"margin": {"l": 50, "r": 20, "t": 40, "b": 45}, "height": 320, "hovermode": "x unified",
           "legend": {"orientation": "h", "y": -0.25}}


def _clean(values) -> list:
    return [None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in values]


def figure_spec(title: str, data: list, **layout) -> dict:
    return {"data": data, "layout": {**_LAYOUT, "title": {"text": title, "font": {"size": 14}}, **layout}}


def curve_figures(history: list[dict]) -> list[dict]:
    """Loss, ACC and AUC per epoch for train and val, and the learning rate."""
    epochs = [row["epoch"] for row in history]
    figures = []
    for key, title in CURVES:
        data = [{"type": "scatter", "mode": "lines+markers", "name": f"{split} {title}", "x": epochs,
                 "y": _clean([row[f"{split}_{key}"] for row in history])} for split in ("train", "val")]
        figures.append(figure_spec(title, data, xaxis=_EPOCH_AXIS))
    figures.append(figure_spec("Learning rate", [{"type": "scatter", "mode": "lines", "name": "lr", "x": epochs,
                                              "y": _clean([row["lr"] for row in history])}],
                           xaxis=_EPOCH_AXIS, yaxis={"type": "log"}))
    return figures


def confusion_figures(metrics: dict) -> list[dict]:
    """Confusion-matrix heatmaps (counts, and rows normalised to recall); multilabel: per label."""
    names = metrics["class_names"]
    counts = metrics["confusion"]["counts"]
    normalized = metrics["confusion"]["normalized"]
    if Task(metrics["task"]).is_multilabel:  # (K, 2, 2): one small matrix per label, as a table of counts
        z = [[row[0][0], row[0][1], row[1][0], row[1][1]] for row in counts]
        return [figure_spec("Per-label confusion (TN, FP, FN, TP)", [{
            "type": "heatmap", "z": z, "x": ["TN", "FP", "FN", "TP"], "y": names, "colorscale": "Blues",
            "text": z, "texttemplate": "%{text}"}], height=max(320, 28 * len(names)), yaxis={"automargin": True})]
    out = []
    for title, z, fmt in (("Confusion matrix (counts)", counts, "%{z}"),
                          ("Confusion matrix (row-normalised)", normalized, "%{z:.2f}")):
        out.append(figure_spec(title, [{"type": "heatmap", "z": _clean_matrix(z), "x": names, "y": names,
                                    "colorscale": "Blues", "texttemplate": fmt, "hovertemplate":
                                    "true %{y}<br>predicted %{x}<br>%{z}<extra></extra>"}],
                           # automargin: the margins grow to the class names ("malignant" was cut
                           # to "alignant" by the fixed 50 px left margin).
                           xaxis={"title": {"text": "predicted"}, "automargin": True},
                           yaxis={"title": {"text": "true"}, "autorange": "reversed", "automargin": True},
                           hovermode="closest", height=max(320, 60 + 40 * len(names))))
    return out


def _clean_matrix(z) -> list:
    return [_clean(row) for row in z]


def roc_pr_figures(metrics: dict) -> list[dict]:
    """ROC and precision-recall curves, one trace per class (the positive class for binary)."""
    roc = [{"type": "scatter", "mode": "lines", "name": f"{c['name']} (AUC {_num(c['auc'])})", "x": c["fpr"],
            "y": c["tpr"]} for c in metrics["roc"] if c["fpr"]]
    roc.append({"type": "scatter", "mode": "lines", "name": "chance", "x": [0, 1], "y": [0, 1],
                "line": {"dash": "dot", "color": "gray"}})
    pr = [{"type": "scatter", "mode": "lines", "name": f"{c['name']} (AP {_num(c['average_precision'])})",
           "x": c["recall"], "y": c["precision"]} for c in metrics["pr"] if c["recall"]]
    return [figure_spec("ROC", roc, xaxis={"title": {"text": "false positive rate"}},
                    yaxis={"title": {"text": "true positive rate"}}, hovermode="closest"),
            figure_spec("Precision-recall", pr, xaxis={"title": {"text": "recall"}},
                    yaxis={"title": {"text": "precision"}}, hovermode="closest")]


def reliability_figure(metrics: dict) -> dict:
    """Reliability diagram: accuracy against confidence per bin, bar width = bin, with counts on hover."""
    bins = [b for b in metrics["calibration"]["bins"] if b["count"]]
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    calib = metrics["calibration"]
    return figure_spec(f"Reliability (ECE {_num(calib['ece'])}, Brier {_num(calib['brier'])})", [
        {"type": "bar", "name": "accuracy", "x": centers, "y": _clean([b["accuracy"] for b in bins]),
         "width": [b["upper"] - b["lower"] for b in bins], "customdata": [b["count"] for b in bins],
         "hovertemplate": "confidence %{x:.2f}<br>accuracy %{y:.3f}<br>%{customdata} images<extra></extra>"},
        {"type": "scatter", "mode": "markers", "name": "mean confidence", "x": centers,
         "y": _clean([b["confidence"] for b in bins])},
        {"type": "scatter", "mode": "lines", "name": "perfect", "x": [0, 1], "y": [0, 1],
         "line": {"dash": "dot", "color": "gray"}},
    ], xaxis={"title": {"text": "confidence"}, "range": [0, 1]}, yaxis={"title": {"text": "accuracy"}, "range": [0, 1]},
        hovermode="closest")


def robustness_figures(metrics: dict) -> list[dict]:
    """One figure per corruption of ``eval/robustness/metrics.json``: ACC and balanced accuracy vs severity.

    Severity 0 is the clean split; error bars are the bootstrap intervals where there are any.
    """
    clean = metrics["clean"]
    figures = []
    for name, result in metrics["corruptions"].items():
        severities = [0, *(int(s) for s in result["severities"])]
        blocks = [clean, *result["severities"].values()]
        data = []
        for key, label in (("acc", "ACC"), ("balanced_accuracy", "balanced accuracy")):
            trace = {"type": "scatter", "mode": "lines+markers", "name": label, "x": severities,
                     "y": _clean([b[key] for b in blocks])}
            if all(key in b.get("ci", {}) for b in blocks):
                trace["error_y"] = {"type": "data", "symmetric": False,
                                    "array": _clean([b["ci"][key]["upper"] - b[key] for b in blocks]),
                                    "arrayminus": _clean([b[key] - b["ci"][key]["lower"] for b in blocks])}
            data.append(trace)
        figures.append(figure_spec(name, data, xaxis={"title": {"text": "severity"}, "dtick": 1},
                                   yaxis={"range": [0, 1]}))
    return figures


def fold_figure(summary: dict) -> dict:
    """Cross-validation: val and test AUC per fold."""
    names = [r["name"] for r in summary["runs"]]
    return figure_spec("AUC per fold", [
        {"type": "bar", "name": f"{split} AUC", "x": names, "y": _clean([r[f"{split}_auc"] for r in summary["runs"]])}
        for split in ("val", "test")], hovermode="closest", yaxis={"range": [0, 1]})


def forest_figure(subgroups: dict) -> dict:
    """Per-subgroup AUC with its 95% interval, one row per subgroup, the whole set's AUC as a line.

    Subgroups too small for an interval are drawn as open markers without whiskers.
    """
    labels, auc, low, high, small = [], [], [], [], []
    for column, entry in subgroups["columns"].items():
        for group in entry["groups"]:
            ci = group["ci"].get("auc") or {}
            value = group["auc"]
            labels.append(f"{column}: {group['value']} (n={group['n']})")
            auc.append(value)
            lower, upper = ci.get("lower"), ci.get("upper")
            ok = lower is not None and math.isfinite(lower) and math.isfinite(value)
            low.append(value - lower if ok else None)
            high.append(upper - value if ok else None)
            small.append(group["too_small"])
    whole = subgroups.get("whole_auc")
    data = [{"type": "scatter", "mode": "markers", "name": "AUC (95% CI)", "x": _clean(auc), "y": labels,
             "error_x": {"type": "data", "symmetric": False, "array": high, "arrayminus": low},
             "marker": {"symbol": ["circle-open" if s else "circle" for s in small], "size": 9}}]
    shapes = []
    if whole is not None and math.isfinite(whole):
        shapes.append({"type": "line", "x0": whole, "x1": whole, "yref": "paper", "y0": 0, "y1": 1,
                       "line": {"dash": "dot", "color": "gray"}})
    return figure_spec("AUC by subgroup (dotted: whole set; open: too small for a CI)", data,
                       height=max(260, 28 * len(labels) + 90), shapes=shapes, hovermode="closest",
                       xaxis={"title": {"text": "AUC"}}, yaxis={"autorange": "reversed", "automargin": True},
                       showlegend=False)


def _num(value) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def write_pngs(folder: str | Path, history: list[dict], metrics: dict | None) -> list[Path]:
    """Print versions of the figures (300 dpi PNG) in ``folder``; returns the files written."""
    import numpy as np
    from matplotlib.figure import Figure

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Figure, name: str) -> None:
        fig.tight_layout()
        with atomic_path(folder / name) as tmp, tmp.open("wb") as handle:
            fig.savefig(handle, format="png", dpi=300, bbox_inches="tight")  # long tick labels stay in
        written.append(folder / name)

    if history:
        fig = Figure(figsize=(10, 2.6))
        epochs = [row["epoch"] for row in history]
        for ax, (key, title) in zip(fig.subplots(1, 4), [*CURVES, ("lr", "Learning rate")], strict=True):
            if key == "lr":
                ax.plot(epochs, [row["lr"] for row in history])
                ax.set_yscale("log")
            else:
                for split in ("train", "val"):
                    ax.plot(epochs, [row[f"{split}_{key}"] for row in history], label=split)
                ax.legend(fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
        save(fig, "curves.png")
    if not metrics:
        return written
    names = metrics["class_names"]
    if not Task(metrics["task"]).is_multilabel:
        fig = Figure(figsize=(3.2 + 0.4 * len(names), 3 + 0.4 * len(names)))
        ax = fig.subplots()
        z = np.array(_clean_matrix(metrics["confusion"]["normalized"]), dtype=float)
        counts = np.array(metrics["confusion"]["counts"])
        ax.imshow(z, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{counts[i, j]}\n{z[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if z[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        save(fig, "confusion.png")
    fig = Figure(figsize=(9, 3))
    roc_ax, pr_ax, rel_ax = fig.subplots(1, 3)
    for c in metrics["roc"]:
        if c["fpr"]:
            roc_ax.plot(c["fpr"], c["tpr"], label=f"{c['name']} ({_num(c['auc'])})")
    roc_ax.plot([0, 1], [0, 1], ":", color="gray")
    roc_ax.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    for c in metrics["pr"]:
        if c["recall"]:
            pr_ax.plot(c["recall"], c["precision"], label=f"{c['name']} ({_num(c['average_precision'])})")
    pr_ax.set(title="Precision-recall", xlabel="recall", ylabel="precision")
    bins = [b for b in metrics["calibration"]["bins"] if b["count"]]
    rel_ax.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["accuracy"] for b in bins],
               width=[b["upper"] - b["lower"] for b in bins], edgecolor="black", alpha=0.7)
    rel_ax.plot([0, 1], [0, 1], ":", color="gray")
    rel_ax.set(title=f"Reliability (ECE {_num(metrics['calibration']['ece'])})", xlabel="confidence",
               ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=6)
    save(fig, "roc_pr_reliability.png")
    return written
