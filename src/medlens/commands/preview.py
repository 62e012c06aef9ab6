"""``medlens preview``: a PNG montage per class, and the counts per split."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from medlens.data.preview import count_table, imbalance_warning, metadata_summary, save_montage

    from medlens.commands._options import resolve_data_args

    source = resolve_data_args(args)
    out = Path(args.out) if args.out else Path(f"preview_{source.info.name}.png")
    save_montage(source, out, per_class=args.per_class, split=args.split, view=args.view, seed=args.seed)
    info = source.info
    print(f"{source.spec}: {info.task.value}, {info.n_classes} classes, {info.n_channels} channel(s), "
          f"{info.spatial_dims}D {'x'.join([str(source.size)] * info.spatial_dims)}, split: {source.split_method}")
    print(count_table(source))
    for line in source.split_summary():
        print(f"  {line}")
    for line in metadata_summary(source):
        print(line)
    warning = imbalance_warning(source, ratio=args.imbalance_ratio)
    for line in ([warning] if warning else []) + source.warnings:
        print(f"warning: {line}")
    if source.bad_files:
        print(f"warning: skipped {len(source.bad_files)} unreadable file(s): "
              + "; ".join(f"{name} ({reason})" for name, reason in source.bad_files))
    print(f"montage written to {out}")
    return 0




def add_parser(commands) -> None:
    from medlens.commands._options import add_data_options, add_source_options, positive_int

    p = commands.add_parser("preview", help="write a PNG montage per class and print counts per split")
    p.add_argument("data", metavar="DATA", help="dataset spec")
    p.add_argument("--out", help="PNG to write (default: preview_<name>.png)")
    p.add_argument("--per-class", type=positive_int, default=8, help="samples per class row (default 8)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="split to sample (default train)")
    p.add_argument("--view", default="mid", choices=("mid", "mip"), help="3D: middle slice or max-intensity projection")
    p.add_argument("--imbalance-ratio", type=float, default=2.0,
                   help="warn when largest/smallest training class count exceeds this ratio (default 2)")
    add_data_options(p)
    add_source_options(p)
    p.set_defaults(func=run)
