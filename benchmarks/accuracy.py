"""Accuracy runs of the training engine, with their wall time, on the real data.

Each run is one ``medlens.engine.train.train`` call, timed from the call to its return (data
loading, training, the final evaluation of the best checkpoint on val and test), and compared
with a target:

* ``breast-fast``: BreastMNIST (28 px) with the ``fast`` recipe (``resnet_compact``). Target:
  the published MedMNIST v2 ResNet-18 (28) test result, AUC 0.901 and ACC 0.863, in under 3
  minutes on this 2-core machine.
* ``medical-mnist-cnn``: the tutorials' two-conv CNN (``cnn_small``) on the Medical MNIST zip
  (58,954 images, six classes, 64 px). Target: test accuracy >= 99.5 %.

Several seeds can be run (``--seeds 0 1 2``); each is reported, and the median too, so a target
met by one lucky seed shows as such. Results: ``benchmarks/results/accuracy-<date>.json``.

Usage:
    .venv/bin/python benchmarks/accuracy.py                       # both runs, seed 0
    .venv/bin/python benchmarks/accuracy.py --runs breast-fast --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"

RUNS = {
    "breast-fast": {
        "overrides": lambda: {"data": {"spec": "breastmnist", "root": str(SHARED / "medmnist")}},
        "recipe": "fast",
        "targets": {"test_auc": 0.901, "test_acc": 0.863, "wall_s_max": 180.0},
    },
    "medical-mnist-cnn": {
        "overrides": lambda: {"data": {"spec": f"folder:{SHARED / 'medical_mnist' / 'medical_mnist.zip'}", "size": 64},
                              "model": {"name": "cnn_small"}, "train": {"epochs": 5},
                              "optim": {"schedule": "cosine"}},
        "recipe": "default",
        "targets": {"test_acc": 0.995},
    },
}


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def run_one(name: str, seed: int, workdir: Path) -> dict:
    import torch

    from medlens.engine.config import build_config
    from medlens.engine.train import train

    spec = RUNS[name]
    overrides = spec["overrides"]()
    overrides.setdefault("train", {}).update({"seed": seed, "tracking_uri": "none", "progress": False})
    config = build_config(overrides, recipe=spec["recipe"])
    start = time.perf_counter()
    result = train(config, workdir / f"{name}-seed{seed}")
    wall = time.perf_counter() - start
    metrics = result.metrics
    row = {"run": name, "seed": seed, "wall_s": round(wall, 1), "epochs": metrics["epochs_run"],
           "best_epoch": metrics["best_epoch"], "train_images_per_second": round(metrics["train_images_per_second"]),
           "val_acc": metrics["val"]["acc"], "val_auc": metrics["val"]["auc"],
           "test_acc": metrics["test"]["acc"], "test_auc": metrics["test"]["auc"], "config": config.to_dict(),
           "torch_threads": torch.get_num_threads()}
    row["met"] = _met(row, spec["targets"])
    return row


def _met(row: dict, targets: dict) -> dict:
    out = {}
    for key, target in targets.items():
        if key == "wall_s_max":
            out[key] = row["wall_s"] <= target
        else:
            out[key] = row[key] >= target
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/accuracy-<date>.json)")
    args = parser.parse_args(argv)
    os.environ.setdefault("MEDLENS_DATA", str(SHARED / "medmnist"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="medlens-accuracy-") as tmp:
        for name in args.runs:
            for seed in args.seeds:
                row = run_one(name, seed, Path(tmp))
                rows.append(row)
                print(f"{name} seed {seed}: {row['wall_s']:.0f} s, test ACC {row['test_acc']:.4f} "
                      f"AUC {row['test_auc']:.4f}, targets {row['met']}", flush=True)
    summary = {}
    for name in args.runs:
        mine = [r for r in rows if r["run"] == name]
        summary[name] = {k: statistics.median(r[k] for r in mine) for k in ("wall_s", "test_acc", "test_auc")}
        summary[name]["seeds_meeting_all_targets"] = sum(all(r["met"].values()) for r in mine)
        summary[name]["seeds"] = len(mine)
    date = _dt.date.today().isoformat()
    out = args.out or HERE / "results" / f"accuracy-{date}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": date, "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "runs": rows, "summary": summary}
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(record, indent=1))
    tmp_out.replace(out)
    print("\n| run | seeds | median wall s | median test ACC | median test AUC | seeds meeting every target |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['seeds']} | {s['wall_s']:.0f} | {s['test_acc']:.4f} | {s['test_auc']:.4f} | "
              f"{s['seeds_meeting_all_targets']}/{s['seeds']} |")
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
