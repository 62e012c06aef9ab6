"""Compare benchmark result files of two code versions measured in the same sitting.

A refactor must not slow medlens down; absolute speeds on a shared machine drift from day to day,
so the evidence is two versions run alternately (old, new, old, new) on one machine, and the
ratios each run measures within itself. This reads the JSON files that ``train_speed.py`` or
``serve_load.py`` wrote for each version and prints one markdown table.

    python benchmarks/compare_versions.py train_speed --old o1.json o2.json --new n1.json n2.json
    python benchmarks/compare_versions.py serve_load --old o1.json o2.json --new n1.json n2.json

train_speed: per configuration, the median over the files of medlens img/s and of the
medlens/bare ratio (the ratio is taken within each round, so machine drift cancels), and new/old.
serve_load: per client count, the median over the files of p50, p99 and throughput, and new/old.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _load(paths: list[Path]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def _commit(runs: list[dict]) -> str:
    commits = {str(run.get("git", {}).get("commit", "?"))[:7] for run in runs}
    return "/".join(sorted(commits))


def train_speed(old: list[dict], new: list[dict]) -> str:
    def rows(runs: list[dict]) -> dict[tuple, dict[str, list[float]]]:
        out: dict[tuple, dict[str, list[float]]] = {}
        for run in runs:
            for r in run["results"]:
                key = (r["model"], r["spatial_dims"], r["size"], r["batch_size"])
                entry = out.setdefault(key, {"medlens": [], "ratio": [], "bare": []})
                entry["medlens"].append(r["images_per_s"]["medlens"]["median"])
                entry["bare"].append(r["images_per_s"]["bare"]["median"])
                entry["ratio"].append(r["medlens_vs_bare"]["median"])
        return out

    before, after = rows(old), rows(new)
    lines = [f"old {_commit(old)} ({len(old)} runs) vs new {_commit(new)} ({len(new)} runs), medians over the runs",
             "",
             "| model | dims | px | batch | bare img/s old / new | medlens img/s old / new | medlens / bare old / new "
             "| new / old (medlens / bare) |",
             "|---|---|---|---|---|---|---|---|"]
    for key in sorted(before):
        if key not in after:
            continue
        b, a = before[key], after[key]
        ratio_old, ratio_new = statistics.median(b["ratio"]), statistics.median(a["ratio"])
        lines.append(f"| {key[0]} | {key[1]}D | {key[2]} | {key[3]} | {statistics.median(b['bare']):,.1f} / "
                     f"{statistics.median(a['bare']):,.1f} | {statistics.median(b['medlens']):,.1f} / "
                     f"{statistics.median(a['medlens']):,.1f} | {ratio_old:.2f} / {ratio_new:.2f} | "
                     f"{ratio_new / ratio_old:.2f} |")
    return "\n".join(lines)


def serve_load(old: list[dict], new: list[dict]) -> str:
    def levels(runs: list[dict]) -> dict[int, dict[str, list[float]]]:
        out: dict[int, dict[str, list[float]]] = {}
        for run in runs:
            for level in run["table"]:  # one row per concurrency: medians over that run's repeats
                entry = out.setdefault(int(level["concurrency"]), {"p50": [], "p99": [], "rps": []})
                entry["p50"].append(level["p50_ms"])
                entry["p99"].append(level["p99_ms"])
                entry["rps"].append(level["throughput_rps"])
        return out

    before, after = levels(old), levels(new)
    lines = [f"old {_commit(old)} ({len(old)} runs) vs new {_commit(new)} ({len(new)} runs), medians over the runs",
             "",
             "| clients | p50 ms old / new | p99 ms old / new | throughput req/s old / new | new / old (p50) |",
             "|---|---|---|---|---|"]
    for clients in sorted(before):
        if clients not in after:
            continue
        b, a = before[clients], after[clients]
        p50_old, p50_new = statistics.median(b["p50"]), statistics.median(a["p50"])
        lines.append(f"| {clients} | {p50_old:.2f} / {p50_new:.2f} | {statistics.median(b['p99']):.2f} / "
                     f"{statistics.median(a['p99']):.2f} | {statistics.median(b['rps']):,.0f} / "
                     f"{statistics.median(a['rps']):,.0f} | {p50_new / p50_old:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("benchmark", choices=("train_speed", "serve_load"))
    parser.add_argument("--old", nargs="+", type=Path, required=True, help="result files of the old code")
    parser.add_argument("--new", nargs="+", type=Path, required=True, help="result files of the new code")
    args = parser.parse_args(argv)
    report = train_speed if args.benchmark == "train_speed" else serve_load
    print(report(_load(args.old), _load(args.new)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
