"""Tests of the ``medlens`` command (``medlens.cli.main``), in-process and as a subprocess.

Every test runs with the working directory in ``tmp_path`` and an empty ``$MEDLENS_DATA``, so a
default output file or a download could only land in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import medlens
from medlens.cli import main
from medlens.data import registry as registry_mod
from medlens.data.registry import RemoteFile, get_dataset_info, list_datasets

REPO = Path(__file__).resolve().parents[1]
BREAST_MD5 = "750601b1f35ba3300ea97c75c52ff8f6"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDLENS_DATA", str(tmp_path / "empty-data-root"))
    before = sorted(REPO.glob("*.png"))
    yield
    assert sorted(REPO.glob("*.png")) == before, "a test left an image in the repository"


@pytest.fixture(scope="module")
def shared_snapshot(medmnist_root):
    """The data root must be read only by the CLI: its listing before any test of this module."""
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in medmnist_root.iterdir())


@pytest.fixture
def real_root(medmnist_root, shared_snapshot):
    yield medmnist_root
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in medmnist_root.iterdir()) == shared_snapshot


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *, allow_info: bool = False) -> str:
    """Exit 1 and exactly one ``medlens: error:`` line (the last), no traceback; returns it."""
    assert code == 1
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines and lines[-1].startswith("medlens: error: ")
    assert sum(line.startswith("medlens: error:") for line in lines) == 1
    if not allow_info:
        assert len(lines) == 1, err
    return lines[-1]


def table_row(out: str, name: str) -> list[str]:
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == [name]]
    assert len(rows) == 1, out
    return rows[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def check_png(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 0 and height > 0
    assert not list(path.parent.glob(path.name + ".tmp*"))
    return width, height


# --------------------------------------------------------------------------------------------
# top level
# --------------------------------------------------------------------------------------------


def test_no_command_prints_help(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 0
    assert "datasets" in out and "fetch" in out and "preview" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"medlens {medlens.__version__}"


def _choices(command: str, flag: str) -> list[str]:
    """The ``choices`` of ``medlens COMMAND FLAG`` in a freshly built parser."""
    import argparse

    from medlens.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(next(a for a in commands.choices[command]._actions if flag in a.option_strings).choices)


@pytest.mark.parametrize("command", ["train", "cv"])
def test_optimizer_schedule_and_loss_choices_are_the_registries(command):
    from medlens.engine.loss_names import LOSS_NAMES
    from medlens.engine.optim import list_optimizers, list_schedules, register_optimizer, unregister_optimizer

    assert _choices(command, "--optimizer") == list_optimizers() == ["adam", "adamw", "sgd", "pesg"]
    assert _choices(command, "--schedule") == list_schedules() == ["none", "multistep", "cosine", "plateau"]
    assert _choices(command, "--loss") == ["auto", *LOSS_NAMES]
    register_optimizer("lion", description="a third-party optimizer (test)")(lambda model, loss, optim: None)
    try:
        assert _choices(command, "--optimizer")[-1] == "lion"
    finally:
        unregister_optimizer("lion")


@pytest.mark.parametrize("argv", [["preview"], ["preview", "breastmnist", "--view", "side"],
                                  ["fetch", "breastmnist", "--size", "0"], ["nonsense"]])
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


def test_datasets_lists_all_18(capsys, tmp_path):
    code, out, err = run_cli(capsys, "datasets")
    assert code == 0 and err == ""
    for name in list_datasets():
        row = table_row(out, name)
        info = get_dataset_info(name)
        assert row[1] == f"{info.spatial_dims}D"
        assert row[2] == info.task.value
        assert row[3] == str(info.n_classes) and row[4] == str(info.n_channels)
        assert row[5] == ",".join(map(str, info.sizes))
        assert row[6] == "-"  # nothing in the empty $MEDLENS_DATA
    assert len(list_datasets()) == 18
    assert str(tmp_path / "empty-data-root") in out
    assert not (tmp_path / "empty-data-root").exists()  # listing creates nothing


@pytest.mark.integration
def test_datasets_marks_local_files(capsys, real_root):
    code, out, _ = run_cli(capsys, "datasets", "--root", real_root)
    assert code == 0
    assert table_row(out, "breastmnist")[6] == "28"
    assert table_row(out, "pneumoniamnist")[6] == "28"
    assert table_row(out, "retinamnist")[6] == "28"
    assert table_row(out, "adrenalmnist3d")[6] == "28,64"
    assert table_row(out, "pathmnist")[6] == "-"
    assert table_row(out, "breastmnist")[7] == "546/78/156"


def test_datasets_root_from_environment(capsys, tmp_path, monkeypatch):
    root = tmp_path / "envroot"
    root.mkdir()
    (root / "bloodmnist_64.npz").write_bytes(b"x")
    monkeypatch.setenv("MEDLENS_DATA", str(root))
    code, out, _ = run_cli(capsys, "datasets", "blood*")
    assert code == 0
    assert table_row(out, "bloodmnist")[6] == "64"


def test_datasets_pattern(capsys):
    code, out, _ = run_cli(capsys, "datasets", "*3d")
    assert code == 0
    listed = [line.split()[0] for line in out.splitlines()
              if line.split() and line.split()[0] in list_datasets()]
    assert listed == list_datasets("*3d")
    assert len(listed) == 6
    assert "breastmnist" not in out


def test_datasets_pattern_matching_nothing(capsys):
    code, _, err = run_cli(capsys, "datasets", "zzz*")
    line = assert_one_error_line(code, err)
    assert "zzz*" in line and "breastmnist" in line


# --------------------------------------------------------------------------------------------
# preview
# --------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_preview_breastmnist(capsys, real_root, tmp_path):
    out_png = tmp_path / "sub" / "x.png"
    code, out, err = run_cli(capsys, "preview", "breastmnist", "--root", real_root, "--out", out_png)
    assert code == 0, err
    width, height = check_png(out_png)
    assert height > 2 * 96  # one row per class
    assert "breastmnist@28" in out and "split: official" in out
    assert "2 classes" in out and "binary" in out
    lines = out.splitlines()
    assert [line.split()[-4:] for line in lines if line.startswith("0: malignant")] == [["147", "21", "42", "210"]]
    counts = [line.split()[-4:] for line in lines if line.startswith("1: normal, benign")]
    assert counts == [["399", "57", "114", "570"]]
    assert [line.split()[-4:] for line in lines if line.startswith("total")] == [["546", "78", "156", "780"]]
    assert f"montage written to {out_png}" in out


@pytest.mark.integration
def test_preview_default_output_goes_to_working_directory(capsys, real_root, tmp_path):
    code, out, _ = run_cli(capsys, "preview", "breastmnist", "--root", real_root, "--per-class", "2")
    assert code == 0
    check_png(tmp_path / "preview_breastmnist.png")


@pytest.mark.integration
def test_preview_3d_mid_and_mip(capsys, real_root, tmp_path):
    from PIL import Image

    pictures = {}
    for view in ("mid", "mip"):
        out_png = tmp_path / f"adrenal_{view}.png"
        code, out, err = run_cli(capsys, "preview", "adrenalmnist3d", "--root", real_root, "--view", view,
                                 "--out", out_png, "--per-class", "4")
        assert code == 0, err
        check_png(out_png)
        assert "3D 28x28x28" in out and "929" in out and "259" in out
        with Image.open(out_png) as image:
            pictures[view] = np.asarray(image.convert("RGB"))
    assert pictures["mid"].shape == pictures["mip"].shape
    assert not np.array_equal(pictures["mid"], pictures["mip"])  # a projection is not the middle slice


@pytest.mark.integration
def test_preview_3d_at_64(capsys, real_root, tmp_path):
    code, out, err = run_cli(capsys, "preview", "adrenalmnist3d@64", "--root", real_root,
                             "--out", tmp_path / "a64.png", "--per-class", "2")
    assert code == 0, err
    assert "3D 64x64x64" in out


@pytest.mark.integration
def test_preview_retinamnist_warns_about_imbalance(capsys, real_root, tmp_path):
    code, out, _ = run_cli(capsys, "preview", "retinamnist", "--root", real_root, "--out", tmp_path / "r.png")
    assert code == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "imbalanced" in warnings[0] and "486" in warnings[0] and "66" in warnings[0]
    assert "3 channel(s)" in out and "ordinal" in out
    # above the ratio threshold: no warning
    code, out, _ = run_cli(capsys, "preview", "retinamnist", "--root", real_root, "--out", tmp_path / "r.png",
                           "--imbalance-ratio", "10")
    assert code == 0
    assert "warning:" not in out


def test_preview_folder(capsys, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "pets"
    for name in ("cats", "dogs"):
        for i in range(10):
            write_png(folder / name / f"{i:02d}.png", rng.integers(0, 256, size=(20, 24), dtype=np.uint8))
    out_png = tmp_path / "pets.png"
    code, out, err = run_cli(capsys, "preview", f"folder:{folder}", "--size", "16", "--out", out_png)
    assert code == 0, err
    check_png(out_png)
    assert "split: stratified" in out
    assert "0: cats" in out and "1: dogs" in out
    total = [line.split() for line in out.splitlines() if line.startswith("total")]
    assert total and total[0][-1] == "20"
    assert "2D 16x16" in out


@pytest.mark.integration
def test_preview_no_download_flag_with_present_file(capsys, real_root, tmp_path):
    code, _, err = run_cli(capsys, "preview", "breastmnist", "--root", real_root, "--no-download",
                           "--out", tmp_path / "b.png", "--per-class", "1")
    assert code == 0, err


# --------------------------------------------------------------------------------------------
# user errors: exit 1, one line on stderr
# --------------------------------------------------------------------------------------------


def test_error_unknown_dataset(capsys, tmp_path):
    code, out, err = run_cli(capsys, "preview", "breastmnsit", "--out", tmp_path / "x.png")
    line = assert_one_error_line(code, err)
    assert "breastmnsit" in line and "breastmnist" in line and "pathmnist" in line
    assert not (tmp_path / "x.png").exists()


def test_error_missing_folder(capsys, tmp_path):
    missing = tmp_path / "no-such-folder"
    code, _, err = run_cli(capsys, "preview", f"folder:{missing}", "--out", tmp_path / "x.png")
    line = assert_one_error_line(code, err)
    assert str(missing) in line and "does not exist" in line


def test_error_wrong_size(capsys, tmp_path):
    code, _, err = run_cli(capsys, "preview", "breastmnist@100", "--out", tmp_path / "x.png")
    line = assert_one_error_line(code, err)
    assert "100" in line and "28, 64, 128, 224" in line


def test_error_wrong_3d_size(capsys, tmp_path):
    code, _, err = run_cli(capsys, "preview", "adrenalmnist3d", "--size", "128", "--out", tmp_path / "x.png")
    line = assert_one_error_line(code, err)
    assert "128" in line and "28, 64" in line


def test_error_missing_file_with_no_download(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "preview", "breastmnist", "--root", empty, "--no-download",
                           "--out", tmp_path / "x.png")
    line = assert_one_error_line(code, err)
    assert "`medlens fetch breastmnist" in line
    assert str(empty / "breastmnist.npz") in line
    assert get_dataset_info("breastmnist").file(28).url in line and BREAST_MD5 in line
    assert list(empty.iterdir()) == []


def test_error_bad_md5(capsys, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "breastmnist.npz").write_bytes(b"not the official file")
    code, _, err = run_cli(capsys, "preview", "breastmnist", "--root", root, "--out", tmp_path / "x.png")
    line = assert_one_error_line(code, err)
    assert BREAST_MD5 in line and "--no-verify" in line


def test_error_bad_ratios(capsys, tmp_path):
    code, _, err = run_cli(capsys, "preview", f"folder:{tmp_path}", "--ratios", "0.5/0.5")
    line = assert_one_error_line(code, err)
    assert "0.5/0.5" in line


@pytest.fixture
def unreachable_breastmnist(monkeypatch):
    """breastmnist@28 pointed at a closed 127.0.0.1 port; retries without sleeping."""
    info = get_dataset_info("breastmnist")
    url = f"http://127.0.0.1:{free_port()}/breastmnist.npz"
    remote = RemoteFile(url=url, md5=info.file(28).md5, filename="breastmnist.npz")
    monkeypatch.setitem(registry_mod._REGISTRY, "breastmnist", dataclasses.replace(info, files={28: remote}))
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    return remote


def test_fetch_unreachable(capsys, tmp_path, unreachable_breastmnist):
    root = tmp_path / "dest"
    code, _, err = run_cli(capsys, "fetch", "breastmnist", "--root", root, "--quiet")
    line = assert_one_error_line(code, err, allow_info=True)
    assert unreachable_breastmnist.url in line and BREAST_MD5 in line
    assert str(root / "breastmnist.npz") in line
    assert not (root / "breastmnist.npz").exists()


def test_preview_download_failure_is_one_line(capsys, tmp_path, unreachable_breastmnist):
    code, _, err = run_cli(capsys, "preview", "breastmnist", "--root", tmp_path / "dest", "--out", tmp_path / "x.png")
    line = assert_one_error_line(code, err)
    assert unreachable_breastmnist.url in line and BREAST_MD5 in line


def test_fetch_unknown_and_wrong_size(capsys, tmp_path):
    code, _, err = run_cli(capsys, "fetch", "nosuchmnist", "--root", tmp_path)
    assert "breastmnist" in assert_one_error_line(code, err)
    code, _, err = run_cli(capsys, "fetch", "breastmnist", "--size", "100", "--root", tmp_path)
    assert "28, 64, 128, 224" in assert_one_error_line(code, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_fetch_present_file_is_verified(capsys, real_root):
    code, out, err = run_cli(capsys, "fetch", "breastmnist", "--root", real_root)
    assert code == 0, err
    assert "verified" in out and "present" in out and BREAST_MD5 in out
    assert str(real_root / "breastmnist.npz") in out


def test_fetch_present_but_damaged_file(capsys, tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes(b"damaged")
    code, out, err = run_cli(capsys, "fetch", "breastmnist", "--root", tmp_path)
    line = assert_one_error_line(code, err)
    assert BREAST_MD5 in line
    assert "verified" not in out


# --------------------------------------------------------------------------------------------
# subprocesses: no heavy imports, console script
# --------------------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MEDLENS_CACHE"] = str(tmp_path / "cache")
    env["MEDLENS_DATA"] = str(tmp_path / "empty-data-root")
    return env


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_cli_imports_no_heavy_frameworks(tmp_path, real_root):
    script = f"""
import json, sys
from medlens.cli import main
codes = []
try:
    main(['--help'])
except SystemExit as exc:
    codes.append(exc.code)
codes.append(main(['datasets']))
codes.append(main(['preview', 'breastmnist', '--root', {str(real_root)!r}, '--out', 'p.png', '--per-class', '2']))
heavy = sorted(m for m in ('torch', 'monai', 'lightning', 'pytorch_lightning') if m in sys.modules)
print('RESULT ' + json.dumps({{'codes': codes, 'heavy': heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.rsplit("RESULT ", 1)[1])
    assert result["codes"] == [0, 0, 0]
    assert result["heavy"] == []
    check_png(tmp_path / "p.png")


def test_cli_help_and_datasets_import_nothing_heavy_without_data(tmp_path):
    """The same check without the real data (so it also runs where ../shared is missing)."""
    script = """
import sys
from medlens.cli import main
try:
    main(['--help'])
except SystemExit:
    pass
assert main(['datasets', '*3d']) == 0
print('HEAVY', sorted(m for m in ('torch', 'monai', 'lightning', 'numpy') if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout  # listing the registry needs no numpy either


def test_console_script_version(tmp_path):
    script = Path(sys.executable).parent / ("medlens.exe" if os.name == "nt" else "medlens")
    if not script.is_file():
        pytest.skip(f"console script {script} not installed")
    proc = subprocess.run([str(script), "--version"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"medlens {medlens.__version__}"
    # exit codes pass through the console script
    proc = subprocess.run([str(script), "datasets", "zzz*"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("medlens: error:")


def test_python_dash_m(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medlens", "--version"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"medlens {medlens.__version__}"


def test_error_damaged_npz_is_one_line(capsys, tmp_path):
    import zipfile

    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8) for s in ("train", "val", "test")}
    arrays.update({f"{s}_labels": (np.arange(50) % 2).astype(np.uint8)[:, None] for s in ("train", "val", "test")})
    path = tmp_path / "damaged.npz"
    np.savez_compressed(path, **arrays)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.infolist()[0]
    middle = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    for k in range(200):
        data[middle + k] ^= 0x5A
    path.write_bytes(bytes(data))
    code, _, err = run_cli(capsys, "preview", f"npz:{path}", "--out", tmp_path / "x.png")
    assert str(path) in assert_one_error_line(code, err)


def test_medlens_debug_shows_the_traceback_behind_the_one_line_error(capsys, monkeypatch):
    """A user error is one line; with MEDLENS_DEBUG=1 the traceback comes first (an internal bug shows itself)."""
    assert main(["datasets", "zzz*"]) == 1
    plain = capsys.readouterr().err
    assert plain.startswith("medlens: error: no dataset matches") and "Traceback" not in plain
    monkeypatch.setenv("MEDLENS_DEBUG", "1")
    assert main(["datasets", "zzz*"]) == 1
    debug = capsys.readouterr().err
    assert "Traceback (most recent call last)" in debug and "commands/datasets.py" in debug
    assert debug.rstrip().splitlines()[-1].startswith("medlens: error: no dataset matches")
