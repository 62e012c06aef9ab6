"""Downloads from a mirror ($MEDLENS_MIRROR) or one URL (--url), served here on 127.0.0.1."""

from __future__ import annotations

import functools
import http.server
import os
import threading

import pytest

from medlens.cli import main

pytestmark = pytest.mark.integration
BREAST_MD5 = "750601b1f35ba3300ea97c75c52ff8f6"


@pytest.fixture()
def mirror(medmnist_root, tmp_path):
    """An HTTP server on 127.0.0.1 whose folder holds breastmnist.npz (a link to the real file)."""
    served = tmp_path / "served"
    served.mkdir()
    os.symlink(medmnist_root / "breastmnist.npz", served / "breastmnist.npz")
    (served / "breastmnist_64.npz").write_bytes(b"not the official file")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))

    class Quiet(handler.func):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


def test_medlens_mirror_is_used_for_every_download(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDLENS_MIRROR", mirror + "/")
    root = tmp_path / "data"
    assert main(["fetch", "breastmnist", "--root", str(root), "--quiet"]) == 0
    assert (root / "breastmnist.npz").is_file()
    assert f"MD5 {BREAST_MD5} verified" in capsys.readouterr().out
    # The official MD5 is still checked: a different file at the mirror is refused, naming it.
    assert main(["fetch", "breastmnist", "--size", "64", "--root", str(root), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{mirror}/breastmnist_64.npz" in err and "checksum mismatch" in err
    assert not (root / "breastmnist_64.npz").exists()


def test_fetch_url_downloads_one_file_from_there(mirror, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MEDLENS_MIRROR", raising=False)
    root = tmp_path / "data"
    assert main(["fetch", "breastmnist", "--root", str(root), "--url", f"{mirror}/breastmnist.npz"]) == 0
    assert f"downloading {mirror}/breastmnist.npz" in capsys.readouterr().err
    assert (root / "breastmnist.npz").is_file()
    assert main(["fetch", "breastmnist", "--all-sizes", "--url", mirror, "--root", str(root)]) == 1
    assert "--url names one file" in capsys.readouterr().err
