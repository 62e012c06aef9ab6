"""Ensembles: ``train.members`` K > 1 trains K seeded runs of one recipe and saves their average.

The ensemble's run folder (its members, each a whole run folder, and the ``ensemble`` model of
their best checkpoints) is described in :mod:`medlens.engine.run_folder`. A resumed ensemble
keeps its finished members and resumes the unfinished one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from medlens._io import write_json
from medlens.engine.run_folder import RUN_METRICS_SCHEMA_VERSION, RunFolder


def member_seed(seed: int, index: int) -> int:
    """Seed of ensemble member ``index``: ``seed`` for member 0, else one drawn from ``(seed, index)``.

    Drawn rather than ``seed + index`` so that ensembles of neighbouring seeds (``--seeds 3``)
    share no member.
    """
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] % 2**31)


def train_ensemble(cfg, run_dir: str | Path, *, resume: bool = False):
    """Train (or, with ``resume``, continue) the ensemble ``cfg`` describes into ``run_dir``.

    Args:
        cfg: a :class:`~medlens.engine.config.RunConfig` with ``train.members`` K > 1.
        run_dir: the ensemble's run folder.
        resume: keep finished members and resume an unfinished one.

    Returns:
        :class:`~medlens.engine.train.TrainResult` of the ensemble.
    """
    from medlens.engine.config import resolve_data
    from medlens.engine.train import check_new_run, model_and_loss, run_log, say, start_or_check

    run_dir = Path(run_dir)
    if not resume:
        check_new_run(run_dir)
    folder = RunFolder(run_dir)
    start = time.perf_counter()
    with run_log(run_dir):
        source = resolve_data(cfg.data)  # once, shared by the members
        model_and_loss(cfg, source)  # a bad model, option or loss fails before the run folder exists
        start_or_check(cfg, run_dir, source, resume=resume, write=True)
        say(f"ensemble: {cfg.train.members} members of {cfg.model.name} -> {folder.members_dir}")
        members = _train_members(cfg, run_dir, source, start)
        results = _assemble(cfg, run_dir, source, members)
        metrics = _write_metrics(cfg, run_dir, source, members, results)
        _track(cfg, run_dir, results, metrics)
        singles = ", ".join(f"{m['test']['auc']:.3f}" for _, m in members)
        say(f"ensemble of {len(members)} done in {time.perf_counter() - start:.0f} s: val ACC "
            f"{results['val']['acc']:.3f} AUC {results['val']['auc']:.3f}, test ACC {results['test']['acc']:.3f} "
            f"AUC {results['test']['auc']:.3f} (members' test AUC {singles}) -> {run_dir}")
    from medlens.engine.train import TrainResult

    return TrainResult(run_dir, metrics, folder.best)


def _train_members(cfg, run_dir: Path, source, start: float) -> list[tuple[Path, dict]]:
    """Train the members one after another; ``[(member folder, its metrics.json)]`` of those trained.

    A finished member is kept, a started one resumed. Under ``train.max_seconds`` each new member
    gets an equal share of what is left, and none is started on under half of member 0's time.
    """
    from medlens.engine import train as engine
    from medlens.engine.tracking import default_tracking_uri

    k = cfg.train.members
    uri = cfg.train.tracking_uri or default_tracking_uri(run_dir)
    members: list[tuple[Path, dict]] = []
    spent_before = 0.0  # training seconds of members finished in an earlier sitting (resume)
    for i in range(k):
        member = RunFolder(run_dir).member(i)
        member_dir = member.path
        finished = member.is_finished
        if finished:
            engine.say(f"ensemble: member {i} already finished, kept")
        elif member.is_run:
            engine.say(f"ensemble: resuming member {i}")
            engine.resume(member_dir, source=source)
        else:
            max_seconds = None
            if cfg.train.max_seconds is not None:
                # What is left of the time limit, shared by the members still to train.
                left = cfg.train.max_seconds - spent_before - (time.perf_counter() - start)
                max_seconds = left / (k - i)
                first_s = members[0][1]["seconds"] if members else None
                if first_s is not None and max_seconds < 0.5 * first_s:
                    # A member with under half the training of the first would be a weak vote of equal weight.
                    engine.say(f"ensemble: stopping at {i} members: {max(left, 0):.0f} s left would give the "
                               f"{k - i} still to train {max(max_seconds, 0):.0f} s each, under half of member 0's "
                               f"{first_s:.0f} s")
                    break
                max_seconds = max(1.0, max_seconds)
            member_cfg = replace(cfg, train=replace(cfg.train, members=1, seed=member_seed(cfg.train.seed, i),
                                                    max_seconds=max_seconds, tracking_uri=uri))
            engine.say(f"ensemble: member {i} of {k}, seed {member_cfg.train.seed}"
                       + (f", at most {max_seconds:.0f} s" if max_seconds else ""))
            engine.train(member_cfg, member_dir, source=source)
        members.append((member_dir, member.read_metrics()))
        if finished:
            spent_before += members[-1][1]["seconds"]
    return members


def _assemble(cfg, run_dir: Path, source, members: list[tuple[Path, dict]]) -> dict:
    """One ``ensemble`` model of the members' best checkpoints, saved as ``checkpoints/best``; its val/test scores."""
    from medlens.engine.checkpoint import load_model, save_model
    from medlens.engine.train import score
    from medlens.models import create_model

    loaded = [load_model(RunFolder(d).best) for d, _ in members]
    first = loaded[0][1]
    combine = "sigmoid" if source.info.task.is_multilabel or len(first.class_names) == 1 else "softmax"
    kwargs = {"member": first.architecture, "member_options": dict(first.model_kwargs), "members": len(members),
              "combine": combine}
    ensemble = create_model("ensemble", in_channels=first.in_channels, num_classes=len(first.class_names),
                            spatial_dims=first.spatial_dims, input_size=first.input_size, **kwargs)
    for slot, (model, card) in zip(ensemble.members, loaded, strict=True):
        if card.normalisation != first.normalisation:
            raise ValueError(f"ensemble members of {run_dir} were trained on different data (normalisation differs)")
        slot.load_state_dict(model.state_dict())
    ensemble.eval()
    results = score(ensemble, first, source, source.info.task)
    results.pop("diverged", None)  # the members' own runs say so
    card = replace(first, architecture="ensemble", model_kwargs=kwargs, config=cfg.to_dict(),
                   metrics={"members": [m for _, m in members], "best_epoch": [m["best_epoch"] for _, m in members],
                            **results})
    folder = RunFolder(run_dir)
    folder.checkpoints.mkdir(exist_ok=True)
    save_model(ensemble, card, folder.best)
    return results


def _write_metrics(cfg, run_dir: Path, source, members: list[tuple[Path, dict]], results: dict) -> dict:
    """The ensemble's ``metrics.json``: its val/test scores, with each member's beside them."""
    metrics = {
        "schema_version": RUN_METRICS_SCHEMA_VERSION,
        "dataset": source.spec,
        "model": "ensemble",
        "member": cfg.model.name,
        "members_planned": cfg.train.members,
        "members": [{"run": d.relative_to(run_dir).as_posix(), "seed": member_seed(cfg.train.seed, i),
                     "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "seconds": m["seconds"],
                     "val": m["val"], "test": m["test"]}
                    for i, (d, m) in enumerate(members)],
        "best_epoch": [m["best_epoch"] for _, m in members],
        "monitor": cfg.train.monitor,
        "epochs_run": int(sum(m["epochs_run"] for _, m in members)),
        "seconds": float(sum(m["seconds"] for _, m in members)),
        "train_images_per_second": float(np.median([m["train_images_per_second"] for _, m in members])),
        "val": results["val"],
        "test": results["test"],
    }
    write_json(RunFolder(run_dir).metrics, metrics)  # NaN (an undefined AUC) as null
    return metrics


def _track(cfg, run_dir: Path, results: dict, metrics: dict) -> None:
    from medlens.engine.tracking import Tracker, default_tracking_uri

    tracker = Tracker(cfg.train.tracking_uri or default_tracking_uri(run_dir), run_dir, cfg.to_dict())
    tracker.log_metrics({f"{split}_{key}": v for split in ("val", "test") for key, v in results[split].items()},
                        step=metrics["epochs_run"])
    folder = RunFolder(run_dir)
    tracker.finish([folder.metrics, folder.config, folder.best_card])
