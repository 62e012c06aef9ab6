"""Load benchmark of ``medlens serve``: latency, throughput and memory of the HTTP service.

The server is the real command, ``python -m medlens serve RUN --backend onnx`` (uvicorn on
127.0.0.1, a free port), in a subprocess. ``RUN/export/model.onnx`` is exported first by this
script when it is missing (the command would do it too, but inside the server process, whose
memory is measured). Without ``--run``, a 28-px ``cnn_small`` is trained for one epoch on
BreastMNIST into a temporary folder (about 15 s).

Clients: 1, 8 and 32 threads, each with its own keep-alive connection (``http.client`` from the
standard library: the cheapest Python client, so that on a 2-core machine the load generator
takes as little CPU from the server as possible). Every request uploads one real BreastMNIST
test PNG (rotating over 64 of them) to ``POST /v1/predict`` and must answer 200. A level runs
until ``--requests`` answers or ``--seconds`` have passed, whichever comes first, after 50
warm-up requests. The levels are repeated ``--repeats`` times, interleaved (1, 8, 32, 1, 8, 32,
...), so that load from other jobs hits all levels alike; the table gives the median over
repeats of each level's p50/p95/p99 latency and throughput.

Memory: the server's VmRSS (``/proc/<pid>/status``) after warm-up, then after 10,000 more
requests (8 clients), sampled every 1,000; the growth must stay under ``--rss-bound-mb``
(default 50 MB).

Contention: every phase records ``others_share``, the CPU used by processes other than the
server and this client / (wall seconds x cores), from ``/proc/stat``: near 0 on a quiet machine.

Abuse (issue 20), last, on 127.0.0.1 only and bounded: ``--abuse-aborts`` uploads that send
their headers and 4 KB of a declared 1 MB body, then hang up (in waves of 50); ``--abuse-slow``
connections that send half a request's headers and wait (the server's header timeout closes
them); ``--abuse-bombs`` concurrent 16-bit PNGs of 5,000 x 5,000 pixels (a few hundred KB each,
50 MB of samples: just inside the default pixel budget). Meanwhile ``/healthz`` is asked every
50 ms; recorded: its p99, the server's VmRSS peak (sampled, and VmHWM) and the tracebacks in its log.

Targets (from the issues): p50 single-image latency < 10 ms at concurrency 1 (ONNX Runtime,
28-px model); RSS growth over 10,000 requests < 50 MB; during the abuse phase /healthz p99 < 1 s,
server memory peak < 1.5 GB, 0 tracebacks in the log.

Results: ``benchmarks/results/serve_load.json`` (raw latencies summarised per run, machine,
versions, git state) and a markdown table on stdout.

Usage:
    .venv/bin/python benchmarks/serve_load.py                # about 2-3 minutes
    .venv/bin/python benchmarks/serve_load.py --run runs/x   # serve an existing run
    .venv/bin/python benchmarks/serve_load.py --quick        # smoke run, about 40 s
    .venv/bin/python benchmarks/serve_load.py --quick --concurrency 1 --rss-requests 100 \
        --abuse-aborts 20 --abuse-slow 4 --abuse-bombs 1        # the smallest smoke run
"""

from __future__ import annotations

import argparse
import datetime as _dt
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from data_loading import git_info, machine_info  # noqa: E402 (shared benchmark helpers)

TARGET_P50_MS = 10.0
RSS_REQUESTS = 10_000
WARMUP_REQUESTS = 50
TARGET_ABUSE_HEALTHZ_P99_S = 1.0
TARGET_ABUSE_PEAK_MB = 1500.0
BOMB_EDGE = 5000  # 16-bit: 25 M pixels, 50 MB of samples, the default budget of 50,000,000 bytes


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (``/proc/stat``, steal included)."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class Contention:
    """How much CPU everything except the server and this client used during a block."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid

    def __enter__(self):
        self.wall, self.busy = time.perf_counter(), _busy_cpu_seconds()
        self.server, self.client = _process_cpu_seconds(self.server_pid), time.process_time()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.wall
        self.server_cpu = _process_cpu_seconds(self.server_pid) - self.server
        self.client_cpu = time.process_time() - self.client
        cores = len(os.sched_getaffinity(0))
        others = _busy_cpu_seconds() - self.busy - self.server_cpu - self.client_cpu
        self.others_share = max(0.0, others) / (self.seconds * cores)
        return False

    def record(self) -> dict:
        return {"seconds": round(self.seconds, 3), "server_cpu_s": round(self.server_cpu, 3),
                "client_cpu_s": round(self.client_cpu, 3), "others_share": round(self.others_share, 3),
                "loadavg_1min": os.getloadavg()[0]}


def multipart_bodies(pngs: list[bytes]) -> tuple[str, list[bytes]]:
    """One pre-encoded multipart body per PNG (field ``files``), and their Content-Type."""
    boundary = uuid.uuid4().hex
    bodies = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"test{i}.png\"\r\n"
               f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
              for i, png in enumerate(pngs)]
    return f"multipart/form-data; boundary={boundary}", bodies


def load_level(port: int, concurrency: int, content_type: str, bodies: list[bytes], *, max_requests: int,
               max_seconds: float) -> dict:
    """``concurrency`` keep-alive clients posting single images until the count or time bound."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures: list[str] = []
    issued = iter(range(max_requests))  # next() on a shared iterator is atomic under the GIL
    start = time.perf_counter()
    deadline = start + max_seconds

    def client(slot: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for n in issued:
                if time.perf_counter() > deadline:
                    return
                body = bodies[(n + slot) % len(bodies)]
                t0 = time.perf_counter()
                connection.request("POST", "/v1/predict", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                payload = response.read()
                latencies[slot].append(time.perf_counter() - t0)
                if response.status != 200:
                    failures.append(f"{response.status}: {payload[:200]!r}")
                    return
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} request(s) failed at concurrency {concurrency}; first: {failures[0]}")
    times_ms = np.concatenate([np.asarray(v) for v in latencies]) * 1e3
    return {"concurrency": concurrency, "requests": int(times_ms.size), "seconds": round(wall, 3),
            "throughput_rps": times_ms.size / wall,
            "p50_ms": float(np.percentile(times_ms, 50)), "p95_ms": float(np.percentile(times_ms, 95)),
            "p99_ms": float(np.percentile(times_ms, 99)), "mean_ms": float(times_ms.mean()),
            "max_ms": float(times_ms.max())}


def train_run(data_dir: Path, out: Path) -> Path:
    """One epoch of cnn_small on BreastMNIST 28 px (the model the target is stated for)."""
    from medlens.engine.config import build_config
    from medlens.engine.train import train

    cfg = build_config({"data": {"spec": "breastmnist", "root": str(data_dir / "medmnist")},
                        "model": {"name": "cnn_small"},
                        "train": {"epochs": 1, "tracking_uri": "none", "progress": False}})
    train(cfg, out)
    return out


def test_pngs(data_dir: Path, count: int = 64) -> list[bytes]:
    from PIL import Image

    images = np.load(data_dir / "medmnist" / "breastmnist.npz")["test_images"][:count]
    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run: Path, port: int, log: Path) -> tuple[subprocess.Popen, float]:
    """``medlens serve`` in a subprocess; returns it and the seconds until /readyz answered 200."""
    import httpx

    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "medlens", "serve", str(run), "--backend", "onnx",
                                "--port", str(port), "--log-level", "warning"],
                               cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"medlens serve exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        if time.perf_counter() - started > 180:
            process.kill()
            raise RuntimeError("medlens serve did not become ready within 180 s")
        time.sleep(0.1)


def _vm_hwm_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def bomb_png(edge: int = BOMB_EDGE) -> bytes:
    """A 16-bit grayscale PNG of ``edge`` x ``edge`` that compresses to a few hundred KB (a smooth ramp)."""
    from PIL import Image

    ramp = (np.arange(edge, dtype=np.uint32) * 13 % 65536).astype(np.uint16)
    image = Image.fromarray(np.broadcast_to(ramp, (edge, edge)).copy())
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def _raw_connection(port: int) -> socket.socket:
    assert port > 0
    return socket.create_connection(("127.0.0.1", port), timeout=30)  # loopback only, by construction


def abuse_phase(port: int, pid: int, log: Path, *, aborts: int, slow: int, bombs: int) -> dict:
    """Aborted uploads, half-sent headers and 16-bit bombs at once, bounded; /healthz timed throughout."""
    boundary = uuid.uuid4().hex
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
            f"\r\nContent-Length: 1000000\r\n\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"a.png\"\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096
    bomb = bomb_png()
    content_type, (bomb_body,) = multipart_bodies([bomb])
    healthz: list[float] = []
    rss_peak = [_vm_rss_bytes(pid)]
    stop = threading.Event()
    bomb_status: list[int] = []

    def probe() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                connection.request("GET", "/healthz")
                connection.getresponse().read()
                connection.close()
            except OSError:
                pass
            healthz.append(time.perf_counter() - started)
            rss_peak.append(_vm_rss_bytes(pid))
            time.sleep(0.05)

    def abort_waves() -> None:
        for start in range(0, aborts, 50):
            sockets = []
            for _ in range(min(50, aborts - start)):
                try:
                    sock = _raw_connection(port)
                    sock.sendall(head)
                    sockets.append(sock)
                except OSError:
                    pass
            for sock in sockets:
                sock.close()
            time.sleep(0.2)

    def slow_headers() -> None:
        sockets = []
        for _ in range(slow):
            try:
                sock = _raw_connection(port)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                sockets.append(sock)
            except OSError:
                pass
        time.sleep(12)  # past the server's 10 s header timeout
        for sock in sockets:
            sock.close()

    def one_bomb() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.request("POST", "/v1/predict", body=bomb_body, headers={"Content-Type": content_type})
        bomb_status.append(connection.getresponse().status)
        connection.close()

    prober = threading.Thread(target=probe)
    prober.start()
    time.sleep(0.5)
    workers = [threading.Thread(target=abort_waves), threading.Thread(target=slow_headers),
               *[threading.Thread(target=one_bomb) for _ in range(bombs)]]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(600)
    seconds = time.perf_counter() - started
    time.sleep(0.5)
    stop.set()
    prober.join(60)
    text = log.read_text(errors="replace")
    p99 = float(np.percentile(healthz, 99)) if healthz else float("nan")
    peak = max(max(rss_peak), _vm_hwm_bytes(pid))
    return {"aborts": aborts, "slow": slow, "bombs": bombs, "bomb_bytes": len(bomb), "bomb_status": bomb_status,
            "seconds": round(seconds, 2), "healthz_requests": len(healthz), "healthz_p99_s": round(p99, 4),
            "healthz_max_s": round(max(healthz), 4) if healthz else None, "rss_peak_mb": round(peak / 1e6, 1),
            "tracebacks": text.count("Traceback"),
            "met": {"healthz_p99": p99 < TARGET_ABUSE_HEALTHZ_P99_S, "rss_peak": peak / 1e6 < TARGET_ABUSE_PEAK_MB,
                    "no_tracebacks": "Traceback" not in text}}


def median_table(runs: list[dict], levels: list[int]) -> list[dict]:
    rows = []
    for level in levels:
        mine = [r for r in runs if r["concurrency"] == level]
        row = {"concurrency": level, "repeats": len(mine), "requests_per_repeat": [r["requests"] for r in mine]}
        for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps", "others_share"):
            values = [r[key] for r in mine]
            row[key] = statistics.median(values)
            row[f"{key}_runs"] = [round(v, 3) for v in values]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="run folder to serve (default: train a 1-epoch cnn_small on "
                                                  "BreastMNIST 28 px into a temporary folder)")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data",
                        help="folder holding medmnist/breastmnist.npz (default ../shared/data)")
    parser.add_argument("--concurrency", default="1,8,32", help="client counts (default 1,8,32)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every level, interleaved (default 3)")
    parser.add_argument("--requests", type=int, default=3000, help="most requests per level and repeat (default 3000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="most seconds per level and repeat (default 8)")
    parser.add_argument("--rss-requests", type=int, default=RSS_REQUESTS, help="requests of the memory phase (10000)")
    parser.add_argument("--rss-bound-mb", type=float, default=50.0, help="allowed VmRSS growth in MB (default 50)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 3 s per level, 2,000 memory requests")
    parser.add_argument("--abuse-aborts", type=int, default=200, help="aborted uploads in the abuse phase (200)")
    parser.add_argument("--abuse-slow", type=int, default=50, help="half-sent headers held open (50)")
    parser.add_argument("--abuse-bombs", type=int, default=8, help="concurrent 16-bit 5,000 px PNG uploads (8)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds, args.rss_requests = 1, 3.0, 2000
    levels = [int(v) for v in args.concurrency.split(",")]

    from medlens._io import atomic_path

    record: dict = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
                    "git": git_info(), "settings": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="medlens-serve-load-") as tmp:
        os.environ["MEDLENS_CACHE"] = str(Path(tmp) / "cache")  # nothing under the home folder
        run = args.run
        if run is None:
            t0 = time.perf_counter()
            run = train_run(args.data_dir, Path(tmp) / "run")
            record["train_seconds"] = round(time.perf_counter() - t0, 1)
        from medlens.engine.run_folder import RunFolder

        folder = RunFolder.of(run)
        if not (folder.onnx.is_file() and folder.onnx_card.is_file()):
            # Exported here, not by the server on start, so that the server's memory is that of
            # serving alone (an export in the server process would stay in its resident set).
            from medlens.serve.onnx_export import export_onnx

            t0 = time.perf_counter()
            export_onnx(run)
            record["export_seconds"] = round(time.perf_counter() - t0, 1)
        pngs = test_pngs(args.data_dir)
        content_type, bodies = multipart_bodies(pngs)
        port = free_port()
        log = Path(tmp) / "server.log"
        process, ready_s = start_server(run, port, log)
        record["server_start_to_ready_s"] = round(ready_s, 2)
        pid = process.pid
        try:
            record["rss_fresh_mb"] = _vm_rss_bytes(pid) / 1e6
            load_level(port, 1, content_type, bodies, max_requests=WARMUP_REQUESTS, max_seconds=30)

            runs = []
            for repeat in range(args.repeats):
                for level in levels:
                    with Contention(pid) as clock:
                        result = load_level(port, level, content_type, bodies, max_requests=args.requests,
                                            max_seconds=args.seconds)
                    result.update(clock.record(), repeat=repeat)
                    runs.append(result)
                    print(f"repeat {repeat} concurrency {level:>2}: {result['requests']:>5} requests, "
                          f"p50 {result['p50_ms']:.2f} ms, p95 {result['p95_ms']:.2f} ms, p99 {result['p99_ms']:.2f} "
                          f"ms, {result['throughput_rps']:,.0f} req/s, others {result['others_share']:.2f}",
                          file=sys.stderr)
            record["runs"] = runs
            record["table"] = median_table(runs, levels)

            # Memory: VmRSS before and after rss_requests more requests (8 clients), sampled per 1,000.
            rss_before = _vm_rss_bytes(pid)
            samples = [(0, rss_before)]
            done = 0
            with Contention(pid) as clock:
                while done < args.rss_requests:
                    step = min(1000, args.rss_requests - done)
                    result = load_level(port, 8, content_type, bodies, max_requests=step, max_seconds=600)
                    done += result["requests"]
                    samples.append((done, _vm_rss_bytes(pid)))
            rss_after = samples[-1][1]
            growth_mb = (rss_after - rss_before) / 1e6
            record["memory"] = {"requests": done, "rss_before_mb": rss_before / 1e6, "rss_after_mb": rss_after / 1e6,
                                "growth_mb": growth_mb, "bound_mb": args.rss_bound_mb,
                                "met": growth_mb < args.rss_bound_mb,
                                "samples_mb": [(n, round(b / 1e6, 2)) for n, b in samples], **clock.record()}
            with Contention(pid) as clock:
                record["abuse"] = abuse_phase(port, pid, log, aborts=args.abuse_aborts, slow=args.abuse_slow,
                                              bombs=args.abuse_bombs)
            record["abuse"].update(clock.record())
            print(f"abuse: /healthz p99 {record['abuse']['healthz_p99_s']:.3f} s, server peak "
                  f"{record['abuse']['rss_peak_mb']:.0f} MB, {record['abuse']['tracebacks']} tracebacks, bombs "
                  f"answered {record['abuse']['bomb_status']}", file=sys.stderr)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
            record["server_log_tail"] = log.read_text(errors="replace")[-3000:]

    one = next(row for row in record["table"] if row["concurrency"] == 1) if 1 in levels else None
    record["targets"] = {"p50_single_ms": TARGET_P50_MS,
                         "p50_single_met": one is not None and one["p50_ms"] < TARGET_P50_MS,
                         "rss_growth_met": record["memory"]["met"],
                         "abuse_healthz_p99_s": TARGET_ABUSE_HEALTHZ_P99_S, "abuse_peak_mb": TARGET_ABUSE_PEAK_MB,
                         "abuse_met": record["abuse"]["met"]}
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text(json.dumps(record, indent=1, default=str) + "\n")

    print("| clients | p50 ms | p95 ms | p99 ms | throughput req/s | others' CPU share | repeats (requests each) |")
    print("|---|---|---|---|---|---|---|")
    for row in record["table"]:
        print(f"| {row['concurrency']} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['p99_ms']:.2f} | "
              f"{row['throughput_rps']:,.0f} | {row['others_share']:.2f} | {row['repeats']} "
              f"({', '.join(f'{n:,}' for n in row['requests_per_repeat'])}) |")
    memory = record["memory"]
    print(f"\nVmRSS {memory['rss_before_mb']:.1f} MB -> {memory['rss_after_mb']:.1f} MB over {memory['requests']:,} "
          f"requests: {memory['growth_mb']:+.1f} MB (bound {memory['bound_mb']:.0f} MB) "
          f"{'PASS' if memory['met'] else 'MISS'}")
    if one is not None:
        print(f"p50 single-image latency {one['p50_ms']:.2f} ms (target < {TARGET_P50_MS:.0f} ms) "
              f"{'PASS' if record['targets']['p50_single_met'] else 'MISS'}")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
