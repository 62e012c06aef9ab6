"""HAM10000 from its CSV manifest: a lesion-grouped split against an image-level one (patient leakage, measured).

Two runs of ``medlens train csv:HAM10000_metadata.csv --image-pattern 'images/{image_id}.jpg'
--label-col dx --recipe auto --budget 5m`` at 64 px, the same seed:

* ``grouped``: ``--group-col lesion_id`` (every lesion's images in one split; the honest number);
* ``image``: no group column (a lesion's photos may sit on both sides of the split, as in
  DermaMNIST's 7:1:2 split; the leaked number).

Each reports test ACC, balanced accuracy and macro AUC (the mean of one-vs-rest AUCs), whether any
lesion is in two splits, and the wall time, next to DermaMNIST's published ResNet-18 (28) row
(ACC .735, AUC .917; MedMNIST v2, Yang et al. 2023): an image-level split of the same images at
28 px, trained 100 epochs, so it differs in size, split and training time.

Results: ``benchmarks/results/ham10000-<date>.json`` and a markdown table on stdout.

Usage:
    .venv/bin/python benchmarks/ham10000.py                          # both runs, 64 px, 5 min each
    .venv/bin/python benchmarks/ham10000.py --budget 20s --size 28 --quick   # smoke run (not a result)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
TABLE = SHARED / "ham10000" / "HAM10000_metadata.csv"
PUBLISHED = {"model": "DermaMNIST ResNet-18 (28), MedMNIST v2", "test_acc": 0.735, "test_auc": 0.917}
SPLITS = {
    "grouped": {"image_pattern": "images/{image_id}.jpg", "label_col": "dx", "group_col": "lesion_id"},
    "image": {"image_pattern": "images/{image_id}.jpg", "label_col": "dx"},
}


def run_one(name: str, *, size: int, budget: str, seed: int, workdir: Path, quick: bool) -> dict:
    from medlens import workflows
    from medlens.engine.auto import build_train_config
    from medlens.evaluate.evaluation import evaluate_run

    overrides = {"data": {"spec": f"csv:{TABLE}", "size": size, "split_seed": seed, "source_options": SPLITS[name]},
                 "train": {"seed": seed, "tracking_uri": "none", "progress": False}}
    if quick:  # smoke settings: prove the script runs end to end, not a result
        overrides["model"] = {"name": "cnn_small"}
        overrides["train"]["epochs"] = 1
    config, plan = build_train_config(overrides, recipe="default" if quick else "auto",
                                      budget=None if quick else budget, say=lambda m: print(m, file=sys.stderr))
    run_dir = workdir / f"ham10000-{name}"
    start = time.perf_counter()
    workflows.train(config, run_dir, plan=plan)
    wall = time.perf_counter() - start
    metrics = evaluate_run(run_dir, split="test", n_bootstrap=1000, seed=seed).metrics
    record = json.loads((run_dir / "splits.json").read_text())
    lesion_of = _lesions()
    owner: dict[str, set] = {}
    for split, ids in record["splits"].items():
        for image in ids:
            owner.setdefault(lesion_of[image], set()).add(split)
    crossing = sum(1 for splits in owner.values() if len(splits) > 1)
    ci = metrics["ci"]
    return {"split": name, "seed": seed, "size": size, "budget": budget, "wall_s": round(wall, 1),
            "model": config.model.name, "epochs": config.train.epochs, "test_n": metrics["n"],
            "test_acc": metrics["acc"], "test_acc_ci": [ci["acc"]["lower"], ci["acc"]["upper"]],
            "test_balanced_accuracy": metrics["per_class"]["balanced_accuracy"],
            "test_macro_auc": metrics["auc"], "test_auc_ci": [ci["auc"]["lower"], ci["auc"]["upper"]],
            "lesions_in_two_splits": crossing, "leakage": record.get("leakage", {}), "config": config.to_dict()}


def _lesions() -> dict[str, str]:
    """Image id (``images/ISIC_x.jpg``) -> lesion id, from the manifest."""
    import csv

    with TABLE.open(newline="", encoding="utf-8-sig") as handle:
        return {f"images/{row['image_id']}.jpg": row["lesion_id"] for row in csv.DictReader(handle)}


def table(rows: list[dict]) -> str:
    lines = ["| split | size | model, epochs | test ACC [95% CI] | balanced acc. | macro AUC [95% CI] | "
             "lesions in two splits | wall |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['size']} | {r['model']}, {r['epochs']} | {r['test_acc']:.3f} "
                     f"[{r['test_acc_ci'][0]:.3f}, {r['test_acc_ci'][1]:.3f}] | {r['test_balanced_accuracy']:.3f} | "
                     f"{r['test_macro_auc']:.3f} [{r['test_auc_ci'][0]:.3f}, {r['test_auc_ci'][1]:.3f}] | "
                     f"{r['lesions_in_two_splits']} | {r['wall_s']:.0f} s |")
    lines.append(f"| {PUBLISHED['model']} (image-level 7:1:2) | 28 | ResNet-18, 100 | "
                 f"{PUBLISHED['test_acc']:.3f} | - | {PUBLISHED['test_auc']:.3f} | (not grouped) | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--budget", default="5m", help="--recipe auto budget per run (default 5m)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="grouped,image", help="which runs: grouped, image (default both)")
    parser.add_argument("--quick", action="store_true", help="smoke run: cnn_small, 1 epoch, no auto recipe")
    parser.add_argument("--out", help="JSON to write (default benchmarks/results/ham10000-<date>.json)")
    args = parser.parse_args(argv)
    if not TABLE.is_file():
        print(f"HAM10000 not found at {TABLE}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="medlens-ham-") as tmp:
        os.environ["MEDLENS_CACHE"] = str(Path(tmp) / "cache")
        rows = [run_one(name, size=args.size, budget=args.budget, seed=args.seed, workdir=Path(tmp), quick=args.quick)
                for name in args.splits.split(",")]
    date = _dt.date.today().isoformat()
    out = Path(args.out) if args.out else HERE / "results" / f"ham10000-{date}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"date": date, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                         "python": platform.python_version()},
                               "published": PUBLISHED, "runs": rows}, indent=1))
    print(table(rows))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
