"""``medlens fetch``: download a MedMNIST file (resumable, MD5-verified)."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from medlens.data.download import data_root, download, source_url, verify_md5
    from medlens.data.registry import get_dataset_info

    if args.url and args.all_sizes:
        raise ValueError("--url names one file: give it with --size, not --all-sizes (or set $MEDLENS_MIRROR "
                         "to a folder URL holding every file)")
    info = get_dataset_info(args.name)
    sizes = info.sizes if args.all_sizes else (args.size,)
    root = data_root(args.root)
    for size in sizes:
        remote = info.file(size)
        path = root / remote.filename
        if path.is_file():
            verify_md5(path, remote.md5, remote.url)
            print(f"{path}: present, MD5 {remote.md5} verified")
            continue
        if not args.quiet:
            print(f"downloading {source_url(remote, args.url)} -> {path}", file=sys.stderr)
        download(remote, root, url=args.url, progress=not args.quiet)
        print(f"{path}: downloaded, MD5 {remote.md5} verified")
    return 0




def add_parser(commands) -> None:
    from medlens.commands._options import positive_int

    p = commands.add_parser("fetch", help="download a MedMNIST file (resumable, MD5-verified)")
    p.add_argument("name", help="dataset name, e.g. breastmnist")
    p.add_argument("--size", type=positive_int, default=28, help="edge in pixels (default 28)")
    p.add_argument("--all-sizes", action="store_true", help="fetch every available size")
    p.add_argument("--root", help="destination folder (default: $MEDLENS_DATA, else ~/.medlens/data)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--url", help="download from this URL instead of the official one (the official MD5 is still "
                                 "checked); $MEDLENS_MIRROR=URL does so for every file: URL/<file name>")
    p.set_defaults(func=run)
