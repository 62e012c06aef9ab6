"""Robustness and out-of-distribution benchmark (issue 19): the tables of benchmarks/README.md.

For each dataset and seed it trains a model (``medlens train SPEC --recipe auto --budget B``;
``--epochs N`` for a smoke run), runs ``medlens robustness`` on it, and feeds its
out-of-distribution detector images of other datasets: Medical MNIST (CT and X-ray classes),
COVID-19 X-rays, RetinaMNIST fundus photographs (converted to the model's channels) and uniform
noise, plus its own test split. It writes ``results/robustness.json`` and prints two tables:

- robustness: clean ACC/AUC, then per corruption the mean AUC and the severity-3 balanced
  accuracy, AUC drop and collapse flag, mean over seeds;
- OOD: the share of each image set flagged, mean over seeds.

Run for real (one command, about 2 x 3 x budget plus evaluation; do not time anything else meanwhile):

    MEDLENS_DATA=../shared/data/medmnist python benchmarks/robustness.py --budget 5m --seeds 3

Smoke run (seconds per model; the numbers mean nothing):

    MEDLENS_DATA=../shared/data/medmnist python benchmarks/robustness.py --epochs 1 --seeds 1 \\
        --datasets breastmnist --corruptions gaussian_noise contrast --ood-limit 50 --out /tmp/robust
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OOD_SETS = {  # name -> dataset spec (resolved at the model's size and channels)
    "Medical MNIST (CT, X-ray)": f"folder:{SHARED / 'medical_mnist' / 'medical_mnist.zip'}",
    "COVID-19 X-rays": f"folder:{SHARED / 'covid19'}",
    "RetinaMNIST fundus": "retinamnist",
}


def _train(spec: str, seed: int, out: Path, args) -> Path:
    run = out / f"{spec}-s{seed}"
    if not (run / "metrics.json").is_file():
        budget = ["--epochs", str(args.epochs)] if args.epochs else ["--recipe", "auto", "--budget", args.budget]
        subprocess.run([sys.executable, "-m", "medlens", "train", spec, *budget, "--seed", str(seed), "--out",
                        str(run), "--tracking-uri", "none", "--no-progress", "--no-report"], check=True)
    return run


def _as_model_input(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` with the model's channels (grey <-> RGB by mean / repetition)."""
    if images.shape[1] == channels:
        return images
    if channels == 1:
        return np.round(images.mean(axis=1, keepdims=True)).astype(np.uint8)
    return np.repeat(images, channels, axis=1)


def _ood_rates(run: Path, limit: int) -> dict[str, float]:
    from medlens.data.source import resolve
    from medlens.engine.checkpoint import load_model
    from medlens.engine.config import load_run_config, resolve_data
    from medlens.engine.ood import load_run_detector
    from medlens.inference.model import InferenceModel
    from medlens.inference.ood import split_features

    model, card = load_model(run / "checkpoints" / "best.safetensors")
    detector, reason = load_run_detector(run / "checkpoints" / "best.safetensors")
    if detector is None:
        raise SystemExit(reason)
    inference = InferenceModel.from_card(model, card).eval()
    size, channels = card.input_size, card.in_channels
    rng = np.random.default_rng(0)
    sets = {"own test split": resolve_data(load_run_config(run).data).splits["test"].images}
    for name, spec in OOD_SETS.items():
        source = resolve(spec, size=size)
        images = np.concatenate([np.asarray(s.images) for s in source.splits.values()])
        sets[name] = _as_model_input(images[rng.permutation(len(images))[:limit]], channels)
    sets["uniform noise"] = rng.integers(0, 256, (limit, channels, size, size), dtype=np.uint8)
    return {name: float(detector.flag(detector.score(split_features(inference, images)[1])).mean())
            for name, images in sets.items()}


def main() -> None:
    from medlens.evaluate.robustness import robustness_run

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["breastmnist", "pneumoniamnist"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", default="5m", help="--recipe auto budget per model (default 5m)")
    parser.add_argument("--epochs", type=int, help="train N epochs of the default recipe instead (smoke runs)")
    parser.add_argument("--corruptions", nargs="+", help="default: every corruption")
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--ood-limit", type=int, default=1000, help="images per out-of-distribution set")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-robustness"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "robustness.json")
    args = parser.parse_args()

    records = []
    for spec in args.datasets:
        for seed in range(args.seeds):
            run = _train(spec, seed, args.out, args)
            robust = robustness_run(run, corruptions=args.corruptions, n_bootstrap=args.bootstrap)
            ood = _ood_rates(run, args.ood_limit) if spec == "breastmnist" else {}
            records.append({"dataset": spec, "seed": seed, "run": str(run), "clean": robust["clean"],
                            "summary": robust["summary"],
                            "corruptions": {name: {"mean_auc": r["mean_auc"],
                                                   "s3": r["severities"].get("3")} for name, r in
                                            robust["corruptions"].items()}, "ood_flagged": ood})
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "records": records},
                                       indent=1, default=float) + "\n")
    for spec in args.datasets:
        rows = [r for r in records if r["dataset"] == spec]
        print(f"\n## {spec}: {len(rows)} seed(s); clean ACC {np.mean([r['clean']['acc'] for r in rows]):.3f} "
              f"AUC {np.mean([r['clean']['auc'] for r in rows]):.3f}")
        print("| corruption | mean AUC | sev. 3 balanced acc | sev. 3 AUC drop | collapses at sev. 3 |")
        print("|---|---|---|---|---|")
        for name in rows[0]["corruptions"]:
            pairs = [(r["clean"], r["corruptions"][name]["s3"]) for r in rows if r["corruptions"][name]["s3"]]
            cells = (f"{np.mean([b['balanced_accuracy'] for _, b in pairs]):.3f} | "
                     f"{np.mean([c['auc'] - b['auc'] for c, b in pairs]):.3f} | "
                     f"{sum(b['collapse'] for _, b in pairs)}/{len(pairs)}") if pairs else "- | - | -"
            print(f"| {name} | {np.mean([r['corruptions'][name]['mean_auc'] for r in rows]):.3f} | {cells} |")
        if rows[0]["ood_flagged"]:
            print("\n| images fed to the model | share flagged OOD |\n|---|---|")
            for name in rows[0]["ood_flagged"]:
                print(f"| {name} | {np.mean([r['ood_flagged'][name] for r in rows]):.3f} |")
    print(f"\nwrote {args.results}")


if __name__ == "__main__":
    main()
