"""Distributed training measured: one epoch of a ResNet with DDP (gloo) on N CPU processes vs 1 process.

Both runs are ``medlens train`` subprocesses on the same data, seed and *effective* batch size:
the single process takes batches of ``B x N`` images, each of the N DDP processes batches of
``B`` (Lightning averages the N gradients, so both take the same number of optimizer steps on
the same amount of data per step). Threads are split evenly, ``cores / N`` per DDP process and
all cores for the single one, so the comparison is of one machine's cores used two ways.
The DDP run is ``--devices N --strategy ddp`` on CPU (``CUDA_VISIBLE_DEVICES`` emptied): Lightning
starts the N-1 further processes itself, and they talk over gloo.

Reported per run:

* ``images_per_s_job``: training images of the whole job per second: the size of the training
  split times the epochs, over the summed epoch seconds of ``history.csv`` (rank 0's epoch ends
  when every rank's does, so that is the job's time, not one process's share);
* ``wall_s``: the whole command, start-up and the final evaluation included;
* ``effective_batch``: images per optimizer step over all processes;
* agreement with the single-process run: val and test AUC of each, the share of test images
  given the same class, and the largest difference in a test probability. The runs are not
  expected to match to the bit (each DDP process normalises its BatchNorm over its own half of
  a batch, and the shards see the images in another order); the agreement says how far apart
  they end.

Results: ``benchmarks/results/ddp_scaling-<date>.json`` and a markdown row on stdout.

Usage (time it on a quiet machine; the numbers mean nothing under load):
    .venv/bin/python benchmarks/ddp_scaling.py                                  # pneumoniamnist, resnet18, 1 epoch
    .venv/bin/python benchmarks/ddp_scaling.py --data breastmnist --model resnet_compact \\
        --model-arg width=8 --batch-size 32 --smoke                             # seconds: checks the script only
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


def _train(data: str, out: Path, *, processes: int, batch: int, args: argparse.Namespace) -> dict:
    cores = os.cpu_count() or 1
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(max(1, cores // processes)),
           "MKL_NUM_THREADS": str(max(1, cores // processes))}
    command = [sys.executable, "-m", "medlens", "train", data, "--recipe", "default", "--model", args.model,
               "--epochs", str(args.epochs), "--batch-size", str(batch), "--seed", str(args.seed),
               "--tracking-uri", "none", "--no-progress", "--no-report", "--out", str(out)]
    for pair in args.model_arg or []:
        command += ["--model-arg", pair]
    if args.root:
        command += ["--root", args.root]
    if processes > 1:
        command += ["--devices", str(processes), "--strategy", "ddp"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    from medlens.engine.run_folder import RunFolder
    from medlens.engine.tracking import read_history

    history = read_history(RunFolder(out).history)
    splits = json.loads(RunFolder(out).splits.read_text())
    n_train = len(splits["splits"]["train"])
    seconds = sum(row["seconds"] for row in history)
    metrics = RunFolder(out).read_metrics()
    return {"processes": processes, "batch_per_process": batch, "effective_batch": batch * processes,
            "threads_per_process": max(1, cores // processes), "epochs": len(history), "train_images": n_train,
            "train_seconds": round(seconds, 2), "images_per_s_job": round(n_train * len(history) / seconds, 1),
            "wall_s": round(wall, 1), "val_auc": metrics["val"]["auc"], "test_auc": metrics["test"]["auc"]}


def _agreement(single: Path, ddp: Path, data: str, root: str | None) -> dict:
    """Same class and largest probability difference on the test split, best checkpoints of both runs."""
    import numpy as np

    from medlens.data.registry import Task
    from medlens.data.source import resolve
    from medlens.engine.checkpoint import load_model
    from medlens.engine.run_folder import RunFolder
    from medlens.inference.predict import predict

    scores = []
    for run in (single, ddp):
        model, card = load_model(RunFolder(run).best)
        source = resolve(card.dataset["spec"], root=root)
        predictions = predict(model, source.splits["test"], task=Task(card.task), mean=card.normalisation["mean"],
                              std=card.normalisation["std"], channels_last=True)
        scores.append(np.asarray(predictions.y_score))
    same = float((scores[0].argmax(1) == scores[1].argmax(1)).mean())
    largest = float(np.abs(scores[0] - scores[1]).max())
    return {"test_same_class": round(same, 4), "test_max_prob_diff": round(largest, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="pneumoniamnist", help="dataset spec (default pneumoniamnist: 4,708 train)")
    parser.add_argument("--root", help="MedMNIST folder (default $MEDLENS_DATA)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--model-arg", action="append", metavar="KEY=VALUE")
    parser.add_argument("--processes", type=int, default=2, help="DDP processes (default 2)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch per DDP process (default 64)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--smoke", action="store_true", help="do not write results (a check of the script)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="medlens-ddp-") as work:
        os.environ.setdefault("MEDLENS_CACHE", str(Path(work) / "cache"))
        single = _train(args.data, Path(work) / "single", processes=1, batch=args.batch_size * args.processes,
                        args=args)
        ddp = _train(args.data, Path(work) / "ddp", processes=args.processes, batch=args.batch_size, args=args)
        agreement = _agreement(Path(work) / "single", Path(work) / "ddp", args.data, args.root)
    record = {"date": _dt.date.today().isoformat(), "data": args.data, "model": args.model,
              "model_args": args.model_arg or [], "cores": os.cpu_count(), "single": single, "ddp": ddp,
              "speedup_job": round(ddp["images_per_s_job"] / single["images_per_s_job"], 3),
              "agreement": {**agreement, "val_auc_diff": round(abs(ddp["val_auc"] - single["val_auc"]), 4),
                            "test_auc_diff": round(abs(ddp["test_auc"] - single["test_auc"]), 4)}}
    print("| data | model | processes | effective batch | images/s (whole job) | wall s | val AUC | test AUC | "
          "same test class |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in (single, ddp):
        print(f"| {args.data} | {args.model} | {run['processes']} | {run['effective_batch']} | "
              f"{run['images_per_s_job']:.0f} | {run['wall_s']:.0f} | {run['val_auc']:.3f} | {run['test_auc']:.3f} | "
              f"{'-' if run is single else agreement['test_same_class']} |")
    print(f"\nDDP / single, whole-job images/s: {record['speedup_job']:.2f}x")
    if not args.smoke:
        out = HERE / "results" / f"ddp_scaling-{record['date']}.json"
        out.write_text(json.dumps(record, indent=1))
        print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
