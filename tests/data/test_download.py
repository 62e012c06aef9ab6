"""Tests of ``medlens.data.download`` against a local, misbehaving-on-demand HTTP server.

Every test serves the real ``breastmnist.npz`` from ``../shared/data/medmnist`` through a
``ThreadingHTTPServer`` on 127.0.0.1 (free port). The server can serve normally (honouring
``Range: bytes=N-``), drop the connection halfway (once or always), stall, serve corrupt bytes,
ignore Range, or answer 404/503. Nothing is written outside pytest's ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from medlens.data import source as source_mod
from medlens.data.download import DownloadError, cache_root, data_root, download, md5sum
from medlens.data.registry import RemoteFile, get_dataset_info

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "medmnist"
FILENAME = "breastmnist.npz"
SIZE = 559_580
MD5 = "750601b1f35ba3300ea97c75c52ff8f6"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload() -> bytes:
    path = SHARED / FILENAME
    if not path.is_file():
        pytest.skip(f"real data file {path} not found (expected ../shared/data/medmnist next to the repo)")
    data = path.read_bytes()
    if len(data) != SIZE or hashlib.md5(data).hexdigest() != MD5:
        pytest.skip(f"{path} is not the expected breastmnist.npz ({SIZE} bytes, MD5 {MD5})")
    return data


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Nothing may land in the real home folder: HOME, cache and data root all point into tmp."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDLENS_DATA", raising=False)


class _State:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.mode = "normal"
        self.requests: list[dict] = []  # one per request: {"path", "range"}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    @property
    def ranges(self) -> list[str | None]:
        with self.lock:
            return [r["range"] for r in self.requests]


def _make_handler(state: _State):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; close after each response

        def log_message(self, *args) -> None:  # keep the test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            rng = self.headers.get("Range")
            with state.lock:
                n = len(state.requests)
                state.requests.append({"path": self.path, "range": rng})
            mode = state.mode
            body = state.body
            if mode == "404":
                self.send_error(404, "Not Found")
                return
            if mode == "503":
                self.send_error(503, "Service Unavailable")
                return
            if mode == "corrupt":
                bad = bytearray(body)
                for i in range(0, len(bad), 4096):
                    bad[i] ^= 0xFF
                body = bytes(bad)

            start = 0
            if rng and mode != "ignore-range":
                assert rng.startswith("bytes=") and rng.endswith("-"), rng
                start = int(rng[len("bytes="):-1])
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
            if mode in ("wrong-range", "aligned-range") and start:
                # a 206 from another offset than asked: bytes 0-, or the start of its 64 KiB block
                begin = 0 if mode == "wrong-range" else start - start % 65536
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {begin}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - begin))
                self.end_headers()
                self.wfile.write(body[begin:])
                return
            chunk = body[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(chunk)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

            cut = mode == "always-drop" or (mode in ("drop-once", "stall-once") and n == 0)
            if not cut:
                self.wfile.write(chunk)
                return
            # full Content-Length announced, only half of it sent
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            if mode == "stall-once":
                state.stop.wait(3.0)  # silent, connection open; bounded and cut short at teardown
            self.close_connection = True

    return Handler


class LocalServer:
    def __init__(self, state: _State, httpd: http.server.ThreadingHTTPServer) -> None:
        self.state = state
        self.httpd = httpd
        self.base = f"http://127.0.0.1:{httpd.server_address[1]}"
        self.url = f"{self.base}/files/{FILENAME}"

    def remote(self, md5: str = MD5) -> RemoteFile:
        return RemoteFile(url=self.url, md5=md5, filename=FILENAME)

    def set_mode(self, mode: str) -> None:
        self.state.mode = mode


@pytest.fixture
def server(payload):
    state = _State(payload)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield LocalServer(state, httpd)
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _free_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _assert_manual_hint(message: str, remote: RemoteFile, folder: Path) -> None:
    assert "\n" not in message, "the DownloadError message should be one line"
    assert remote.url in message
    assert remote.md5 in message
    assert str(folder / remote.filename) in message


# --------------------------------------------------------------------------------------------
# data_root / cache_root
# --------------------------------------------------------------------------------------------


def test_data_root_precedence(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MEDLENS_DATA", raising=False)
    assert data_root() == home / ".medlens" / "data"
    assert not (home / ".medlens").exists(), "data_root must not create anything"

    monkeypatch.setenv("MEDLENS_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"  # explicit root beats the variable
    assert data_root(str(tmp_path / "arg2")) == tmp_path / "arg2"

    monkeypatch.setenv("MEDLENS_DATA", "~/from-env")  # ~ expanded against HOME
    assert data_root() == home / "from-env"
    assert data_root("~/from-arg") == home / "from-arg"

    monkeypatch.setenv("MEDLENS_DATA", "")  # empty counts as unset
    assert data_root() == home / ".medlens" / "data"


def test_cache_root_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDLENS_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("MEDLENS_CACHE")
    assert cache_root() == tmp_path / "home" / ".medlens" / "cache"


# --------------------------------------------------------------------------------------------
# download()
# --------------------------------------------------------------------------------------------


def test_download_normal(server, tmp_path):
    folder = tmp_path / "new" / "data"  # created by download()
    path = download(server.remote(), folder, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert path == folder / FILENAME
    assert path.stat().st_size == SIZE
    assert md5sum(path) == MD5
    assert not (folder / (FILENAME + ".part")).exists()
    assert server.state.count == 1
    assert server.state.ranges == [None]  # nothing partial: no Range header
    assert server.state.requests[0]["path"] == f"/files/{FILENAME}"


def test_download_resumes_partial_file(server, payload, tmp_path):
    part = tmp_path / (FILENAME + ".part")
    part.write_bytes(payload[:200_000])
    path = download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert server.state.ranges == ["bytes=200000-"]
    assert md5sum(path) == MD5
    assert not part.exists()


def test_download_resumes_from_an_earlier_range_start(server, payload, tmp_path):
    """A server that answers from the start of the 64 KiB block keeps the partial file up to there."""
    server.set_mode("aligned-range")
    (tmp_path / (FILENAME + ".part")).write_bytes(payload[:200_000])
    path = download(server.remote(), tmp_path, attempts=1, backoff=0.01, timeout=5, progress=False)
    assert md5sum(path) == MD5
    assert server.state.count == 1 and server.state.ranges == ["bytes=200000-"]


def test_download_resumes_after_dropped_connection(server, tmp_path):
    server.set_mode("drop-once")
    path = download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert md5sum(path) == MD5
    ranges = server.state.ranges
    assert len(ranges) == 2
    assert ranges[0] is None
    assert ranges[1] == f"bytes={SIZE // 2}-"  # resumed exactly where the first attempt stopped
    assert not (tmp_path / (FILENAME + ".part")).exists()


def test_download_retries_after_stalled_connection(server, tmp_path):
    """A connection that goes silent longer than ``timeout`` counts as dropped and is retried."""
    server.set_mode("stall-once")
    path = download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=0.5, progress=False)
    assert md5sum(path) == MD5
    assert server.state.count == 2
    assert not (tmp_path / (FILENAME + ".part")).exists()


def test_download_keeps_bytes_received_before_a_stall(server, tmp_path):
    server.set_mode("stall-once")
    with pytest.raises(DownloadError):
        download(server.remote(), tmp_path, attempts=1, backoff=0.01, timeout=0.5, progress=False)
    assert (tmp_path / (FILENAME + ".part")).stat().st_size == SIZE // 2


def test_download_progress_bar(server, tmp_path, capsys):
    server.set_mode("drop-once")  # covers both a fresh bar and one starting at a resume offset
    path = download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=5, progress=True)
    assert md5sum(path) == MD5
    err = capsys.readouterr().err
    assert FILENAME in err  # the bar's description is the file name (no ".part")
    assert ".part" not in err


def test_download_always_dropped_raises_and_keeps_part(server, tmp_path):
    server.set_mode("always-drop")
    remote = server.remote()
    with pytest.raises(DownloadError) as info:
        download(remote, tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert isinstance(info.value, OSError)
    message = str(info.value)
    _assert_manual_hint(message, remote, tmp_path)
    part = tmp_path / (FILENAME + ".part")
    assert part.exists() and 0 < part.stat().st_size < SIZE
    assert str(part) in message  # says where the partial bytes are kept
    assert not (tmp_path / FILENAME).exists()
    ranges = server.state.ranges
    # retried a bounded number of times, each attempt resuming further on
    assert 2 <= len(ranges) <= 4
    assert ranges[0] is None
    offsets = [int(r[len("bytes="):-1]) for r in ranges[1:]]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets) and offsets[0] == SIZE // 2
    assert part.stat().st_size > offsets[-1]  # the last attempt's bytes were kept too


def test_download_kept_part_is_resumed_by_next_call(server, tmp_path):
    server.set_mode("always-drop")
    with pytest.raises(DownloadError):
        download(server.remote(), tmp_path, attempts=1, backoff=0.01, timeout=5, progress=False)
    kept = (tmp_path / (FILENAME + ".part")).stat().st_size
    assert kept == SIZE // 2
    server.set_mode("normal")
    path = download(server.remote(), tmp_path, attempts=1, backoff=0.01, timeout=5, progress=False)
    assert md5sum(path) == MD5
    assert server.state.ranges == [None, f"bytes={kept}-"]


def test_download_checksum_mismatch_removes_part(server, payload, tmp_path):
    server.set_mode("corrupt")
    remote = server.remote()
    with pytest.raises(DownloadError) as info:
        download(remote, tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    message = str(info.value)
    _assert_manual_hint(message, remote, tmp_path)
    assert "checksum" in message.lower()
    bad = bytearray(payload)
    for i in range(0, len(bad), 4096):
        bad[i] ^= 0xFF
    assert hashlib.md5(bytes(bad)).hexdigest() in message  # the actual MD5 is reported
    assert not (tmp_path / FILENAME).exists()
    assert not (tmp_path / (FILENAME + ".part")).exists()
    assert server.state.count == 1  # a complete-but-wrong file is not re-fetched in a loop


def test_download_wrong_expected_md5(server, tmp_path):
    """The registry MD5 is what is checked: a correct file under a wrong MD5 is rejected."""
    wrong = "0" * 32
    with pytest.raises(DownloadError, match=wrong):
        download(server.remote(md5=wrong), tmp_path, attempts=1, backoff=0.01, timeout=5, progress=False)
    assert list(tmp_path.glob(FILENAME + "*")) == []


def test_download_server_ignoring_range_overwrites_part(server, tmp_path):
    server.set_mode("ignore-range")
    part = tmp_path / (FILENAME + ".part")
    part.write_bytes(b"\xab" * 1000)  # garbage that must not stay in front of the file
    path = download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert server.state.ranges == ["bytes=1000-"]
    assert path.stat().st_size == SIZE
    assert md5sum(path) == MD5
    assert not part.exists()


def test_download_complete_part_answered_416(server, payload, tmp_path):
    """A .part that already holds the whole file gets a 416 and is checked and moved into place."""
    part = tmp_path / (FILENAME + ".part")
    part.write_bytes(payload)
    path = download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert server.state.ranges == [f"bytes={SIZE}-"]
    assert md5sum(path) == MD5
    assert not part.exists()


def test_download_overlong_part_is_rejected_and_removed(server, payload, tmp_path):
    part = tmp_path / (FILENAME + ".part")
    part.write_bytes(payload + b"extra")
    with pytest.raises(DownloadError, match="checksum"):
        download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert not part.exists()  # the next call starts from scratch
    assert not (tmp_path / FILENAME).exists()
    path = download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert md5sum(path) == MD5


def test_download_404_is_not_retried(server, tmp_path):
    server.set_mode("404")
    remote = server.remote()
    with pytest.raises(DownloadError) as info:
        download(remote, tmp_path, attempts=5, backoff=0.01, timeout=5, progress=False)
    message = str(info.value)
    _assert_manual_hint(message, remote, tmp_path)
    assert "404" in message
    assert server.state.count == 1
    assert not (tmp_path / FILENAME).exists()


def test_download_503_is_retried_a_bounded_number_of_times(server, tmp_path):
    server.set_mode("503")
    remote = server.remote()
    with pytest.raises(DownloadError) as info:
        download(remote, tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert "503" in str(info.value)
    assert server.state.count == 3  # attempts=3 tries in all, no more


def test_download_backs_off_between_server_errors(server, tmp_path):
    server.set_mode("503")
    started = time.monotonic()
    with pytest.raises(DownloadError):
        download(server.remote(), tmp_path, attempts=3, backoff=0.2, timeout=5, progress=False)
    # waits 0.2 s then 0.4 s between the three tries (none after the last)
    assert time.monotonic() - started >= 0.6
    assert server.state.count == 3


def test_download_restarts_when_server_sends_another_range(server, payload, tmp_path):
    """A 206 whose Content-Range does not start at the partial file's end must not be appended."""
    server.set_mode("wrong-range")
    part = tmp_path / (FILENAME + ".part")
    part.write_bytes(payload[:200_000])
    path = download(server.remote(), tmp_path, attempts=3, backoff=0.01, timeout=5, progress=False)
    assert md5sum(path) == MD5


def test_download_unreachable(tmp_path):
    port = _free_port()
    remote = RemoteFile(url=f"http://127.0.0.1:{port}/{FILENAME}", md5=MD5, filename=FILENAME)
    with pytest.raises(DownloadError) as info:
        download(remote, tmp_path / "d", attempts=2, backoff=0.01, timeout=5, progress=False)
    _assert_manual_hint(str(info.value), remote, tmp_path / "d")
    assert not (tmp_path / "d" / FILENAME).exists()


# --------------------------------------------------------------------------------------------
# resolve() downloads a missing registry file
# --------------------------------------------------------------------------------------------


def test_resolve_downloads_missing_file_once(server, tmp_path, monkeypatch):
    real = get_dataset_info("breastmnist")
    assert real.file(28).md5 == MD5  # the registry and the served file agree
    patched = dataclasses.replace(real, files={28: server.remote()})
    monkeypatch.setattr(source_mod, "get_dataset_info", lambda name: patched)

    root = tmp_path / "root"
    src = source_mod.resolve("breastmnist", root=root)
    assert server.state.count == 1
    assert md5sum(root / FILENAME) == MD5
    assert not (root / (FILENAME + ".part")).exists()
    sizes = {name: len(split) for name, split in src.splits.items()}
    assert sizes == {"train": 546, "val": 78, "test": 156}
    assert src.splits["train"].images.shape == (546, 1, 28, 28)
    assert src.fingerprint == MD5

    again = source_mod.resolve("breastmnist", root=root)
    assert server.state.count == 1  # present file: no second download
    assert {name: len(split) for name, split in again.splits.items()} == sizes
    assert not (tmp_path / "home").exists()  # nothing written to the home folder
