"""Groups of runs: k-fold cross-validation and repeated seeds, with mean +- std summaries.

A group is a parent folder holding ``group.json`` (what the group is: kind, base config, the
member runs) and one normal run folder per member. Running the same group again continues it:
a member with ``metrics.json`` is finished and kept, one with a ``config.yaml`` but no metrics
is resumed from its last checkpoint, the rest are trained. The summary is written last, as
``cv_summary.json`` (cross-validation) or ``seeds_summary.json`` (repeated seeds).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from medlens._io import write_json
from medlens.engine.run_folder import SUMMARY_KINDS, RunFolder

SUMMARY_SCHEMA_VERSION = 1
# What each member's metrics.json contributes to the summary: (section, key).
SUMMARY_METRICS = (("val", "acc"), ("val", "auc"), ("test", "acc"), ("test", "auc"))


def cv_members(config, *, folds: int, repeats: int = 1) -> list[tuple[str, object]]:
    """``(name, RunConfig)`` of every fold of a (repeated) stratified k-fold.

    Repeat ``r`` re-draws the folds with split seed ``config.data.split_seed + r`` and trains with
    seed ``config.train.seed + r``; names are ``fold0`` .. or ``r0-fold0`` .. when repeated.

    Raises:
        ValueError: ``folds`` < 2 or ``repeats`` < 1.
    """
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"--folds must be an integer >= 2; got {folds!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"--repeats must be an integer >= 1; got {repeats!r}")
    members = []
    for r in range(repeats):
        for k in range(folds):
            data = replace(config.data, folds=folds, fold=k, split_seed=config.data.split_seed + r)
            cfg = replace(config, data=data, train=replace(config.train, seed=config.train.seed + r))
            members.append((f"fold{k}" if repeats == 1 else f"r{r}-fold{k}", cfg))
    return members


def seed_members(config, *, seeds: int) -> list[tuple[str, object]]:
    """``(name, RunConfig)`` for ``seeds`` runs with seeds ``config.train.seed + i``, named ``seed<N>``."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be an integer >= 1; got {seeds!r}")
    out = []
    for i in range(seeds):
        seed = config.train.seed + i
        out.append((f"seed{seed}", replace(config, train=replace(config.train, seed=seed))))
    return out


def run_group(parent: str | Path, members: list[tuple[str, object]], *, kind: str, say=print) -> dict:
    """Train (or continue) every member run under ``parent`` and write the group summary.

    Args:
        parent: the group folder (created).
        members: ``(name, RunConfig)`` pairs, from :func:`cv_members` or :func:`seed_members`.
        kind: ``cv`` or ``seeds``: names the summary file.
        say: where progress lines go.

    Returns:
        The summary dict (also written to ``<kind>_summary.json``).

    Raises:
        ValueError: ``parent`` holds a group made with another config or other members.
    """
    from medlens.workflows.training import resume, train

    if kind not in SUMMARY_KINDS:
        raise ValueError(f"group kind must be 'cv' or 'seeds'; got {kind!r}")
    parent = Path(parent)
    folder = RunFolder(parent)
    record = {"kind": kind, "members": {name: cfg.to_dict() for name, cfg in members}}
    manifest = folder.group
    if manifest.is_file():
        if _normalised(json.loads(manifest.read_text())) != json.loads(json.dumps(record)):
            raise ValueError(f"{parent} already holds a {kind} group made with other options; "
                             "choose another --out, or rerun with the same options to continue it")
    elif parent.exists() and any(parent.iterdir()):
        raise ValueError(f"{parent} exists and is not a medlens {kind} group; choose another --out")
    else:
        write_json(manifest, record)
    for number, (name, cfg) in enumerate(members, start=1):
        run_dir = parent / name
        if RunFolder(run_dir).is_finished:
            say(f"{kind} {number}/{len(members)} {name}: finished earlier, kept")
            continue
        if RunFolder(run_dir).is_run:
            say(f"{kind} {number}/{len(members)} {name}: resuming")
            resume(run_dir)
        else:
            say(f"{kind} {number}/{len(members)} {name}: training")
            train(cfg, run_dir)
    summary = summarise(parent, [name for name, _ in members], kind=kind)
    write_json(folder.summary(kind), summary)
    return summary


def summarise(parent: str | Path, names: list[str], *, kind: str) -> dict:
    """Per-member metrics and their mean and sample standard deviation (ddof 1).

    Reads each member's ``metrics.json``. NaN values (an undefined AUC) are left out of the mean.
    """
    parent = Path(parent)
    runs = []
    for name in names:
        metrics = RunFolder(parent / name).read_metrics()
        entry = {"name": name, "best_epoch": metrics.get("best_epoch"), "seconds": metrics.get("seconds")}
        for section, key in SUMMARY_METRICS:
            value = metrics.get(section, {}).get(key)
            entry[f"{section}_{key}"] = float("nan") if value is None else float(value)
        runs.append(entry)
    columns = [f"{s}_{k}" for s, k in SUMMARY_METRICS] + ["seconds"]
    stats = {}
    for column in columns:
        values = np.array([r[column] for r in runs if r[column] is not None], dtype=float)
        values = values[np.isfinite(values)]
        stats[column] = {"mean": float(values.mean()) if len(values) else float("nan"),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                         "n": int(len(values))}
    return {"schema_version": SUMMARY_SCHEMA_VERSION, "kind": kind, "runs": runs, "summary": stats}


def format_summary(summary: dict) -> str:
    """Printed table: one row per member, then mean +- std."""
    from medlens._table import format_table

    columns = [f"{s}_{k}" for s, k in SUMMARY_METRICS]

    def cell(value) -> str:
        return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"

    rows = [[r["name"], *(cell(r[c]) for c in columns), f"{r['seconds']:.0f}" if r["seconds"] else "-"]
            for r in summary["runs"]]
    stats = summary["summary"]
    footer = ["mean ± std", *(f"{cell(stats[c]['mean'])} ± {cell(stats[c]['std'])}" for c in columns),
              f"{stats['seconds']['mean']:.0f}" if math.isfinite(stats["seconds"]["mean"]) else "-"]
    header = ["run", "val ACC", "val AUC", "test ACC", "test AUC", "seconds"]
    return format_table(header, rows, footer=footer)


def _normalised(record: dict) -> dict:
    """A stored group record with each member's config re-read through today's defaults, so a
    group started before a config field was added still matches the same options now."""
    from medlens.engine.config import config_from_dict

    members = record.get("members")
    if not isinstance(members, dict):
        return record
    try:
        members = {name: config_from_dict(raw).to_dict() for name, raw in members.items()}
    except (TypeError, ValueError):
        return record  # not today's config any more: compared as stored, and so refused
    return json.loads(json.dumps({**record, "members": members}))
