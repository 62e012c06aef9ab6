"""The ``medlens`` command: the parser, built from :mod:`medlens.commands`, and ``main``.

Only the standard library is imported at start-up; each command imports what it needs, so
``medlens --help`` and ``medlens datasets`` answer at once. User errors (a bad name, a missing
file, a bad option) print one line ``medlens: error: ...`` and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from medlens import __version__

EXIT_ERROR = 1
# Set to 1 to see the traceback behind a one-line error (an internal bug, not bad input).
DEBUG_ENV = "MEDLENS_DEBUG"


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

    import importlib

    from medlens.commands import COMMANDS

    for name in COMMANDS:
        importlib.import_module(f"medlens.commands.{name}").add_parser(commands)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Library warnings as one plain line (no file name and source line)."""
    return f"medlens: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 user error, 2 usage error, 130 / 143 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:  # user-facing: one line, no traceback
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            import traceback

            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"medlens: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        # A run stopped by SIGINT / SIGTERM has said where it stopped and how to go on
        # (engine.train.TrainingInterrupted); it exits 128 + the signal, 130 or 143.
        if not getattr(exc, "message", None):
            print("medlens: interrupted", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
