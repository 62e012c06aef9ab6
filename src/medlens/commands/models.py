"""``medlens models``: the registered networks."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from medlens._table import format_table
    from medlens.models import get_model_spec, list_models

    rows = []
    for name in list_models(args.pattern):
        spec = get_model_spec(name)
        rows.append([name, "/".join(f"{d}D" for d in spec.spatial_dims), spec.description])
    print(format_table(["model", "dims", "description"], rows))
    return 0




def add_parser(commands) -> None:
    p = commands.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'resnet*'")
    p.set_defaults(func=run)
