"""The ``medlens`` command: thin argument parsing over the library.

Only the standard library is imported at start-up; each command imports what it needs, so
``medlens --help`` and ``medlens datasets`` answer at once. User errors (a bad name, a missing
file, a bad option) print one line ``medlens: error: ...`` and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from medlens import __version__

EXIT_ERROR = 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that resolves a dataset spec."""
    group = parser.add_argument_group("data")
    group.add_argument("--root", help="folder of MedMNIST .npz files (default: $MEDLENS_DATA, else ~/.medlens/data)")
    group.add_argument("--size", type=_positive_int, help="image edge in pixels (MedMNIST: 28/64/128/224, 3D 28/64; folders: default 64)")
    group.add_argument("--seed", type=int, default=0, help="seed of any split medlens makes (default 0)")
    group.add_argument("--ratios", default="0.8/0.1/0.1", help="train/val/test ratios for unsplit folders (default 0.8/0.1/0.1)")
    group.add_argument("--channels", type=int, choices=(1, 3), help="folders: force 1 or 3 channels (default: decided from the images)")
    group.add_argument("--skip-bad", action="store_true", help="folders: skip unreadable files and list them, instead of failing")
    group.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing MedMNIST file")
    group.add_argument("--no-verify", action="store_true", help="skip the MD5 check of local MedMNIST files")


def _resolve(args: argparse.Namespace):
    from medlens.data.source import resolve

    return resolve(
        args.data, root=args.root, size=args.size, download_missing=not args.no_download,
        verify=not args.no_verify, seed=args.seed, ratios=args.ratios, channels=args.channels,
        skip_bad=args.skip_bad,
    )


def cmd_datasets(args: argparse.Namespace) -> int:
    from medlens._table import format_table
    from medlens.data.download import data_root
    from medlens.data.registry import get_dataset_info, list_datasets

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
    print("also: folder:PATH (a directory or .zip of class folders) and npz:FILE.npz")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from medlens.data.download import data_root, download, verify_md5
    from medlens.data.registry import get_dataset_info

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
            print(f"downloading {remote.url} -> {path}", file=sys.stderr)
        download(remote, root, progress=not args.quiet)
        print(f"{path}: downloaded, MD5 {remote.md5} verified")
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from medlens.data.preview import count_table, imbalance_warning, save_montage

    source = _resolve(args)
    out = Path(args.out) if args.out else Path(f"preview_{source.info.name}.png")
    save_montage(source, out, per_class=args.per_class, split=args.split, view=args.view, seed=args.seed)
    info = source.info
    print(f"{source.spec}: {info.task.value}, {info.n_classes} classes, {info.n_channels} channel(s), "
          f"{info.spatial_dims}D {'x'.join([str(source.size)] * info.spatial_dims)}, split: {source.split_method}")
    print(count_table(source))
    warning = imbalance_warning(source, ratio=args.imbalance_ratio)
    for line in ([warning] if warning else []) + source.warnings:
        print(f"warning: {line}")
    if source.bad_files:
        print(f"warning: skipped {len(source.bad_files)} unreadable file(s): "
              + "; ".join(f"{name} ({reason})" for name, reason in source.bad_files))
    print(f"montage written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlens",
        description="Train, evaluate, explain and serve medical image classifiers.",
        epilog="DATA is a dataset spec: a MedMNIST name (breastmnist, breastmnist@64), "
               "folder:PATH (directory or .zip of class folders, optionally under train/val/test), "
               "or npz:FILE.npz. Run 'medlens COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"medlens {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("datasets", help="list the dataset registry and which files are present locally")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*3d' (default: all)")
    p.add_argument("--root", help="data folder to check (default: $MEDLENS_DATA, else ~/.medlens/data)")
    p.set_defaults(func=cmd_datasets)

    p = commands.add_parser("fetch", help="download a MedMNIST file (resumable, MD5-verified)")
    p.add_argument("name", help="dataset name, e.g. breastmnist")
    p.add_argument("--size", type=_positive_int, default=28, help="edge in pixels (default 28)")
    p.add_argument("--all-sizes", action="store_true", help="fetch every available size")
    p.add_argument("--root", help="destination folder (default: $MEDLENS_DATA, else ~/.medlens/data)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fetch)

    p = commands.add_parser("preview", help="write a PNG montage per class and print counts per split")
    p.add_argument("data", metavar="DATA", help="dataset spec")
    p.add_argument("--out", help="PNG to write (default: preview_<name>.png)")
    p.add_argument("--per-class", type=_positive_int, default=8, help="samples per class row (default 8)")
    p.add_argument("--split", default="train", choices=("train", "val", "test"), help="split to sample (default train)")
    p.add_argument("--view", default="mid", choices=("mid", "mip"), help="3D: middle slice or max-intensity projection")
    p.add_argument("--imbalance-ratio", type=float, default=2.0, help="warn when largest/smallest training class count exceeds this ratio (default 2)")
    _add_data_options(p)
    p.set_defaults(func=cmd_preview)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Library warnings as one plain line (no file name and source line)."""
    return f"medlens: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 user error, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # user-facing: one line, no traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"medlens: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("medlens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
