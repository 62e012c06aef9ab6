"""``medlens bench``: the auto recipe on each dataset, within a budget, beside the published table.

For every (dataset, seed) the whole job is timed from start to end: the throughput probe and
plan, loading, training (``--recipe auto --budget``), and the evaluation of the best checkpoint
on the official test split with 1,000 stratified bootstrap resamples. Each finished pair leaves
``<work>/<dataset>/seed<N>/bench.json`` and is kept, not run again, so the table can be built over
several sittings; an unfinished pair is started again from scratch (a budgeted run cannot be
resumed without spending its budget twice).

The summary goes to ``<results>/bench-<date>.json`` and ``<results>/bench-<date>.md``, and the
table replaces the part of ``--readme`` between ``<!-- bench:start -->`` and ``<!-- bench:end -->``,
so the README's numbers are generated, never typed.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from datetime import date
from pathlib import Path

from medlens._io import atomic_path, write_json

# Targets of the benchmark issue for the seed datasets (one rule set, no per-dataset tuning:
# these are the numbers the run is judged against, not settings).
TARGETS = {
    "breastmnist": {"auc": 0.92, "acc": 0.87},
    "pneumoniamnist": {"auc": 0.97, "acc": 0.90},
    "retinamnist": {"auc": 0.75, "acc": 0.53},
    "adrenalmnist3d": {"auc": 0.84, "acc": 0.80},
    "medical-mnist": {"acc": 0.999},
    "covid19": {"acc": 0.92, "macro_f1": 0.92},
}
DEFAULT_DATASETS = tuple(TARGETS)
FOLDER_DATASETS = {"medical-mnist": "medical_mnist/medical_mnist.zip", "covid19": "covid19"}
BUDGET_SLACK = 1.20  # a run may overshoot its budget by 20% before it counts as a miss
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"


def default_folder_root() -> str | None:
    """Where the folder datasets are by default: the folder holding ``$MEDLENS_DATA`` (``../shared/data``
    beside ``medmnist/``), or None when ``$MEDLENS_DATA`` is unset."""
    import os

    data = os.environ.get("MEDLENS_DATA")
    return str(Path(data).resolve().parent) if data else None


def dataset_spec(name: str, folder_root: str | Path | None) -> str:
    """The data spec of a bench dataset name: MedMNIST names as they are, folder datasets under ``folder_root``."""
    if name in FOLDER_DATASETS:
        if folder_root is None:
            raise ValueError(f"bench dataset {name!r} is a folder dataset: give --folder-root (the folder holding "
                             f"{FOLDER_DATASETS[name]})")
        return f"folder:{Path(folder_root) / FOLDER_DATASETS[name]}"
    return name


def run_one(name: str, spec: str, seed: int, budget_s: float, work: Path, *, say=print) -> dict:
    """Train with the auto recipe and evaluate one (dataset, seed); returns and writes ``bench.json``."""
    from medlens.engine.auto import build_train_config
    from medlens.engine.run_folder import RunFolder
    from medlens.evaluate.evaluation import evaluate_run
    from medlens.workflows.training import train

    run_dir = work / name / f"seed{seed}"
    done = RunFolder(run_dir).bench_record
    if done.is_file():
        say(f"bench {name} seed {seed}: finished earlier, kept")
        return json.loads(done.read_text())
    if run_dir.exists():  # an interrupted pair: its budget is spent, start it again
        shutil.rmtree(run_dir)
    say(f"bench {name} seed {seed}: budget {budget_s:.0f} s")
    start = time.perf_counter()
    data = {"spec": spec, "split_seed": 0}
    # The same composition as `medlens train --recipe auto`: one function builds both.
    config, plan = build_train_config({"data": data, "train": {"seed": seed, "tracking_uri": "none",
                                                               "progress": False}},
                                      recipe="auto", budget=budget_s, say=say)
    result = train(config, run_dir, plan=plan)
    evaluation = evaluate_run(run_dir, split="test", n_bootstrap=1000, seed=seed)
    wall = time.perf_counter() - start
    metrics = evaluation.metrics
    record = {
        "dataset": name, "spec": spec, "seed": seed, "budget_s": budget_s, "wall_s": round(wall, 1),
        "within_budget": wall <= budget_s * BUDGET_SLACK, "n_test": metrics["n"],
        "acc": metrics["acc"], "auc": metrics["auc"], "macro_f1": metrics["per_class"]["macro"]["f1"],
        "ci": {k: {"lower": v["lower"], "upper": v["upper"]} for k, v in metrics["ci"].items()},
        "model": config.model.name, "model_kwargs": dict(config.model.kwargs), "members": config.train.members,
        "epochs_planned": config.train.epochs,
        "epochs_run": result.metrics["epochs_run"], "best_epoch": result.metrics["best_epoch"],
        "plan": plan.reasons, "date": date.today().isoformat(), "code": _code_version(),
    }
    write_json(done, record)
    say(f"bench {name} seed {seed}: test ACC {record['acc']:.4f} AUC {record['auc']:.4f} in {wall:.0f} s")
    return record


def _code_version() -> dict:
    """medlens's version, and the git commit when it runs from a checkout (with a flag for local edits)."""
    import subprocess

    from medlens import __version__

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here.parents[1],
                                    capture_output=True, text=True, check=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"medlens": __version__}
    return {"medlens": __version__, "commit": commit, "src_modified": dirty}


def summarise(records: list[dict]) -> list[dict]:
    """One row per dataset: mean, std and mean CI bounds over seeds, median wall time, targets met."""
    from medlens.evaluate.published import published_rows

    rows = []
    for name in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == name]
        row = {"dataset": name, "seeds": [r["seed"] for r in mine], "budget_s": mine[0]["budget_s"],
               "wall_s_median": statistics.median(r["wall_s"] for r in mine),
               "all_within_budget": all(r["within_budget"] for r in mine),
               "models": list(dict.fromkeys(_model_label(r) for r in mine))}
        for key in ("acc", "auc", "macro_f1"):
            values = [r[key] for r in mine if r[key] is not None and math.isfinite(r[key])]
            row[key] = {"mean": statistics.fmean(values) if values else float("nan"),
                        "std": statistics.stdev(values) if len(values) > 1 else float("nan"),
                        "ci_lower": statistics.fmean(r["ci"][key]["lower"] for r in mine),
                        "ci_upper": statistics.fmean(r["ci"][key]["upper"] for r in mine)}
        targets = TARGETS.get(name, {})
        row["targets"] = {k: {"target": v, "met": row[k]["mean"] >= v} for k, v in targets.items()}
        published = published_rows(name)
        if published:
            best_auc = max(published, key=lambda p: p[1])
            row["published"] = {"best_auc": {"method": best_auc[0], "auc": best_auc[1], "acc": best_auc[2]},
                                "resnet18_28": next(({"auc": p[1], "acc": p[2]} for p in published
                                                     if p[0].startswith("ResNet-18 (28)") or p[0] == "ResNet-18 + 3D"),
                                                    None)}
        rows.append(row)
    return rows


def _model_label(record: dict) -> str:
    """``resnet_compact(width=24) x3``: the model a record's plan chose, and its ensemble members."""
    from medlens.engine.auto import candidate_label

    members = record.get("members", 1)
    return candidate_label(record["model"], record.get("model_kwargs", {})) + (f" x{members}" if members > 1 else "")


def _cell(stats: dict) -> str:
    if not math.isfinite(stats["mean"]):
        return "–"
    # Four decimals: targets such as ACC >= 0.999 must not be hidden by rounding.
    spread = f" ± {stats['std']:.4f}" if math.isfinite(stats["std"]) else ""
    return f"{stats['mean']:.4f}{spread} [{stats['ci_lower']:.3f}, {stats['ci_upper']:.3f}]"


def format_markdown(rows: list[dict], *, when: str) -> str:
    """The bench table in markdown (mean ± std over seeds, [mean 95% bootstrap CI bounds])."""
    lines = [f"Generated by `medlens bench` on {when}. ACC / AUC / macro F1: mean ± std over the seeds, "
             "[mean of the seeds' 95% stratified-bootstrap CI bounds]; wall: median seconds of the whole job "
             "(probe, training, evaluation) against the budget.", "",
             "| dataset | seeds | model (xK: ensemble of K) | test ACC | test AUC | macro F1 | wall / budget | "
             "target | met | published best (AUC / ACC) | ResNet-18 (AUC / ACC) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        targets = row["targets"]
        target = ", ".join(f"{k.upper() if k != 'macro_f1' else 'macro F1'} ≥ {t['target']}"
                           for k, t in targets.items())
        met = ("yes" if all(t["met"] for t in targets.values()) else
               "**no**: " + ", ".join(k for k, t in targets.items() if not t["met"])) if targets else "–"
        if not row["all_within_budget"]:
            met += " (over budget)"
        pub = row.get("published") or {}
        best = pub.get("best_auc")
        resnet = pub.get("resnet18_28")
        lines.append(
            f"| {row['dataset']} | {len(row['seeds'])} | {'; '.join(row.get('models', []))} | {_cell(row['acc'])} | "
            f"{_cell(row['auc'])} | "
            f"{_cell(row['macro_f1'])} | {row['wall_s_median']:.0f} / {row['budget_s']:.0f} s | "
            f"{target or '–'} | {met} | "
            + (f"{best['auc']:.3f} / {best['acc']:.3f} ({best['method']})" if best else "–") + " | "
            + (f"{resnet['auc']:.3f} / {resnet['acc']:.3f}" if resnet else "–") + " |")
    return "\n".join(lines) + "\n"


PROJECT_README = Path("benchmarks") / "README.md"


def project_readme(start: str | Path | None = None) -> Path | None:
    """``benchmarks/README.md`` of the medlens project that ``start`` (default: the working folder)
    is in, or None when it is in no medlens project.

    ``bench`` rewrites a section of that file: a default relative to the working folder would
    rewrite the README of whatever repository the user happens to be in. The project is the
    nearest folder above ``start`` with a ``pyproject.toml`` whose ``[project] name`` is medlens.
    """
    import tomllib

    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if not pyproject.is_file():
            continue
        try:
            name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
            return None
        return folder / PROJECT_README if name == "medlens" else None
    return None


def write_readme_table(readme: Path, table: str) -> None:
    """Replace the text between the bench markers of ``readme`` (appending a section if absent)."""
    text = readme.read_text() if readme.is_file() else ""
    block = f"{MARK_START}\n{table}{MARK_END}"
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        text = head + block + rest.split(MARK_END, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + "## `medlens bench`: auto recipe within a budget\n\n" \
            + block + "\n"
    with atomic_path(readme) as tmp:
        tmp.write_text(text)


def bench(datasets: list[str], *, budget_s: float, budget_3d_s: float, seeds: int, work: Path, results: Path,
          readme: Path | None, folder_root: str | Path | None, say=print) -> dict:
    """Run (or continue) the benchmark and write its JSON, markdown and README table.

    Returns:
        ``{"date", "records": [...], "rows": [...]}`` as written to ``bench-<date>.json``.
    """
    from medlens.data.spec import parse_spec

    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1; got {seeds}")
    records = []
    for name in datasets:
        spec = dataset_spec(name, folder_root)
        info = parse_spec(spec).known_info()  # None for data whose facts only loading tells (folders)
        is_3d = info is not None and info.spatial_dims == 3
        for seed in range(seeds):
            records.append(run_one(name, spec, seed, budget_3d_s if is_3d else budget_s, Path(work), say=say))
    rows = summarise(records)
    today = date.today().isoformat()
    summary = {"date": today, "records": records, "rows": rows}
    results = Path(results)
    write_json(results / f"bench-{today}.json", summary)
    table = format_markdown(rows, when=today)
    with atomic_path(results / f"bench-{today}.md") as tmp:
        tmp.write_text(table)
    if readme is not None:
        write_readme_table(Path(readme), table)
    return summary
