"""Transfer learning measured: from scratch vs ImageNet vs self-supervised vs ``--init-from``, same budget.

For each dataset and seed, four arms train the same backbone (``--model``, default
``efficientnet_lite0``) with the ``finetune`` recipe under one wall-clock budget per arm
(``train.max_seconds``; early epochs count, the best validation-AUC checkpoint is scored):

* ``scratch``: random weights, every layer trained from the first epoch (no frozen epoch, one rate).
* ``imagenet``: ``--pretrained imagenet`` (head first for one epoch, then all layers, backbone at 0.1x).
* ``simclr``: ``medlens pretrain --method simclr`` on the training images first, then ``--init-from`` it;
  the pre-training's wall time is taken out of the same budget.
* ``init-from``: ``--init-from`` a run of the same backbone trained (ImageNet start) on another
  dataset (``--source``, default PneumoniaMNIST), the seed's domain transfer. That source run is
  trained once per seed with the same budget and is not charged to the target's budget (it is a
  reusable asset, as published ImageNet weights are).

Throughput: each run's training images/s is in its row (``--model``'s); inference images/s of
each backbone in ``--backbones`` is measured on a batch of 256 at ``--size`` (default 28 px, which
``efficientnet_lite0`` upsamples to its 64 px minimum inside the model).

Datasets: ``breastmnist``, ``retinamnist``, ``covid19`` (the folder in ../shared/data) and any spec
(``csv:...`` for HAM10000 once the CSV source exists) via ``--data NAME=SPEC``.

Usage:
    .venv/bin/python benchmarks/transfer.py                         # 3 seeds, 600 s per arm, all datasets
    .venv/bin/python benchmarks/transfer.py --datasets breastmnist --seeds 0 --budget 120
    .venv/bin/python benchmarks/transfer.py --smoke                 # a minute: checks the harness only
Results: ``benchmarks/results/transfer-<date>.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
DATASETS = {
    "breastmnist": "breastmnist",
    "retinamnist": "retinamnist",
    "covid19": f"folder:{SHARED / 'covid19'}",
}
ARMS = ("scratch", "imagenet", "simclr", "init-from")


def _train(spec: str, out: Path, *, model: str, seed: int, budget: float, epochs: int, size: int | None,
           **model_overrides) -> dict:
    from medlens.engine.config import build_config
    from medlens.engine.train import train

    overrides = {"data": {"spec": spec, "size": size}, "model": {"name": model, **model_overrides},
                 "train": {"seed": seed, "epochs": epochs, "max_seconds": budget, "tracking_uri": "none",
                           "progress": False}}
    if model_overrides.get("pretrained", "none") == "none":
        # From scratch or from a run: no frozen epoch unless the weights are worth protecting.
        overrides["optim"] = {"freeze_epochs": 0 if "init_from" not in model_overrides else 1,
                              "backbone_lr_scale": 1.0 if "init_from" not in model_overrides else 0.1}
        overrides["model"]["pretrained"] = "none"
    config = build_config(overrides, recipe="finetune")
    start = time.perf_counter()
    metrics = train(config, out).metrics
    return {"wall_s": round(time.perf_counter() - start, 1), "epochs": metrics["epochs_run"],
            "train_images_per_second": metrics["train_images_per_second"],
            "val_auc": metrics["val"]["auc"], "test_acc": metrics["test"]["acc"], "test_auc": metrics["test"]["auc"]}


def run_arm(arm: str, dataset: str, spec: str, seed: int, args, workdir: Path) -> dict:
    common = {"model": args.model, "seed": seed, "epochs": args.epochs, "size": args.size}
    out = workdir / f"{dataset}-{arm}-seed{seed}"
    if arm == "scratch":
        row = _train(spec, out, budget=args.budget, **common)
    elif arm == "imagenet":
        row = _train(spec, out, budget=args.budget, pretrained="imagenet", **common)
    elif arm == "simclr":
        from medlens.engine.pretrain import PretrainSettings, pretrain

        start = time.perf_counter()
        probe = pretrain(PretrainSettings(spec=spec, model=args.model, size=args.size, epochs=args.pretrain_epochs,
                                          batch_size=args.pretrain_batch, seed=seed), out.with_name(out.name + "-ssl"),
                         say=lambda m: print(f"  {m}", file=sys.stderr))
        spent = time.perf_counter() - start
        left = max(args.budget - spent, 1.0)
        row = _train(spec, out, budget=left, init_from=str(out.with_name(out.name + "-ssl")), **common)
        row.update(pretrain_s=round(spent, 1), linear_probe_val_auc=probe["probe"]["auc"])
        row["wall_s"] = round(row["wall_s"] + spent, 1)
    else:
        source = workdir / f"source-{args.source}-seed{seed}"
        if not source.exists():
            _train(args.source, source, budget=args.budget, pretrained="imagenet", **common)
        row = _train(spec, out, budget=args.budget, init_from=str(source), **common)
        row["source"] = args.source
    return {"dataset": dataset, "arm": arm, "seed": seed, **row}


def inference_speed(backbones: list[str], size: int, channels: int = 1, batch: int = 256, repeats: int = 3) -> dict:
    """Images/s of a forward pass (eval, no grad) of each backbone at ``size`` px, median of ``repeats``."""
    import torch

    from medlens.models import create_model

    out = {}
    for name in backbones:
        model = create_model(name, in_channels=channels, num_classes=2, input_size=size).eval()
        x = torch.randn(batch, channels, size, size)
        times = []
        with torch.no_grad():
            model(x[:8])  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        out[name] = round(batch / statistics.median(times), 1)
    return out


def sd(values: list[float]) -> float:
    """Sample standard deviation; 0 for a single seed."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), help="names of DATASETS or of --data")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=SPEC", help="another dataset spec")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=600.0, help="wall seconds per arm (default 600)")
    parser.add_argument("--epochs", type=int, default=100, help="epoch cap inside the budget (default 100)")
    parser.add_argument("--pretrain-epochs", type=int, default=20, help="SimCLR epochs (default 20)")
    parser.add_argument("--pretrain-batch", type=int, default=128)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, help="image size (default: the spec's)")
    parser.add_argument("--source", default="pneumoniamnist", help="--init-from arm: the dataset transferred from")
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet18", "resnet_compact"])
    parser.add_argument("--smoke", action="store_true", help="tiny settings: checks the harness, measures nothing")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/transfer-<date>.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.datasets, args.seeds, args.budget, args.epochs = ["breastmnist"], [0], 15.0, 1
        args.pretrain_epochs, args.backbones, args.source = 1, ["efficientnet_lite0"], "breastmnist"
    os.environ.setdefault("MEDLENS_DATA", str(SHARED / "medmnist"))
    specs = {**DATASETS, **dict(item.split("=", 1) for item in args.data)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="medlens-transfer-") as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                for arm in args.arms:
                    row = run_arm(arm, dataset, specs[dataset], seed, args, Path(tmp))
                    rows.append(row)
                    print(f"{dataset} {arm} seed {seed}: {row['wall_s']:.0f} s, {row['epochs']} epochs, "
                          f"test ACC {row['test_acc']:.4f} AUC {row['test_auc']:.4f}", flush=True)
    speed = inference_speed(args.backbones, args.size or 28)
    date = _dt.date.today().isoformat()
    out = args.out or HERE / "results" / f"transfer-{date}{'-smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"date": date, "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args) | {"out": str(out)},
              "runs": rows, "inference_images_per_second": speed}
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(record, indent=1, default=str))
    tmp_out.replace(out)
    print(f"\n| dataset | arm | seeds | test ACC mean ± sd | test AUC mean ± sd | wall s (budget {args.budget:.0f}) |")
    print("|---|---|---|---|---|---|")
    for dataset in args.datasets:
        for arm in args.arms:
            mine = [r for r in rows if r["dataset"] == dataset and r["arm"] == arm]
            if not mine:
                continue
            acc, auc = [r["test_acc"] for r in mine], [r["test_auc"] for r in mine]
            print(f"| {dataset} | {arm} | {len(mine)} | {statistics.mean(acc):.3f} ± {sd(acc):.3f} | "
                  f"{statistics.mean(auc):.3f} ± {sd(auc):.3f} | {statistics.median(r['wall_s'] for r in mine):.0f} |")
    print("\n| backbone | inference images/s (batch 256) |\n|---|---|")
    for name, value in speed.items():
        print(f"| {name} | {value:,.0f} |")
    print(f"\nresults written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
