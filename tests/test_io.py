"""Atomic writes leave nothing behind, even after a writer was killed (issue 20: a killed report left *.png.tmpNNN)."""

from __future__ import annotations

import os
import subprocess
import sys

from medlens._io import atomic_path


def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".roc.png.tmp{dead.pid}"  # what a report killed mid-write leaves
    stale.write_bytes(b"half a png")
    stale_dir = tmp_path / f".roc.png.tmp{dead.pid}0"
    stale_dir.mkdir()
    alive = tmp_path / f".roc.png.tmp{os.getppid()}"  # a live process's write in progress: not touched
    alive.write_bytes(b"being written")
    other = tmp_path / f".other.png.tmp{dead.pid}"  # another file's: left to its own next write
    other.write_bytes(b"x")
    with atomic_path(tmp_path / "roc.png") as tmp:
        tmp.write_bytes(b"png")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "roc.png"])


def test_a_failed_write_removes_its_temporary_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    try:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(28, "No space left on device")
    except OSError:
        pass
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
