"""Post-hoc analysis of finished runs: ACC with the log training-class priors added to the logits.

A model trained with balanced class weights learns, in the limit, the class posterior of a
balanced training set; adding log(training prior) to its logits (post-hoc logit adjustment,
Menon et al., "Long-tail learning via logit adjustment", ICLR 2021) turns that back into the
posterior of the data's own class frequencies, which is what ACC at argmax / threshold 0.5
rewards. This script measures what that would change on runs that used balanced class weights,
on val and test, without retraining. It is an analysis for planning, not a medlens feature.

    .venv/bin/python benchmarks/prior_shift.py runs/bench/adrenalmnist3d/seed0 ... --out results/prior_shift.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def analyse(run: Path) -> dict | None:
    from medlens.data.registry import Task
    from medlens.engine.checkpoint import load_model
    from medlens.engine.config import load_run_config, resolve_data
    from medlens.metrics import accuracy_score, roc_auc_score
    from medlens.inference.predict import predict

    cfg = load_run_config(run)
    if cfg.data.class_weights != "balanced" or cfg.data.correct_priors:
        return None  # unweighted, or already prior-corrected when saved (data.correct_priors)
    model, card = load_model(run)
    task = Task(card.task)
    if task.is_multilabel:
        return None
    source = resolve_data(cfg.data)
    counts = np.bincount(np.asarray(source.splits["train"].labels).ravel(), minlength=len(card.class_names))
    log_prior = np.log(counts / counts.sum())
    out = {"run": str(run), "train_counts": counts.tolist()}
    for split in ("val", "test"):
        p = predict(model, source.splits[split], task=task, mean=card.normalisation["mean"],
                    std=card.normalisation["std"])
        shifted = np.log(np.clip(p.y_score, 1e-12, 1.0)) + log_prior
        shifted = np.exp(shifted - shifted.max(axis=1, keepdims=True))
        shifted /= shifted.sum(axis=1, keepdims=True)
        out[split] = {"acc": accuracy_score(p.y_true, p.y_score, task=task),
                      "auc": roc_auc_score(p.y_true, p.y_score, task=task),
                      "acc_adjusted": accuracy_score(p.y_true, shifted, task=task),
                      "auc_adjusted": roc_auc_score(p.y_true, shifted, task=task)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for run in args.runs:
        result = analyse(run)
        if result is None:
            print(f"{run}: no balanced class weights (or multi-label): skipped")
            continue
        results.append(result)
        val, test = result["val"], result["test"]
        print(f"{run}: val ACC {val['acc']:.4f} -> {val['acc_adjusted']:.4f}; test ACC {test['acc']:.4f} -> "
              f"{test['acc_adjusted']:.4f}, AUC {test['auc']:.4f} -> {test['auc_adjusted']:.4f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
