"""``medlens datasets``: the dataset registry and which files are present locally."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from medlens._table import format_table
    from medlens.data.download import data_root
    from medlens.data.registry import get_dataset_info, list_datasets
    from medlens.data.spec import list_sources

    root = data_root(args.root)
    names = list_datasets(args.pattern)
    if not names:
        raise ValueError(f"no dataset matches {args.pattern!r}; valid names: {', '.join(list_datasets())}")
    rows = []
    for name in names:
        info = get_dataset_info(name)
        local = [str(s) for s, remote in info.files.items() if (root / remote.filename).is_file()]
        splits = "/".join(f"{info.split_sizes[s]:,}" for s in ("train", "val", "test"))
        rows.append([name, f"{info.spatial_dims}D", info.task.value, str(info.n_classes), str(info.n_channels),
                     ",".join(map(str, info.sizes)), ",".join(local) or "-", splits, info.license])
    header = ["name", "dims", "task", "classes", "ch", "sizes", "local", "train/val/test", "licence"]
    print(format_table(header, rows))
    print(f"\nlocal: sizes present in {root} (set by --root, else $MEDLENS_DATA, else ~/.medlens/data)")
    local = [f"{source.usage} ({source.description})" for source in list_sources() if source.prefix]
    print(f"also: {'; '.join(local)}")
    return 0




def add_parser(commands) -> None:
    p = commands.add_parser("datasets", help="list the dataset registry and which files are present locally")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*3d' (default: all)")
    p.add_argument("--root", help="data folder to check (default: $MEDLENS_DATA, else ~/.medlens/data)")
    p.set_defaults(func=run)
