"""Data-loading benchmark for medlens: decode, iterate, memory, CLI start-up.

Measures, on the data in ``shared/data`` (never copied into the repository):

1. ``resolve("folder:...")`` of the Medical MNIST zip (58,954 JPEGs) cold (empty decode cache:
   decode + resize + stack + split) and warm (from the decode cache); the COVID-19 folder cold.
2. One epoch of the BreastMNIST / PneumoniaMNIST train splits in shuffled batches of 128:
   medlens ``BatchLoader`` and, as the plain reference, ``torch.utils.data.DataLoader`` over
   ``SplitDataset``.
3. Peak memory while resolving and iterating a synthetic multi-GB MedMNIST-layout ``.npz``
   (memory-mapped path), sampled from ``/proc/self/status`` in a child process; optionally the
   in-RAM path for contrast.
4. ``medlens --help`` / ``medlens datasets`` wall time, and whether torch gets imported.

$MEDLENS_CACHE points at a fresh temporary folder for the whole run (deleted at the end), so
nothing is written to the home folder. Results: ``benchmarks/results/data_loading-<date>.json``
and a markdown table on stdout.

Usage:
    .venv/bin/python benchmarks/data_loading.py              # full run (a few minutes)
    .venv/bin/python benchmarks/data_loading.py --quick      # smoke run (~1 minute)
    .venv/bin/python benchmarks/data_loading.py --skip-big   # without the multi-GB part
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SECTIONS = ("folder", "medmnist", "big", "cli")
BATCH = 128
IMAGE_EDGE = 224  # synthetic multi-GB file: MedMNIST+ RGB at 224 px (PathMNIST-like)
TARGET_MEDMNIST_IPS = 50_000
TARGET_CLI_S = 1.0
ANON_PASS_FRACTION = 0.25  # the benchmark's own pass line for "far below the array size"


# --------------------------------------------------------------------------- small helpers

def summary(values: list[float]) -> dict:
    """Median, min, max and the raw runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 6) for v in values]}


def fresh_cache(tmp_root: Path, name: str) -> Path:
    """Point $MEDLENS_CACHE at a new, empty folder under the run's temporary root."""
    path = tmp_root / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["MEDLENS_CACHE"] = str(path)
    return path


def read_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem, VmHWM of this process in bytes."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_info() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_total = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    info = {"nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_count": os.cpu_count(), "cpu_model": model, "mem_total_gib": round(mem_total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg())}
    return info


def versions() -> dict:
    out = {"numpy": np.__version__}
    for name in ("torch", "PIL", "sklearn"):
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 (informational only)
            out[name] = f"unavailable ({type(exc).__name__})"
    try:
        import medlens

        out["medlens"] = medlens.__version__
    except Exception as exc:  # noqa: BLE001
        out["medlens"] = f"unavailable ({type(exc).__name__})"
    return out


def git_info() -> dict:
    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()

    try:
        import hashlib

        src_diff = git("diff", "HEAD", "--", "src")
        return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(git("status", "--porcelain").splitlines()),
                "src_uncommitted_diff_sha256": hashlib.sha256(src_diff.encode()).hexdigest()[:16] if src_diff else None,
                "src_uncommitted_files": git("diff", "HEAD", "--name-only", "--", "src").splitlines(),
                # files git does not track yet: a run of them is not reproducible from the commit
                "src_untracked_files": git("ls-files", "--others", "--exclude-standard", "--", "src").splitlines()}
    except (OSError, subprocess.CalledProcessError):
        return {}


def fmt_ips(value: float) -> str:
    return f"{value:,.0f} img/s"


def fmt_bytes(value: float) -> str:
    return f"{value / 1e9:.2f} GB" if value >= 1e9 else f"{value / 1e6:.0f} MB"


# --------------------------------------------------------------------------- 1. folders

def bench_folders(data_dir: Path, tmp_root: Path, repeats: int, cold_repeats: int) -> dict:
    from medlens.data.source import resolve

    out = {}
    targets = {
        "medical_mnist": (data_dir / "medical_mnist" / "medical_mnist.zip", cold_repeats),
        "covid19": (data_dir / "covid19", repeats),
    }
    for name, (path, n_cold) in targets.items():
        if not path.exists():
            out[name] = {"error": f"{path} not found"}
            continue
        spec = f"folder:{path}"
        cold, warm, source = [], [], None
        for r in range(n_cold):
            cache = fresh_cache(tmp_root, f"folder-{name}-cold{r}")
            gc.collect()
            t0 = time.perf_counter()
            source = resolve(spec)
            cold.append(time.perf_counter() - t0)
            if r < n_cold - 1:  # keep the last cache for the warm runs
                del source
                shutil.rmtree(cache, ignore_errors=True)
        n_images = sum(len(s) for s in source.splits.values())
        shape = list(source.splits["train"].images.shape[1:])
        split_sizes = {k: len(v) for k, v in source.splits.items()}
        del source
        for _ in range(repeats):  # decode cache present from the last cold run
            gc.collect()
            t0 = time.perf_counter()
            source = resolve(spec)
            warm.append(time.perf_counter() - t0)
            del source
        shutil.rmtree(cache, ignore_errors=True)
        cold_s = summary(cold)
        out[name] = {
            "spec": spec, "n_images": n_images, "image_shape": shape, "split_sizes": split_sizes,
            "cold_s": cold_s, "cold_images_per_s": n_images / cold_s["median"],
            "warm_s": summary(warm), "warm_images_per_s": n_images / statistics.median(warm),
        }
    os.environ["MEDLENS_CACHE"] = str(tmp_root / "cache")
    return out


# --------------------------------------------------------------------------- 2. MedMNIST iteration

def _run_epochs(loader, epochs: int) -> tuple[int, float]:
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for images, _labels in loader:
            n += images.shape[0]
    return n, time.perf_counter() - t0


def bench_medmnist(data_dir: Path, repeats: int, min_images: int) -> dict:
    import torch

    from medlens.data.loader import BatchLoader, SplitDataset
    from medlens.data.source import resolve

    root = data_dir / "medmnist"
    out = {"batch_size": BATCH, "torch_threads": torch.get_num_threads()}
    for name in ("breastmnist", "pneumoniamnist"):
        try:
            resolve(name, root=root, download_missing=False)  # first call: MD5 check + stamp
        except FileNotFoundError as exc:
            out[name] = {"error": str(exc)}
            continue
        load = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            source = resolve(name, root=root, download_missing=False)
            load.append(time.perf_counter() - t0)
        split = source.splits["train"]
        n = len(split)
        epochs = max(1, math.ceil(min_images / n))
        loaders = {
            "batchloader": BatchLoader(split, batch_size=BATCH, shuffle=True, seed=0),
            "torch_dataloader": torch.utils.data.DataLoader(SplitDataset(split), batch_size=BATCH, shuffle=True),
        }
        for key, loader in loaders.items():  # warm-up epoch, also a sanity check of the output
            seen = 0
            for images, labels in loader:
                assert images.dtype == torch.uint8 and images.shape[0] <= BATCH and len(labels) == images.shape[0]
                seen += images.shape[0]
            assert seen == n, f"{key}: one epoch gave {seen} images, split has {n}"
        rates = {key: [] for key in loaders}
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
            for key, loader in loaders.items():
                gc.collect()
                count, seconds = _run_epochs(loader, epochs)
                rates[key].append(count / seconds)
        entry = {"train_images": n, "image_shape": list(split.images.shape[1:]), "epochs_per_repeat": epochs,
                 "resolve_s": summary(load)}
        for key, values in rates.items():
            s = summary(values)
            entry[key] = {"images_per_s": s, "epoch_ms": 1e3 * n / s["median"]}
        entry["batchloader_vs_dataloader"] = (entry["batchloader"]["images_per_s"]["median"]
                                              / entry["torch_dataloader"]["images_per_s"]["median"])
        out[name] = entry
        del source, split, loaders
    return out


# --------------------------------------------------------------------------- 3. multi-GB npz (children)

class MemSampler(threading.Thread):
    """Samples /proc/self/status every ``interval`` s; keeps the peaks per phase."""

    KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")

    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, dict[str, int]] = {}
        self.samples = 0
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def sample(self) -> None:
        status = read_status()
        with self._lock:
            peak = self.peaks.setdefault(self.phase, {k: 0 for k in self.KEYS})
            for k in self.KEYS:
                peak[k] = max(peak[k], status.get(k, 0))
            self.samples += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.interval)

    def mark(self, phase: str) -> dict[str, int]:
        """Close the current phase with one last sample and start ``phase``; returns the status now."""
        self.sample()
        with self._lock:
            self.phase = phase
        self.sample()
        return read_status()

    def stop(self) -> None:
        self.sample()
        self._halt.set()
        self.join()


def child_write(path: Path, gb: float) -> dict:
    """Write a MedMNIST-layout .npz (stored, i.e. what np.savez writes) without holding it in RAM."""
    import zipfile

    per_image = IMAGE_EDGE * IMAGE_EDGE * 3
    n_train = max(256, round(gb * 1e9 / per_image))
    n_other = max(64, n_train // 40)
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (IMAGE_EDGE, IMAGE_EDGE, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for split, n in (("train", n_train), ("val", n_other), ("test", n_other)):
            with archive.open(f"{split}_images.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                         "shape": (n, IMAGE_EDGE, IMAGE_EDGE, 3)})
                for start in range(0, n, 256):
                    index = np.arange(start, min(n, start + 256))
                    # the tile shifted per image: cheap, not all zeros, not all alike
                    chunk = tile[None] + (index * 37 % 256).astype(np.uint8)[:, None, None, None]
                    fh.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
            with archive.open(f"{split}_labels.npy", "w") as fh:
                np.lib.format.write_array(fh, (np.arange(n) % 9).astype(np.uint8)[:, None])
    write_s = time.perf_counter() - t0
    from medlens.data.npz import read_npz_header

    header = read_npz_header(path)
    array_bytes = sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in header.values())
    return {"path": str(path), "n_train": n_train, "n_val": n_other, "n_test": n_other,
            "train_images_bytes": n_train * per_image, "array_bytes": array_bytes,
            "file_bytes": path.stat().st_size, "write_s": write_s, "format": "zip stored (as np.savez)"}


def _evict(paths: list[Path]) -> bool:
    """Drop these files' pages from the page cache (best effort; only our own files)."""
    ok = True
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except (OSError, AttributeError):
            ok = False
    return ok


def _is_mapped(array: np.ndarray) -> bool:
    a = array
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap):
            return True
        a = a.base
    return a is not None and type(a).__name__ == "mmap"


def child_iterate(path: Path, mode: str, threshold: int | None, epochs: int) -> dict:
    """Resolve npz:PATH, iterate ``epochs`` epochs with BatchLoader; memory peaks per phase."""
    sampler = MemSampler(0.05)
    sampler.start()
    import torch  # noqa: F401  (imported before the baseline so it is not counted as data)

    from medlens.data.download import cache_root, md5sum
    from medlens.data.loader import BatchLoader
    from medlens.data.source import resolve

    result: dict = {"mode": mode, "threshold": threshold, "sample_interval_s": sampler.interval}
    result["baseline"] = sampler.mark("first_load")
    spec = f"npz:{path}"
    t0 = time.perf_counter()
    source = resolve(spec, mmap_threshold=threshold)
    result["first_load_s"] = time.perf_counter() - t0
    split = source.splits["train"]
    result["mapped"] = _is_mapped(split.images)
    result["train_images"] = len(split)
    result["train_images_bytes"] = int(split.images.nbytes)
    if mode == "mmap":
        del source, split
        gc.collect()
        sampler.mark("second_load")
        t0 = time.perf_counter()
        source = resolve(spec, mmap_threshold=threshold)
        result["second_load_s"] = time.perf_counter() - t0  # decompressed cache present
        t0 = time.perf_counter()
        md5sum(path)
        result["md5_of_npz_s"] = time.perf_counter() - t0  # what source.resolve recomputes each call
        split = source.splits["train"]
        cache_files = sorted((cache_root() / "npz").glob("*/*.npy"))
        result["cache_bytes"] = sum(p.stat().st_size for p in cache_files)
        result["evicted_before_epoch1"] = _evict(cache_files)
    loader = BatchLoader(split, batch_size=BATCH, shuffle=True, seed=0)
    result["epochs"] = []
    for e in range(epochs):
        sampler.mark(f"epoch{e + 1}")
        n = 0
        t0 = time.perf_counter()
        for images, _labels in loader:
            n += images.shape[0]
        seconds = time.perf_counter() - t0
        assert n == len(split), f"epoch gave {n} images, split has {len(split)}"
        result["epochs"].append({"images": n, "seconds": seconds, "images_per_s": n / seconds})
    sampler.mark("end")
    sampler.stop()
    result["peaks"] = sampler.peaks
    result["VmHWM"] = read_status()["VmHWM"]
    result["samples"] = sampler.samples
    baseline_anon = result["baseline"]["RssAnon"]
    result["peak_RssAnon"] = max(p["RssAnon"] for p in sampler.peaks.values())
    result["peak_VmRSS"] = max(p["VmRSS"] for p in sampler.peaks.values())
    result["peak_RssAnon_above_baseline"] = result["peak_RssAnon"] - baseline_anon
    return result


def _run_child(args: list[str], env: dict | None = None, timeout: float = 1800) -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True,
                          text=True, env=env, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child {args[1]} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")


def bench_big(tmp_root: Path, gb: float, repeats: int, in_ram: bool) -> dict:
    from medlens.data.npz import DEFAULT_MMAP_THRESHOLD

    work = tmp_root / "big"
    work.mkdir(parents=True, exist_ok=True)
    estimate = int(gb * 1e9 * 1.06)  # train + val + test
    free = shutil.disk_usage(work).free
    need = 2 * estimate + (1 << 30)  # the .npz and its decompressed cache, plus slack
    if free < need:
        return {"skipped": f"needs {need / 1e9:.1f} GB free under {work}, only {free / 1e9:.1f} GB"}
    # The default threshold (2 GiB) is what the full run exercises; a smaller (quick) file forces
    # the same memory-mapped path with threshold 0.
    threshold = None if estimate > DEFAULT_MMAP_THRESHOLD else 0
    out = {"dir": str(work), "disk_free_bytes": free, "threshold_passed": threshold,
           "default_threshold_bytes": DEFAULT_MMAP_THRESHOLD}
    path = work / "synthetic224.npz"
    try:
        out["file"] = _run_child(["--child", "write", "--child-path", str(path), "--child-gb", str(gb)])
        runs = []
        for r in range(repeats):
            env = dict(os.environ, MEDLENS_CACHE=str(work / f"cache{r}"))
            runs.append(_run_child(["--child", "iterate", "--child-path", str(path), "--child-mode", "mmap",
                                    "--child-threshold", "-1" if threshold is None else str(threshold),
                                    "--child-epochs", "2"], env=env))
            shutil.rmtree(work / f"cache{r}", ignore_errors=True)
        out["mmap_runs"] = runs
        array = out["file"]["array_bytes"]
        peak_anon = max(r["peak_RssAnon"] for r in runs)
        above = max(r["peak_RssAnon_above_baseline"] for r in runs)
        out["mmap"] = {
            "mapped": all(r["mapped"] for r in runs),
            "array_bytes": array,
            "peak_RssAnon_bytes": peak_anon,
            "baseline_RssAnon_bytes": max(r["baseline"]["RssAnon"] for r in runs),
            "peak_RssAnon_above_baseline_bytes": above,
            "peak_VmRSS_bytes": max(r["peak_VmRSS"] for r in runs),
            "VmHWM_bytes": max(r["VmHWM"] for r in runs),
            "anon_fraction_of_array": peak_anon / array,
            "anon_above_baseline_fraction_of_array": above / array,
            "first_load_s": summary([r["first_load_s"] for r in runs]),
            "second_load_s": summary([r["second_load_s"] for r in runs]),
            "md5_of_npz_s": summary([r["md5_of_npz_s"] for r in runs]),
            "epoch1_evicted_images_per_s": summary([r["epochs"][0]["images_per_s"] for r in runs]),
            "epoch2_cached_images_per_s": summary([r["epochs"][-1]["images_per_s"] for r in runs]),
            "evicted_before_epoch1": all(r["evicted_before_epoch1"] for r in runs),
        }
        if in_ram:
            avail = mem_available()
            if avail < 1.5 * array + (2 << 30):
                out["in_ram"] = {"skipped": f"MemAvailable {avail / 1e9:.1f} GB too small for a "
                                            f"{array / 1e9:.1f} GB array"}
            else:
                env = dict(os.environ, MEDLENS_CACHE=str(work / "cache-ram"))
                r = _run_child(["--child", "iterate", "--child-path", str(path), "--child-mode", "ram",
                                "--child-threshold", str(1 << 62), "--child-epochs", "1"], env=env)
                out["in_ram"] = {"run": r, "mapped": r["mapped"], "peak_RssAnon_bytes": r["peak_RssAnon"],
                                 "peak_RssAnon_above_baseline_bytes": r["peak_RssAnon_above_baseline"],
                                 "peak_VmRSS_bytes": r["peak_VmRSS"], "load_s": r["first_load_s"],
                                 "epoch_images_per_s": r["epochs"][0]["images_per_s"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- 4. CLI start-up

def bench_cli(data_dir: Path, runs: int) -> dict:
    exe = Path(sys.executable).with_name("medlens")
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "medlens"
    env = dict(os.environ, MEDLENS_DATA=str(data_dir / "medmnist"))
    out: dict = {"executable": str(exe), "runs_each": runs}
    for label, argv in (("help", ["--help"]), ("datasets", ["datasets"])):
        times = []
        for i in range(runs + 1):  # first run warms the file cache; not counted
            t0 = time.perf_counter()
            proc = subprocess.run([str(exe), *argv], capture_output=True, env=env)
            elapsed = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"medlens {' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
            if i:
                times.append(elapsed)
        out[label] = {"command": f"medlens {' '.join(argv)}", "wall_s": summary(times)}
    code = ("import sys, io, contextlib\nfrom medlens.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['datasets'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'numpy', 'sklearn', 'scipy', 'PIL', 'monai', 'lightning', 'pydicom', 'nibabel'}))")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          env=env, check=True)
    heavy = json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))
    imported = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = [p.strip() for p in line[len("import time:"):].split("|")]
            if parts[0].isdigit():
                imported.append((parts[2], int(parts[1])))
    names = [name for name, _ in imported]
    out["datasets_imports"] = {
        "heavy_modules_loaded": heavy,
        "torch_imported": any(n.strip() == "torch" or n.strip().startswith("torch.") for n in names),
        "modules_imported": len(names),
        "medlens_cli_cumulative_ms": next((us / 1e3 for n, us in imported if n == "medlens.cli"), None),
        "slowest_top_level_ms": sorted(((us / 1e3, n) for n, us in imported if not n.startswith(" ")),
                                       reverse=True)[:5],
    }
    return out


# --------------------------------------------------------------------------- report

def table_rows(results: dict) -> list[dict]:
    rows = []

    def add(what, value, target="", ok=None):
        rows.append({"what": what, "value": value, "target": target, "ok": ok})

    folder = results.get("folder", {})
    mm = folder.get("medical_mnist", {})
    if "cold_s" in mm:
        add(f"Medical MNIST zip, `resolve('folder:…')` cold ({mm['n_images']:,} JPEGs → 64 px; "
            f"median of {len(mm['cold_s']['runs'])})",
            f"{fmt_ips(mm['cold_images_per_s'])} ({mm['cold_s']['median']:.1f} s)")
        add(f"Medical MNIST zip, warm (decode cache; median of {len(mm['warm_s']['runs'])})",
            f"{mm['warm_s']['median']:.2f} s")
    cv = folder.get("covid19", {})
    if "cold_s" in cv:
        add(f"COVID-19 folder, cold ({cv['n_images']} images → 64 px; median of {len(cv['cold_s']['runs'])})",
            f"{fmt_ips(cv['cold_images_per_s'])} ({cv['cold_s']['median']:.2f} s)")
        add("COVID-19 folder, warm", f"{cv['warm_s']['median']:.2f} s")
    med = results.get("medmnist", {})
    for name in ("breastmnist", "pneumoniamnist"):
        e = med.get(name)
        if not e or "error" in e:
            continue
        reps = len(e["batchloader"]["images_per_s"]["runs"])
        for key, label in (("batchloader", "medlens `BatchLoader`"),
                           ("torch_dataloader", "torch `DataLoader(SplitDataset)`")):
            ips = e[key]["images_per_s"]["median"]
            target = f"≫ {TARGET_MEDMNIST_IPS:,} img/s" if key == "batchloader" else "reference"
            ok = ips > TARGET_MEDMNIST_IPS if key == "batchloader" else None
            add(f"{name} train ({e['train_images']:,}) epoch, batch {BATCH}, shuffled: {label} "
                f"(median of {reps} × {e['epochs_per_repeat']} epochs)", fmt_ips(ips), target, ok)
    big = results.get("big_npz", {})
    if "mmap" in big:
        m = big["mmap"]
        array = m["array_bytes"]
        nrep = len(big["mmap_runs"])
        f = big["file"]
        add(f"Synthetic npz: uncompressed arrays (train {f['n_train']:,} × 224×224×3 uint8 = "
            f"{fmt_bytes(f['train_images_bytes'])}, val/test {f['n_val']:,} each)", fmt_bytes(array))
        add(f"… peak RssAnon, resolve + 2 epochs (memory-mapped path; max of {nrep})",
            f"{fmt_bytes(m['peak_RssAnon_bytes'])} = {fmt_bytes(m['baseline_RssAnon_bytes'])} after importing "
            f"torch + medlens, + {fmt_bytes(m['peak_RssAnon_above_baseline_bytes'])} for the data "
            f"({100 * m['anon_above_baseline_fraction_of_array']:.1f}% of the array)",
            f"far below the array size (data part < {int(ANON_PASS_FRACTION * 100)}%)",
            m["mapped"] and m["anon_above_baseline_fraction_of_array"] < ANON_PASS_FRACTION)
        add("… peak VmRSS (incl. reclaimable file-backed mmap pages)", fmt_bytes(m["peak_VmRSS_bytes"]))
        add(f"… first load (stream into .npy cache + MD5; median of {nrep})", f"{m['first_load_s']['median']:.1f} s")
        add("… second load (cache present; MD5 remembered from the first load)",
            f"{m['second_load_s']['median']:.1f} s (MD5 alone {m['md5_of_npz_s']['median']:.1f} s)")
        add("… epoch, BatchLoader 128 shuffled, cache file evicted from page cache",
            fmt_ips(m["epoch1_evicted_images_per_s"]["median"]))
        add("… epoch, BatchLoader 128 shuffled, page cache warm", fmt_ips(m["epoch2_cached_images_per_s"]["median"]))
        ram = big.get("in_ram", {})
        if "peak_RssAnon_bytes" in ram:
            add("… contrast: in-RAM path (threshold raised), peak RssAnon",
                f"{fmt_bytes(ram['peak_RssAnon_bytes'])} "
                f"(+ {fmt_bytes(ram['peak_RssAnon_above_baseline_bytes'])} for the data)")
            add("… contrast: in-RAM path, load / epoch",
                f"{ram['load_s']:.1f} s / {fmt_ips(ram['epoch_images_per_s'])}")
    elif big:
        add("Synthetic multi-GB npz",
            f"skipped: {big['skipped']}" if "skipped" in big else f"ERROR: {big.get('error')}")
    cli = results.get("cli", {})
    for key in ("help", "datasets"):
        if key in cli:
            s = cli[key]["wall_s"]
            add(f"`{cli[key]['command']}` wall time (median of {len(s['runs'])})", f"{s['median']:.3f} s",
                f"< {TARGET_CLI_S:g} s", s["median"] < TARGET_CLI_S)
    if "datasets_imports" in cli:
        d = cli["datasets_imports"]
        add("`medlens datasets` imports torch", "yes" if d["torch_imported"] else
            f"no (heavy modules loaded: {', '.join(d['heavy_modules_loaded']) or 'none'})", "no",
            not d["torch_imported"])
    for section, value in results.items():
        if isinstance(value, dict) and "error" in value and section not in ("big_npz",):
            add(f"{section}", f"ERROR: {value['error']}")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| what | value | target | ok |", "|---|---|---|---|"]
    def cell(text) -> str:
        text = " ".join(str(text).split())
        text = (text[:300] + " …") if len(text) > 300 else text
        return text.replace("|", "\\|")

    for r in rows:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        lines.append(f"| {cell(r['what'])} | {cell(r['value'])} | {cell(r['target'])} | {ok} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="repeats of each timing (default 5; 2 with --quick)")
    p.add_argument("--cold-repeats", type=int, default=None,
                   help="cold decodes of the Medical MNIST zip, each with an empty cache (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="fast smoke run: fewer repeats, a 1 GB synthetic file")
    p.add_argument("--skip-big", action="store_true", help="skip the multi-GB synthetic .npz part")
    p.add_argument("--big-gb", type=float, default=None, help="size of the synthetic train images in GB (default 3)")
    p.add_argument("--big-repeats", type=int, default=None,
                   help="child runs over the synthetic file (default 3; 1 with --quick)")
    p.add_argument("--no-in-ram", action="store_true", help="skip the in-RAM contrast run on the synthetic file")
    p.add_argument("--cli-runs", type=int, default=None,
                   help="timed runs of each CLI command (default 10; 3 with --quick)")
    p.add_argument("--min-images", type=int, default=None,
                   help="images per timed MedMNIST repeat; small splits run several epochs (default 200000)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of sections to run ({','.join(SECTIONS)})")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help=f"shared data folder (default {DEFAULT_DATA_DIR})")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON result file (default benchmarks/results/data_loading-<date>[-quick].json)")
    # internal: child processes of the multi-GB part
    p.add_argument("--child", choices=("write", "iterate"), help=argparse.SUPPRESS)
    p.add_argument("--child-path", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-gb", type=float, help=argparse.SUPPRESS)
    p.add_argument("--child-mode", choices=("mmap", "ram"), help=argparse.SUPPRESS)
    p.add_argument("--child-threshold", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.repeats = args.repeats or (2 if q else 5)
    args.cold_repeats = args.cold_repeats or (1 if q else min(3, args.repeats))
    args.big_gb = args.big_gb or (1.0 if q else 3.0)
    args.big_repeats = args.big_repeats or (1 if q else 3)
    args.cli_runs = args.cli_runs or (3 if q else 10)
    args.min_images = args.min_images or (20_000 if q else 200_000)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "write":
        print("RESULT " + json.dumps(child_write(args.child_path, args.child_gb)))
        return 0
    if args.child == "iterate":
        threshold = None if args.child_threshold == -1 else args.child_threshold
        print("RESULT " + json.dumps(child_iterate(args.child_path, args.child_mode, threshold, args.child_epochs)))
        return 0

    started = _dt.datetime.now().astimezone()
    data_dir = args.data_dir.resolve()
    tmp_root = Path(tempfile.mkdtemp(prefix="medlens-bench-"))
    os.environ["MEDLENS_CACHE"] = str(tmp_root / "cache")
    record: dict = {
        "benchmark": "data_loading", "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join([
            os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable,
            os.path.relpath(Path(__file__).resolve(), REPO), *(argv if argv is not None else sys.argv[1:])]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("child")},
        "data_dir": str(data_dir), "machine": machine_info(), "git": git_info(), "results": {},
    }
    failed = False
    steps = [
        ("folder", "folder", lambda: bench_folders(data_dir, tmp_root, args.repeats, args.cold_repeats)),
        ("medmnist", "medmnist", lambda: bench_medmnist(data_dir, args.repeats, args.min_images)),
        ("big", "big_npz", lambda: bench_big(tmp_root, args.big_gb, args.big_repeats, not args.no_in_ram)),
        ("cli", "cli", lambda: bench_cli(data_dir, args.cli_runs)),
    ]
    try:
        for section, key, run in steps:
            if section not in args.only or (section == "big" and args.skip_big):
                if section == "big" and args.skip_big:
                    record["results"][key] = {"skipped": "--skip-big"}
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {section} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                record["results"][key] = run()
            except Exception as exc:  # noqa: BLE001 (record it, run the other sections)
                failed = True
                record["results"][key] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"[{time.strftime('%H:%M:%S')}] {section} done in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    finally:
        os.environ.pop("MEDLENS_CACHE", None)
        shutil.rmtree(tmp_root, ignore_errors=True)
    record["versions"] = versions()
    record["machine"]["loadavg_end"] = list(os.getloadavg())
    record["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    record["temp_dir_removed"] = not tmp_root.exists()
    rows = table_rows(record["results"])
    record["table"] = rows
    out = args.out or HERE / "results" / f"data_loading-{record['date']}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    m = record["machine"]
    print(f"## Data loading ({record['date']}, {m['nproc']} CPUs {m['cpu_model']}, {m['mem_total_gib']} GiB RAM)\n")
    print(markdown(rows))
    print(f"\nresult written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
