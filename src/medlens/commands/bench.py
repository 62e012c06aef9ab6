"""``medlens bench``: the auto recipe on each benchmark dataset within a budget (resumable)."""

from __future__ import annotations

import argparse
import sys


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medlens.engine.auto import parse_budget
    from medlens.workflows.bench import bench, default_folder_root

    from medlens.workflows.bench import project_readme

    readme = project_readme() if args.readme is None else (Path(args.readme) if args.readme else None)
    if args.readme is None and readme is None:
        _say("bench: not inside the medlens project, so no README is rewritten (--readme FILE names one)")
    folder_root = args.folder_root if args.folder_root is not None else default_folder_root()
    summary = bench(args.datasets, budget_s=parse_budget(args.budget), budget_3d_s=parse_budget(args.budget_3d),
                    seeds=args.seeds, work=Path(args.work), results=Path(args.results),
                    readme=readme, folder_root=folder_root, say=_say)
    from medlens.workflows.bench import format_markdown

    print(format_markdown(summary["rows"], when=summary["date"]))
    return 0


def add_parser(commands) -> None:
    from medlens.commands._options import positive_int
    from medlens.workflows.bench import DEFAULT_DATASETS

    p = commands.add_parser("bench", help="the auto recipe on each dataset within a budget, beside the published "
                                          "MedMNIST v2 table (resumable)")
    p.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                   help="MedMNIST names, medical-mnist, covid19 or folder:PATH specs "
                        f"(default: {' '.join(DEFAULT_DATASETS)})")
    p.add_argument("--budget", default="5m", help="budget of each 2D run, e.g. 5m (default 5m)")
    p.add_argument("--budget-3d", default="10m", help="budget of each 3D run (default 10m)")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per dataset (default 3)")
    p.add_argument("--work", default="runs/bench", help="run folders, one per dataset and seed (default runs/bench)")
    p.add_argument("--results", default="benchmarks/results", help="where bench-<date>.json/.md go")
    p.add_argument("--readme",
                   help="markdown file whose bench section is regenerated (default: the medlens project's "
                        "benchmarks/README.md when run inside the project, else none; '' for none)")
    p.add_argument("--folder-root", help="folder holding medical_mnist/ and covid19/ (default: beside $MEDLENS_DATA)")
    p.set_defaults(func=run)
