"""Turn the inputs a user names (files, folders, glob patterns) into a list of image files.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("b.png", "a.dcm", "notes.txt"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [p.name for p in expand_inputs([str(folder)])]
    ['a.dcm', 'b.png']
"""

from __future__ import annotations

import glob
from pathlib import Path

from medlens.data.readers import SUPPORTED_SUFFIXES, file_suffix

_GLOB_CHARS = set("*?[")
_SUPPORTED = ", ".join(SUPPORTED_SUFFIXES)


def _is_visible(path: Path, top: Path) -> bool:
    """False for hidden files and folders below ``top`` (``.DS_Store``, ``.git/``, ``__MACOSX/``)."""
    parts = path.relative_to(top).parts
    return not any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` at any depth, supported suffixes only, sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and file_suffix(p.name) in SUPPORTED_SUFFIXES and _is_visible(p, folder))


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Expand files, folders and glob patterns into image files, in the order given.

    Args:
        patterns: each one a file (taken as is, whatever its suffix, so an unsupported file is
            reported when read rather than silently dropped), a folder (every file with a
            supported suffix below it, recursively, sorted; hidden files skipped) or a glob
            pattern (``scans/*.dcm``, ``**`` recursive; matching files with a supported suffix,
            sorted, and matching folders expanded).

    Returns:
        The files, each once (first occurrence kept), as paths built from what the user typed.

    Raises:
        FileNotFoundError: a pattern that matches nothing (named in the message), or a folder
            with no supported image files in it.
        ValueError: an empty list of patterns.
    """
    if not patterns:
        raise ValueError("no inputs given; name image files, folders or glob patterns such as 'scans/*.png'")
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = _folder_images(path)
            if not matches:
                raise FileNotFoundError(f"folder {pattern} holds no image files (supported: {_SUPPORTED})")
        elif _GLOB_CHARS & set(pattern):
            matches = []
            for hit in sorted(glob.glob(str(path), recursive=True)):
                hit_path = Path(hit)
                if hit_path.is_dir():
                    matches.extend(_folder_images(hit_path))
                elif file_suffix(hit_path.name) in SUPPORTED_SUFFIXES:
                    matches.append(hit_path)
            if not matches:
                raise FileNotFoundError(f"no image file matches {pattern!r} (supported: {_SUPPORTED})")
        else:
            raise FileNotFoundError(f"{pattern} does not exist")
        found.extend(matches)
    return list(dict.fromkeys(found))
