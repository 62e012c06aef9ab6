"""Runs side by side, and beside the published MedMNIST v2 results.

For each run the test metrics come from ``eval/test/metrics.json`` (written by ``medlens
evaluate``, which is run first when missing), training time from the run's ``metrics.json``,
parameters from the checkpoint, and FLOPs per image from one forward pass under
``torch.utils.flop_counter.FlopCounterMode`` (multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

BENCHMARKS = ("medmnist",)


def model_cost(run: str | Path) -> dict:
    """``{"params": int, "flops": int}`` of a run's best model for one image of its input size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medlens.engine.checkpoint import load_model

    model, card = load_model(run)
    params = sum(p.numel() for p in model.parameters())
    x = torch.zeros(1, card.in_channels, *([card.input_size] * card.spatial_dims))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return {"params": int(params), "flops": int(counter.get_total_flops())}


def run_summary(run: str | Path, *, split: str = "test", n_bootstrap: int = 1000) -> dict:
    """One run's row: metrics with CIs, training seconds, params, FLOPs, dataset name."""
    from medlens._io import file_sha256
    from medlens.engine.checkpoint import load_card
    from medlens.engine.run_folder import RunFolder
    from medlens.evaluate.evaluation import evaluate_run

    run = Path(run)
    layout = RunFolder(run)
    path = layout.eval_metrics(split)
    metrics = json.loads(path.read_text()) if path.is_file() else None
    # An earlier evaluation counts only if it scored these very weights, with intervals when asked for.
    if metrics is None or metrics.get("checkpoint_sha256") != file_sha256(layout.best) \
            or (n_bootstrap and not metrics.get("ci")):
        metrics = evaluate_run(run, split=split, n_bootstrap=n_bootstrap).metrics
    seconds = layout.read_metrics().get("seconds") if layout.is_finished else None
    card = load_card(layout.best)
    spec = card.dataset.get("spec", "")
    return {"run": str(run), "name": run.name, "dataset": spec.split("@")[0], "spec": spec,
            "model": card.architecture, "n": metrics["n"], "acc": _num(metrics["acc"]), "auc": _num(metrics["auc"]),
            "macro_f1": _num(metrics["per_class"]["macro"]["f1"]), "ci": metrics.get("ci", {}), "seconds": seconds,
            **model_cost(run)}


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def compare_runs(runs: list[str | Path], *, benchmark: str | None = None, split: str = "test",
                 n_bootstrap: int = 1000) -> dict:
    """Rows for every run, and the published rows of their datasets when ``benchmark`` is given.

    Args:
        runs: run folders.
        benchmark: ``None`` or ``"medmnist"`` (the MedMNIST v2 table).
        split: the split compared (published numbers are on ``test``).
        n_bootstrap: resamples for runs not yet evaluated.

    Returns:
        ``{"runs": [row...], "published": {dataset: [{"method", "auc", "acc", "versus": {run name:
        {"auc_delta", "acc_delta", "auc_ci_excludes", "acc_ci_excludes"}}}]}}``. A CI "excludes"
        the published number when the run's whole 95% interval lies above it (+1) or below it (-1);
        0 when the interval contains it.

    Raises:
        ValueError: no runs, an unknown benchmark, or ``benchmark`` with a split other than test.
    """
    if not runs:
        raise ValueError("name at least one run folder to compare")
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}")
    if benchmark is not None and split != "test":
        raise ValueError(f"published results are on the test split; got --split {split}")
    rows = [run_summary(run, split=split, n_bootstrap=n_bootstrap) for run in runs]
    if len({row["name"] for row in rows}) < len(rows):  # runs/a/fold0 and runs/b/fold0: name them by path
        for row in rows:
            row["name"] = row["run"]
    published: dict[str, list] = {}
    if benchmark == "medmnist":
        from medlens.evaluate.published import published_rows

        for dataset in dict.fromkeys(row["dataset"] for row in rows):
            entries = []
            for method, auc, acc in published_rows(dataset):
                versus = {}
                for row in rows:
                    if row["dataset"] != dataset:
                        continue
                    versus[row["name"]] = {
                        "auc_delta": row["auc"] - auc, "acc_delta": row["acc"] - acc,
                        "auc_ci_excludes": ci_excludes(row["ci"].get("auc"), auc),
                        "acc_ci_excludes": ci_excludes(row["ci"].get("acc"), acc),
                    }
                entries.append({"method": method, "auc": auc, "acc": acc, "versus": versus})
            published[dataset] = entries
    return {"split": split, "benchmark": benchmark, "runs": rows, "published": published}


def ci_excludes(interval: dict | None, value: float) -> int:
    if not interval or interval.get("lower") is None or interval.get("upper") is None:
        return 0
    if interval["lower"] > value:
        return 1
    if interval["upper"] < value:
        return -1
    return 0


def _with_ci(value: float, interval: dict | None) -> str:
    if not math.isfinite(value):
        return "-"
    if not interval or interval.get("lower") is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{interval['lower']:.3f}, {interval['upper']:.3f}]"


def format_comparison(result: dict) -> str:
    """Printed tables: runs side by side, then each dataset's published rows against the runs.

    In the second table ``+0.021*`` means the run is 0.021 ahead and its 95% CI lies wholly
    above the published number (``*`` below it when behind); no star: the CI contains it.
    """
    from medlens._table import format_table

    rows = []
    for row in result["runs"]:
        seconds = f"{row['seconds']:.0f}" if row["seconds"] is not None else "-"
        rows.append([row["name"], row["spec"], row["model"], _with_ci(row["auc"], row["ci"].get("auc")),
                     _with_ci(row["acc"], row["ci"].get("acc")), _with_ci(row["macro_f1"], row["ci"].get("macro_f1")),
                     seconds, f"{row['params'] / 1e6:.2f}M", f"{row['flops'] / 1e6:.1f}M"])
    parts = [format_table(["run", "data", "model", f"{result['split']} AUC [95% CI]", "ACC [95% CI]",
                           "macro F1 [95% CI]", "train s", "params", "FLOPs/img"], rows)]
    for dataset, entries in result["published"].items():
        if not entries:
            parts.append(f"{dataset}: no published MedMNIST v2 results")
            continue
        names = list(entries[0]["versus"])
        table = []
        for entry in entries:
            cells = [entry["method"], f"{entry['auc']:.3f}", f"{entry['acc']:.3f}"]
            for name in names:
                v = entry["versus"][name]
                cells.append(f"{_delta(v['auc_delta'], v['auc_ci_excludes'])} / "
                             f"{_delta(v['acc_delta'], v['acc_ci_excludes'])}")
            table.append(cells)
        header = ["published (MedMNIST v2)", "AUC", "ACC", *[f"{n}: dAUC / dACC" for n in names]]
        parts.append(f"{dataset}: published test results (Yang et al., Sci Data 2023); "
                     "* = the run's 95% CI excludes the published number\n" + format_table(header, table))
    return "\n\n".join(parts)


def _delta(value: float, excludes: int) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:+.3f}{'*' if excludes else ''}"
