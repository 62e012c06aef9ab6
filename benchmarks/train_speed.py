"""Training-speed benchmark for medlens: images/s of the whole training pipeline per model.

For every registered model and every configuration it supports (2D at 28 px, 2D at 64 px, 3D
at 28 px; 1 channel, 2 classes, synthetic uint8 images), three ways of training are timed in the
same process, interleaved round by round (bare, medlens, reference, bare, medlens, ...), so that
load from other jobs on the (shared, noisy) machine hits all three alike:

* ``bare``: the model step alone. ``create_model(...)``, in the channels-last layout when the
  model's spec asks for it (``channels_last`` in 2D, ``channels_last_3d`` in 3D, as the engine
  does), Adam, one pre-made normalised float batch reused: forward, cross-entropy,
  backward, optimizer step. The ceiling of any pipeline.
* ``medlens``: the real training path. ``medlens.engine.train.train(cfg, run_dir)`` on an
  ``npz:`` file of synthetic uint8 images, with ``augment`` = the ``standard`` preset: Lightning
  ``Trainer`` -> ``BatchLoader`` -> ``ClassifierModule.prepare`` (uint8 -> float, fused batched
  augmentation, normalisation) -> model step. Each round is one ``train()`` call of two epochs;
  the number is the ``images_per_second`` column the engine writes to ``history.csv`` for the
  second epoch (the first warms the fresh model up). That column times the training batches of
  the epoch only (validation, checkpoints and the final test evaluation are not in it).
  ``--medlens-path manual`` times the same pieces in a plain loop instead (BatchLoader ->
  ``ClassifierModule.prepare`` -> model step, no Lightning).
* ``reference``: a plain notebook loop. A ``torch.utils.data.Dataset`` whose ``__getitem__``
  turns one uint8 image into float and runs per-sample MONAI array transforms (the per-sample
  counterparts of the ``standard`` preset: RandFlip, RandRotate, RandZoom, contrast, brightness,
  clip, normalise), ``torch.utils.data.DataLoader(batch_size=B, shuffle=True, num_workers=0)``,
  no channels-last, the same model step.

Per configuration the batch size is fixed (128 for the small models at 28 px, smaller for big
models, 64 px and 3D; see ``batch_size_for``) and the number of steps per measurement is
calibrated from a warm bare step so that one measurement lasts about ``--target-seconds``. Every
measurement covers the same number of images (steps x batch) for the three ways. Reported:
the median over rounds of each way's images/s, and the median over rounds of the ratios
medlens/bare and medlens/reference, each ratio taken within one round. Every measurement also
records how much CPU other processes used meanwhile (``others_share``); the table says in how
many rounds all three measurements were quiet (others <= 10% of the cores), and the ratios over
those rounds alone.

Targets (from the issue; never loosened): medlens with augmentation reaches at least 90% of the
bare model step, and at least 2x the reference loop.

Results: ``benchmarks/results/train_speed-<date>.json`` (``-quick`` appended with ``--quick``)
and markdown tables on stdout. ``$MEDLENS_CACHE`` points at a temporary folder for the run
(deleted at the end); nothing is written under the home folder.

Usage:
    .venv/bin/python benchmarks/train_speed.py            # full run, about 15 minutes on a quiet machine
    .venv/bin/python benchmarks/train_speed.py --quick    # smoke run, under a minute
    .venv/bin/python benchmarks/train_speed.py --models resnet18,cnn_small --configs 2d28
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from data_loading import git_info, machine_info, summary  # noqa: E402 (shared benchmark helpers)

CONFIGS = {"2d28": (2, 28), "2d64": (2, 64), "3d28": (3, 28)}
WAYS = ("bare", "medlens", "reference")
TARGET_VS_BARE = 0.90       # medlens >= 90% of the bare model step (the pipeline adds < 10%)
TARGET_VS_REFERENCE = 2.0   # medlens >= 2x the plain reference loop
LIGHT_MODELS = ("cnn_small", "cnn_covid", "resnet_compact")
EVAL_IMAGES = 4             # val / test images in the synthetic file: evaluation is not what is timed
AUGMENT_PRESET = "standard"
QUIET_OTHERS_SHARE = 0.10   # a measurement is "quiet" when other processes used <= 10% of the cores


def batch_size_for(name: str, spatial_dims: int, size: int) -> int:
    """The batch of one configuration: 128 where a step is cheap, smaller where it is not.

    Chosen so the whole benchmark runs in about a quarter of an hour on the 2-core CPU; the
    numbers are recorded with the results.
    """
    if spatial_dims == 3:
        return {"resnet_compact": 16, "resnet18": 8, "resnet50": 4}.get(name, 2)  # densenet121: 2
    if name in LIGHT_MODELS:
        return 128 if size == 28 else 32
    if name == "resnet18":
        return 32 if size == 28 else 16
    return 16 if size == 28 else 8  # resnet50, densenet121


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (``/proc/stat``, steal included); 0 if unknown."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Clock:
    """Wall time of a block, and how much of the machine this and other processes used meanwhile.

    ``cpu_share``: this process's CPU seconds / (wall seconds x torch threads); near 1 for a
    compute-bound step that had the cores to itself. ``others_share``: CPU seconds used by
    everything else (other jobs, the hypervisor's steal) / (wall seconds x cores); near 0 on a
    quiet machine. The machine is shared, so every measurement records both.
    """

    def __enter__(self):
        import torch  # imported before the clocks start (its first import takes seconds)

        self.threads = torch.get_num_threads()
        self.wall, self.cpu, self.busy = time.perf_counter(), time.process_time(), _busy_cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.wall
        own = time.process_time() - self.cpu
        self.cpu_share = own / (self.seconds * self.threads)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.others_share = max(0.0, _busy_cpu_seconds() - self.busy - own) / (self.seconds * cores)
        return False

    def record(self) -> dict:
        return {"seconds": self.seconds, "cpu_share": round(self.cpu_share, 3),
                "others_share": round(self.others_share, 3), "loadavg_1min": os.getloadavg()[0]}


# --------------------------------------------------------------------------- data

def synthetic_images(n: int, spatial_dims: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images ``(n, 1, *spatial)`` and alternating 0/1 labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 1) + (size,) * spatial_dims, dtype=np.uint8)
    labels = (np.arange(n) % 2).astype(np.int64)
    return images, labels


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A MedMNIST-layout file (images without the channel axis, labels ``(N, 1)``) for ``npz:``."""
    eval_images, eval_labels = images[:EVAL_IMAGES, 0], labels[:EVAL_IMAGES, None]
    np.savez(path, train_images=images[:, 0], train_labels=labels[:, None], val_images=eval_images,
             val_labels=eval_labels, test_images=eval_images, test_labels=eval_labels)
    return path


# --------------------------------------------------------------------------- the three ways

def train_step(model, optimizer, images, labels) -> None:
    """One optimisation step: forward, cross-entropy, backward, Adam."""
    import torch.nn.functional as F

    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()


class BareStep:
    """The model step on one pre-made normalised batch (channels-last when the spec says so)."""

    def __init__(self, name: str, spatial_dims: int, size: int, batch: int, seed: int):
        import torch

        from medlens.models import create_model, get_model_spec

        torch.manual_seed(seed)
        self.model = create_model(name, in_channels=1, num_classes=2, spatial_dims=spatial_dims, input_size=size)
        images, labels = synthetic_images(batch, spatial_dims, size, seed)
        x = (torch.from_numpy(images).float() / 255 - 0.5) / 0.29  # (B, 1, *spatial), normalised
        # The model's preferred layout, in 3D too, as medlens.engine.train sets it.
        self.channels_last = get_model_spec(name).channels_last
        if self.channels_last:
            memory_format = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
            self.model = self.model.to(memory_format=memory_format)
            x = x.contiguous(memory_format=memory_format)
        self.x, self.y = x, torch.from_numpy(labels)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batch = batch

    def step_seconds(self, budget_s: float = 1.0, most: int = 3) -> float:
        """The fastest of up to ``most`` steps taken within ``budget_s``: the least disturbed one."""
        times: list[float] = []
        while not times or (len(times) < most and sum(times) < budget_s):
            t0 = time.perf_counter()
            train_step(self.model, self.optimizer, self.x, self.y)
            times.append(time.perf_counter() - t0)
        return min(times)

    def run(self, steps: int) -> dict:
        with Clock() as clock:
            for _ in range(steps):
                train_step(self.model, self.optimizer, self.x, self.y)
        return {"images_per_s": steps * self.batch / clock.seconds, **clock.record()}


def medlens_config(spec: str, name: str, batch: int, seed: int, epochs: int):
    from medlens.data.augment import AugmentConfig
    from medlens.engine.config import build_config

    return build_config({
        "data": {"spec": spec, "batch_size": batch},
        "model": {"name": name},
        "augment": dataclasses.asdict(AugmentConfig.preset(AUGMENT_PRESET)),
        "optim": {"optimizer": "adam", "lr": 1e-3, "loss": "ce"},
        "train": {"epochs": epochs, "seed": seed, "tracking_uri": "none", "progress": False},
    })


class MedlensLightning:
    """``medlens.engine.train.train`` on the synthetic file; images/s read from ``history.csv``."""

    epochs = 2  # epoch 1 warms the fresh model up; epoch 2 is the measurement

    def __init__(self, npz_path: Path, work: Path, name: str, batch: int, n_images: int):
        self.spec, self.work, self.name, self.batch, self.n_images = f"npz:{npz_path}", work, name, batch, n_images
        self.calls = 0

    def run(self, seed: int) -> dict:
        from medlens.engine.run_folder import RunFolder
        from medlens.engine.tracking import read_history
        from medlens.engine.train import train

        self.calls += 1
        run_dir = self.work / f"run{self.calls}"
        cfg = medlens_config(self.spec, self.name, self.batch, seed, self.epochs)
        log = io.StringIO()
        with Clock() as clock, contextlib.redirect_stderr(log):  # train() reports each run on stderr
            train(cfg, run_dir)
        history = read_history(RunFolder(run_dir).history)
        shutil.rmtree(run_dir, ignore_errors=True)
        if len(history) != self.epochs:
            raise RuntimeError(f"{self.name}: expected {self.epochs} epochs in history.csv, got {len(history)}")
        last = history[-1]
        return {"images_per_s": last["images_per_second"],
                "seconds": self.n_images / last["images_per_second"],
                "epoch1_images_per_s": history[0]["images_per_second"],
                "train_call": clock.record()}


class MedlensManual:
    """The same pieces without Lightning: BatchLoader -> ClassifierModule.prepare -> model step."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str, spatial_dims: int, size: int,
                 batch: int, seed: int):
        import torch

        from medlens.data.augment import channel_stats
        from medlens.data.loader import BatchLoader
        from medlens.data.registry import Task
        from medlens.data.source import TensorSplit
        from medlens.engine.losses import create_loss
        from medlens.engine.module import ClassifierModule
        from medlens.models import create_model, get_model_spec

        torch.manual_seed(seed)
        cfg = medlens_config("synthetic", name, batch, seed, 1)
        model = create_model(name, in_channels=1, num_classes=2, spatial_dims=spatial_dims, input_size=size)
        if get_model_spec(name).channels_last and cfg.model.channels_last:  # as medlens.engine.train does
            model = model.to(memory_format=torch.channels_last if spatial_dims == 2 else torch.channels_last_3d)
        loss = create_loss("ce", task=Task.BINARY, num_classes=2)
        self.module = ClassifierModule(model, loss, config=cfg, task=Task.BINARY,
                                       normalisation=channel_stats(images), spatial_dims=spatial_dims, num_classes=2)
        self.module.generator.manual_seed(seed)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        split = TensorSplit(images, labels, np.arange(len(labels)).astype(str))
        self.loader = BatchLoader(split, batch_size=batch, shuffle=True, seed=seed)
        self.n_images = len(labels)

    def run(self, seed: int = 0) -> dict:
        import torch.nn.functional as F

        with Clock() as clock:
            for images, labels in self.loader:
                self.optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(self.module.model(self.module.prepare(images, train=True)), labels)
                loss.backward()
                self.optimizer.step()
        return {"images_per_s": self.n_images / clock.seconds, **clock.record()}


def reference_transforms(spatial_dims: int, mean: float, std: float):
    """Per-sample MONAI counterparts of the ``standard`` preset, as a notebook would write them.

    Flip left-right p=0.5; rotation uniform in +-10 degrees (one angle per plane in 3D); zoom
    uniform in [0.9, 1.1]; contrast +-10% around the image mean; brightness +-0.1; clip to
    [0, 1]; normalise. The preset's 5% translation has no per-sample transform of its own in
    MONAI (it would take a third resampling, RandAffine); it is left out, which only makes the
    reference cheaper.
    """
    from monai.transforms import (Compose, NormalizeIntensity, RandFlip, RandRotate, RandScaleIntensityFixedMean,
                                  RandShiftIntensity, RandZoom, ThresholdIntensity)

    angle = math.radians(10.0)
    rotate = (RandRotate(range_x=angle, prob=1.0, padding_mode="zeros") if spatial_dims == 2 else
              RandRotate(range_x=angle, range_y=angle, range_z=angle, prob=1.0, padding_mode="zeros"))
    return Compose([
        RandFlip(prob=0.5, spatial_axis=spatial_dims - 1),  # last axis of (C, *spatial) minus C: W
        rotate,
        RandZoom(min_zoom=0.9, max_zoom=1.1, prob=1.0),
        RandScaleIntensityFixedMean(factors=0.1, prob=1.0),  # contrast around the mean
        RandShiftIntensity(offsets=0.1, prob=1.0),           # brightness
        ThresholdIntensity(threshold=0.0, above=True, cval=0.0),
        ThresholdIntensity(threshold=1.0, above=False, cval=1.0),
        NormalizeIntensity(subtrahend=mean, divisor=std),
    ])


class ReferenceDataset:
    """Map-style dataset: one uint8 image -> float [0, 1] -> per-sample transforms -> plain tensor."""

    def __new__(cls, images: np.ndarray, labels: np.ndarray, transform):
        import torch

        class NotebookDataset(torch.utils.data.Dataset):
            def __len__(self):
                return len(labels)

            def __getitem__(self, index):
                image = torch.from_numpy(images[index]).float() / 255.0  # (1, *spatial)
                image = transform(image)
                # MONAI returns a MetaTensor; hand a plain tensor on so that the model step is
                # the same as in the other two ways (MetaTensor batches would slow it down).
                image = image.as_tensor() if hasattr(image, "as_tensor") else image
                return image, int(labels[index])

        return NotebookDataset()


class Reference:
    """The plain loop: DataLoader(batch_size=B, shuffle=True, num_workers=0) -> model step."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str, spatial_dims: int, size: int,
                 batch: int, seed: int):
        import torch

        from medlens.models import create_model

        mean = float(images.mean() / 255.0)
        std = float(images.std() / 255.0)
        self.dataset = ReferenceDataset(images, labels, reference_transforms(spatial_dims, mean, std))
        generator = torch.Generator().manual_seed(seed)
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=batch, shuffle=True, num_workers=0,
                                                  generator=generator)
        torch.manual_seed(seed)
        self.model = create_model(name, in_channels=1, num_classes=2, spatial_dims=spatial_dims, input_size=size)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.n_images = len(labels)

    def run(self, seed: int = 0) -> dict:
        with Clock() as clock:
            for images, labels in self.loader:
                train_step(self.model, self.optimizer, images, labels)
        return {"images_per_s": self.n_images / clock.seconds, **clock.record()}

    def warm_up(self, batch: int) -> None:
        import torch

        images, labels = zip(*(self.dataset[i] for i in range(batch)), strict=True)
        train_step(self.model, self.optimizer, torch.stack(images), torch.tensor(labels))


# --------------------------------------------------------------------------- where the time goes

def prepare_ms_per_image(images: np.ndarray, spatial_dims: int, batch: int, repeats: int) -> float:
    """``ClassifierModule.prepare(train=True)`` alone (uint8 -> float, standard augmentation, normalise)."""
    import torch

    from medlens.data.augment import Normalisation
    from medlens.data.registry import Task
    from medlens.engine.losses import create_loss
    from medlens.engine.module import ClassifierModule

    cfg = medlens_config("synthetic", "cnn_small", batch, 0, 1)
    module = ClassifierModule(torch.nn.Identity(), create_loss("ce", task=Task.BINARY, num_classes=2), config=cfg,
                              task=Task.BINARY, normalisation=Normalisation((0.5,), (0.29,)),
                              spatial_dims=spatial_dims, num_classes=2)
    uint8 = torch.from_numpy(images[:batch])
    module.prepare(uint8, train=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        module.prepare(uint8, train=True)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / len(uint8)


def reference_transform_ms_per_image(dataset, count: int) -> float:
    """The reference dataset's ``__getitem__`` alone (uint8 -> float + per-sample transforms)."""
    t0 = time.perf_counter()
    for index in range(count):
        dataset[index % len(dataset)]
    return 1000 * (time.perf_counter() - t0) / count


# --------------------------------------------------------------------------- one configuration

def quiet_summary(runs: dict[str, list[dict]], vs_bare: list[float], vs_reference: list[float]) -> dict:
    """The rounds in which other processes used at most ``QUIET_OTHERS_SHARE`` of the cores in
    every one of the three measurements, and the ratio medians over those rounds alone."""
    quiet = [i for i in range(len(vs_bare))
             if all(_clock(runs[way][i])["others_share"] <= QUIET_OTHERS_SHARE for way in WAYS)]
    out: dict = {"threshold_others_share": QUIET_OTHERS_SHARE, "rounds": quiet}
    if quiet:
        out["medlens_vs_bare"] = statistics.median(vs_bare[i] for i in quiet)
        out["medlens_vs_reference"] = statistics.median(vs_reference[i] for i in quiet)
        out["images_per_s"] = {way: statistics.median(runs[way][i]["images_per_s"] for i in quiet) for way in WAYS}
    return out


def bench_config(name: str, spatial_dims: int, size: int, args, work: Path) -> dict:
    batch = args.batch_size or batch_size_for(name, spatial_dims, size)
    label = f"{name} {spatial_dims}D {size} px, batch {batch}"
    t_start = time.perf_counter()
    bare = BareStep(name, spatial_dims, size, batch, seed=0)
    bare.step_seconds(budget_s=0.0, most=1)  # warm-up: the first step pays for allocations and kernel choice
    step_s = bare.step_seconds()
    steps = max(1, min(args.max_steps, math.ceil(args.target_seconds / step_s)))
    n_images = steps * batch
    images, labels = synthetic_images(n_images, spatial_dims, size, seed=1)
    folder = work / f"{name}-{spatial_dims}d{size}"
    folder.mkdir(parents=True)
    if args.medlens_path == "lightning":
        medlens = MedlensLightning(write_npz(folder / "synthetic.npz", images, labels), folder, name, batch, n_images)
    else:
        medlens = MedlensManual(images, labels, name, spatial_dims, size, batch, seed=0)
        medlens.run()  # warm-up epoch
    reference = Reference(images, labels, name, spatial_dims, size, batch, seed=0)
    reference.warm_up(batch)
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {steps} step(s) of {step_s:.2f} s per measurement, "
          f"{args.rounds} round(s)", file=sys.stderr, flush=True)

    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for round_index in range(args.rounds):
        runs["bare"].append(bare.run(steps))
        runs["medlens"].append(medlens.run(seed=round_index))
        runs["reference"].append(reference.run())
        line = ", ".join(f"{way} {runs[way][-1]['images_per_s']:,.1f}" for way in WAYS)
        print(f"    round {round_index + 1}: {line} img/s", file=sys.stderr, flush=True)

    ips = {way: [r["images_per_s"] for r in runs[way]] for way in WAYS}
    vs_bare = [m / b for m, b in zip(ips["medlens"], ips["bare"], strict=True)]
    vs_reference = [m / r for m, r in zip(ips["medlens"], ips["reference"], strict=True)]
    costs = {
        "model_step_ms_per_image": 1000 / statistics.median(ips["bare"]),
        "medlens_prepare_ms_per_image": prepare_ms_per_image(images, spatial_dims, batch, repeats=args.prepare_repeats),
        "reference_transform_ms_per_image": reference_transform_ms_per_image(reference.dataset,
                                                                             min(n_images, args.transform_samples)),
    }
    return {
        "model": name, "spatial_dims": spatial_dims, "size": size, "batch_size": batch, "steps": steps,
        "images_per_measurement": n_images, "warm_bare_step_s": step_s,
        "bare_channels_last": bare.channels_last, "medlens_path": args.medlens_path,
        "images_per_s": {way: summary(values) for way, values in ips.items()},
        "medlens_vs_bare": summary(vs_bare), "medlens_vs_reference": summary(vs_reference),
        "meets_vs_bare": statistics.median(vs_bare) >= TARGET_VS_BARE,
        "meets_vs_reference": statistics.median(vs_reference) >= TARGET_VS_REFERENCE,
        "costs": costs,
        "cpu_share_median": {way: statistics.median(_clock(r)["cpu_share"] for r in runs[way]) for way in WAYS},
        "others_share_median": {way: statistics.median(_clock(r)["others_share"] for r in runs[way]) for way in WAYS},
        "quiet": quiet_summary(runs, vs_bare, vs_reference),
        "raw": runs, "seconds": time.perf_counter() - t_start,
    }


# --------------------------------------------------------------------------- report

def _clock(run: dict) -> dict:
    """The clock record of one measurement (for the Lightning path: of the whole ``train()`` call)."""
    return run.get("train_call", run)


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else (f"{value:,.1f}" if value >= 10 else f"{value:,.2f}")


def quiet_cell(result: dict) -> str:
    quiet, rounds = result["quiet"], len(result["medlens_vs_bare"]["runs"])
    if not quiet["rounds"]:
        return f"0 of {rounds}"
    return (f"{len(quiet['rounds'])} of {rounds}: {quiet['medlens_vs_bare']:.2f}, "
            f"{quiet['medlens_vs_reference']:.2f}")


def markdown(results: list[dict]) -> str:
    yes = {True: "yes", False: "**MISS**"}
    lines = ["| model | dims | px | batch × steps | bare img/s | medlens img/s | reference img/s | "
             f"medlens/bare (≥ {TARGET_VS_BARE:.2f}) | met | medlens/reference (≥ {TARGET_VS_REFERENCE:g}) | met | "
             "quiet rounds: medlens/bare, medlens/reference |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['spatial_dims']}D | {r['size']} | | ERROR: {r['error']} | | | | | | | |")
            continue
        ips = r["images_per_s"]
        lines.append(
            f"| {r['model']} | {r['spatial_dims']}D | {r['size']} | {r['batch_size']} × {r['steps']} | "
            f"{_num(ips['bare']['median'])} | {_num(ips['medlens']['median'])} | {_num(ips['reference']['median'])} | "
            f"{r['medlens_vs_bare']['median']:.2f} | {yes[r['meets_vs_bare']]} | "
            f"{r['medlens_vs_reference']['median']:.2f} | {yes[r['meets_vs_reference']]} | {quiet_cell(r)} |")
    return "\n".join(lines)


def markdown_costs(results: list[dict]) -> str:
    lines = ["| model | dims | px | model step ms/img | medlens prepare (uint8 → augmented, normalised) ms/img | "
             "reference per-sample transforms ms/img | transforms / model step | "
             "others' CPU share bare / medlens / reference |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            continue
        c = r["costs"]
        lines.append(
            f"| {r['model']} | {r['spatial_dims']}D | {r['size']} | {_num(c['model_step_ms_per_image'])} | "
            f"{c['medlens_prepare_ms_per_image']:.3f} | {_num(c['reference_transform_ms_per_image'])} | "
            f"{c['reference_transform_ms_per_image'] / c['model_step_ms_per_image']:.2f} | "
            f"{' / '.join(f'{v:.2f}' for v in r['others_share_median'].values())} |")
    return "\n".join(lines)


def versions() -> dict:
    out = {"numpy": np.__version__}
    for name in ("torch", "lightning", "monai", "medlens"):
        try:
            out[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 (informational only)
            out[name] = f"unavailable ({type(exc).__name__})"
    return out


def cpu_info() -> dict:
    """``lscpu`` model name, family and model (the machine record of data_loading has /proc/cpuinfo's)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    keep = ("Model name", "CPU family", "Model", "CPU(s)", "Thread(s) per core", "Hypervisor vendor")
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())
            if key in keep}


# --------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 round, short measurements, cnn_small and resnet_compact at 2d28 and 3d28")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per configuration (default 5; 1 with --quick)")
    p.add_argument("--target-seconds", type=float, default=None,
                   help="length of one bare measurement, sets the steps (default 2.0; 0.3 with --quick)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="upper bound on steps per measurement (default 20; 3 with --quick)")
    p.add_argument("--models", default=None, help="comma list of models (default: all registered)")
    p.add_argument("--configs", default=None,
                   help=f"comma list of {','.join(CONFIGS)} (default: all; 2d28,3d28 with --quick)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="one batch size for every configuration (default: per model)")
    p.add_argument("--medlens-path", choices=("lightning", "manual"), default="lightning",
                   help="lightning: medlens.engine.train.train (default); manual: BatchLoader -> prepare -> step")
    p.add_argument("--prepare-repeats", type=int, default=20, help="timed prepare() calls per configuration")
    p.add_argument("--transform-samples", type=int, default=None,
                   help="reference __getitem__ calls timed alone per configuration (default 64; 16 with --quick)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON result file (default benchmarks/results/train_speed-<date>[-quick].json)")
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (1 if q else 5)
    args.target_seconds = args.target_seconds or (0.3 if q else 2.0)
    args.max_steps = args.max_steps or (3 if q else 20)
    args.transform_samples = args.transform_samples or (16 if q else 64)
    if args.rounds < 1 or args.max_steps < 1 or args.target_seconds <= 0:
        p.error("--rounds and --max-steps must be >= 1 and --target-seconds > 0")
    configs = args.configs or ("2d28,3d28" if q else ",".join(CONFIGS))
    args.configs = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        p.error(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    from medlens.models import list_models

    valid = list_models()
    args.models = ([m.strip() for m in args.models.split(",") if m.strip()] if args.models else
                   (["cnn_small", "resnet_compact"] if q else valid))
    unknown = sorted(set(args.models) - set(valid))
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from medlens.data.augment import AugmentConfig
    from medlens.models import get_model_spec

    started = _dt.datetime.now().astimezone()
    work = Path(tempfile.mkdtemp(prefix="medlens-train-speed-"))
    os.environ["MEDLENS_CACHE"] = str(work / "cache")
    record: dict = {
        "benchmark": "train_speed", "date": started.date().isoformat(),
        "started": started.isoformat(timespec="seconds"),
        "command": shlex.join([
            os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable,
            os.path.relpath(Path(__file__).resolve(), REPO), *(argv if argv is not None else sys.argv[1:])]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "targets": {"medlens_vs_bare": TARGET_VS_BARE, "medlens_vs_reference": TARGET_VS_REFERENCE},
        "augment": {"preset": AUGMENT_PRESET, "config": dataclasses.asdict(AugmentConfig.preset(AUGMENT_PRESET))},
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "machine": {**machine_info(), "lscpu": cpu_info()}, "git": git_info(), "results": [],
    }
    failed = False
    t0 = time.perf_counter()
    try:
        for name in args.models:
            dims = get_model_spec(name).spatial_dims
            for key in args.configs:
                spatial_dims, size = CONFIGS[key]
                if spatial_dims not in dims:
                    continue
                try:
                    record["results"].append(bench_config(name, spatial_dims, size, args, work))
                except Exception as exc:  # noqa: BLE001 (record it, run the other configurations)
                    failed = True
                    record["results"].append({"model": name, "spatial_dims": spatial_dims, "size": size,
                                              "error": f"{type(exc).__name__}: {exc}"})
                    print(f"    ERROR {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        os.environ.pop("MEDLENS_CACHE", None)
        shutil.rmtree(work, ignore_errors=True)
    record["total_seconds"] = time.perf_counter() - t0
    record["versions"] = versions()
    record["machine"]["loadavg_end"] = list(os.getloadavg())
    record["finished"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    record["temp_dir_removed"] = not work.exists()
    out = args.out or HERE / "results" / f"train_speed-{record['date']}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, default=str) + "\n")
    m = record["machine"]
    print(f"## Training speed ({record['date']}, {m['nproc']} CPUs {m['cpu_model']}, torch "
          f"{record['versions']['torch']}, {record['torch_threads']} threads, medlens path: {args.medlens_path}, "
          f"{args.rounds} round(s), {record['total_seconds'] / 60:.1f} min)\n")
    print(markdown(record["results"]))
    print("\nWhere the time goes (medians; prepare and transforms timed alone):\n")
    print(markdown_costs(record["results"]))
    print(f"\nresult written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
