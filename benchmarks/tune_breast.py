"""The tune acceptance run: ``medlens tune`` on BreastMNIST, default space, 8 trials, 3-minute budget,
against the ``fast`` recipe on the same split.

Two things run one after the other, with the same seed, on the official BreastMNIST (28 px)
split, MLflow off:

1. ``medlens tune breastmnist --space default --trials 8 --budget 3m --epochs E`` (base recipe
   ``fast``; ``E`` = ``--epochs``, default 30: 8 trials in 3 minutes give each about 22 s, and the
   fast recipe runs about 100 epochs in 55 s on a quiet 2-core machine (README, "Accuracy"),
   so 30 epochs leave room for loading and scoring). Timed as a whole, from the command's start
   to its end.
2. ``medlens train breastmnist --recipe fast`` (its own 100 epochs): the baseline.

Recorded: trials finished, pruned, failed, the tune's wall time against the budget (+10%
allowed), the best trial's validation AUC and the fast run's validation AUC (both of their best
checkpoints; the test split chose nothing), and the fast run's wall time. The acceptance asks
for a tune inside its budget, at least one pruned trial and a best validation AUC at least the
fast recipe's.

Results: ``benchmarks/results/tune_breast-<date>.json`` and a markdown row on stdout.

Usage (on a quiet machine):
    .venv/bin/python benchmarks/tune_breast.py
    .venv/bin/python benchmarks/tune_breast.py --smoke     # 2 trials of 2 epochs, 1-epoch baseline: checks the script
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SLACK = 1.10


def _run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="MedMNIST folder (default $MEDLENS_DATA)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--budget", type=float, default=180.0, help="seconds (default 180)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each trial (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny settings, nothing written to results/")
    args = parser.parse_args(argv)
    trials, budget, epochs, baseline_epochs = args.trials, args.budget, args.epochs, None
    if args.smoke:
        trials, budget, epochs, baseline_epochs = 2, 60.0, 2, 1
    root = ["--root", args.root] if args.root else []
    common = ["--seed", str(args.seed), "--tracking-uri", "none", "--no-progress", "--no-report", *root]
    with tempfile.TemporaryDirectory(prefix="medlens-tune-bench-") as work:
        os.environ.setdefault("MEDLENS_CACHE", str(Path(work) / "cache"))
        tune_dir, fast_dir = Path(work) / "tune", Path(work) / "fast"
        tune_wall = _run([sys.executable, "-m", "medlens", "tune", "breastmnist", "--space", "default",
                          "--trials", str(trials), "--budget", f"{budget:g}s", "--epochs", str(epochs),
                          "--out", str(tune_dir), *common])
        fast = [sys.executable, "-m", "medlens", "train", "breastmnist", "--recipe", "fast", "--out", str(fast_dir),
                *common]
        fast_wall = _run(fast + (["--epochs", str(baseline_epochs)] if baseline_epochs else []))
        from medlens.engine.run_folder import RunFolder

        summary = json.loads(RunFolder(tune_dir).tune_summary.read_text())
        fast_metrics = RunFolder(fast_dir).read_metrics()
    counts = summary["counts"]
    best = summary["best"]
    record = {
        "date": _dt.date.today().isoformat(), "trials_asked": trials, "budget_s": budget, "epochs_per_trial": epochs,
        "complete": counts["complete"], "pruned": counts["pruned"], "failed": counts["fail"],
        "tune_wall_s": round(tune_wall, 1), "within_budget": tune_wall <= budget * SLACK,
        "best_trial": best and best["number"], "best_params": best and best["params"],
        "best_val_auc": best and best["value"], "fast_val_auc": fast_metrics["val"]["auc"],
        "fast_wall_s": round(fast_wall, 1), "fast_epochs": fast_metrics["epochs_run"],
        "trials": [{k: r[k] for k in ("number", "state", "value", "epochs_run", "duration_s")}
                   for r in summary["trials"]],
    }
    record["best_at_least_fast"] = bool(best) and best["value"] >= fast_metrics["val"]["auc"]
    print("| trials (complete + pruned) | pruned | wall s (budget) | best val AUC | fast recipe val AUC "
          "| fast wall s |")
    print("|---|---|---|---|---|---|")
    best_auc = "-" if not best else f"{best['value']:.4f}"
    print(f"| {counts['complete'] + counts['pruned']} | {counts['pruned']} | {tune_wall:.0f} ({budget:.0f}) | "
          f"{best_auc} | {fast_metrics['val']['auc']:.4f} | {fast_wall:.0f} |")
    if not args.smoke:
        out = HERE / "results" / f"tune_breast-{record['date']}.json"
        out.write_text(json.dumps(record, indent=1))
        print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
