"""README.md's example commands are the CLI's: every one parses, and the cheap ones run.

The README's shell lines (indented or fenced code, starting with ``medlens``) are read from the
file itself, so an example cannot drift from the CLI again: a renamed flag, a removed command or
an option that never existed fails here. The cheap examples (help, datasets, models, preview, a
one-epoch train, evaluate, predict) then run for real in a temporary folder.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from medlens.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


def readme_commands() -> list[str]:
    """Every ``medlens ...`` line of README.md's code (continuation lines joined, comments kept).

    Shell variables the README sets in its code (``OPTS="--label-col dx"``) are expanded in the
    lines after them, unquoted, as the shell word-splits ``$OPTS``.
    """
    lines, in_fence, out, variables = README.read_text().splitlines(), False, [], {}
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            i += 1
            continue
        code = line[4:] if line.startswith("    ") else (line if in_fence else None)
        assignment = ASSIGNMENT.match(code.strip()) if code is not None else None
        if assignment:
            value = shlex.split(assignment.group(2), comments=True)
            variables[assignment.group(1)] = value[0] if value else ""
        elif code is not None and code.lstrip().startswith("medlens "):
            text = code.strip()
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            for name in sorted(variables, key=len, reverse=True):  # $OPTS before a shorter $OPT
                text = text.replace(f"${name}", variables[name])
            out.append(text)
        i += 1
    return out


def argv_of(command: str) -> list[str]:
    """The arguments after ``medlens`` (shell comments dropped)."""
    words = shlex.split(command, comments=True)
    assert words[0] == "medlens"
    return words[1:]


COMMANDS = readme_commands()


def test_the_readme_has_examples_of_every_command():
    from medlens.commands import COMMANDS as NAMES

    used = {argv_of(c)[0] for c in COMMANDS if argv_of(c)}
    assert len(COMMANDS) > 20
    assert used >= set(NAMES) - {"bench"}, sorted(set(NAMES) - used)  # bench runs for hours: see its section


class _ParseError(Exception):
    pass


def _strict_parser() -> argparse.ArgumentParser:
    parser = build_parser()

    def error(message):
        raise _ParseError(message)

    parser.error = error
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.error = error
    return parser


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command):
    try:
        _strict_parser().parse_args(argv_of(command))
    except _ParseError as err:
        pytest.fail(f"README example `{command}` does not parse: {err}")


def _readme(pattern: str) -> list[str]:
    """The README's argv of the one example matching ``pattern`` (a regex on the line)."""
    found = [c for c in COMMANDS if re.search(pattern, c)]
    assert len(found) == 1, (pattern, found)
    return argv_of(found[0])


def _shared(argv: list[str], shared: Path) -> list[str]:
    """``../shared/data/...`` is relative to the repository; the test runs elsewhere."""
    return [a.replace("../shared/data", str(shared)) for a in argv]


@pytest.mark.integration
@pytest.mark.slow
def test_the_cheap_readme_examples_run(medmnist_root, shared_data, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDLENS_DATA", str(medmnist_root))
    with pytest.raises(SystemExit) as help_exit:
        main(["--help"])
    assert help_exit.value.code == 0
    for argv in (_readme(r"^medlens datasets  "), _readme(r"medlens datasets '\*3d'"), _readme(r"^medlens models"),
                 _readme(r"preview breastmnist --out breast.png"), _readme(r"preview adrenalmnist3d@64"),
                 _shared(_readme(r"preview folder:"), shared_data)):
        assert main(argv) == 0, argv
    assert Path("breast.png").is_file()
    capsys.readouterr()
    # The first training example, cut to one epoch without MLflow, then what the README does with it.
    train = _readme(r"train breastmnist --recipe fast --out runs/breast ")
    assert main([*train, "--epochs", "1", "--tracking-uri", "none"]) == 0
    assert Path("runs/breast/report.html").is_file()
    # A new shell without $MEDLENS_DATA (and an empty home): evaluate finds the run's own data root.
    monkeypatch.delenv("MEDLENS_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for argv in (_readme(r"^medlens evaluate runs/breast  "), _readme(r"evaluate runs/breast --split val"),
                 _readme(r"^medlens report runs/breast")):
        assert main(argv) == 0, argv
    assert "test" in capsys.readouterr().out
    # predict: the README's inputs made from BreastMNIST test images (a folder and a DICOM file).
    images = np.load(medmnist_root / "breastmnist.npz")["test_images"][:3]
    Path("scans").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(f"scans/{i}.png")
    _write_dicom(Path("study.dcm"), images[0])
    predict = _readme(r"predict runs/breast scans/")
    assert main(predict) == 0
    assert len(Path("preds.csv").read_text().splitlines()) == 1 + 4  # header + 3 PNGs + the DICOM


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    """A minimal secondary-capture DICOM of 8-bit grey ``pixels``."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "OT", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    assert pydicom.__version__
    ds.save_as(path, enforce_file_format=True)
