"""``--recipe auto --budget 5m``: one set of rules that fits a run to a dataset and a time budget.

The rules read only the dataset's properties (training images, image size, channels, 2D/3D,
classes, task, imbalance) and a throughput probe of a few real training steps on this machine;
there is no per-dataset constant. What they decide, and why, is written to ``auto.json`` in the
run folder and printed:

* loss: BCE for multi-label tasks, else cross-entropy; balanced class weights when the largest
  training class has more than 1.5x the images of the smallest, and then prior correction
  (``data.correct_priors``): the saved model's logits get the log training priors added back, so
  its probabilities are calibrated and its argmax is the accuracy-optimal decision for data
  drawn like the training split (the official test splits are), while training itself stays
  balanced. Without it the weighted models of the 2026-12-01 bench predicted minority classes
  too often: adding the priors afterwards raised validation ACC in 7 of their 9 runs
  (benchmarks/prior_shift.py; test ACC +.09 AdrenalMNIST3D, +.05 RetinaMNIST, -.04 BreastMNIST);
* augmentation: stronger the fewer training images there are (``standard`` below 2,000,
  ``light`` below 20,000, none above), because small sets overfit first;
* batch size 64 below 5,000 training images (more steps per epoch), else 128;
* model: the largest of a ladder of CPU-friendly candidates (2D: the two-conv CNN, then the
  compact ResNet at widths 16, 24 and 32; 3D: the compact ResNet at widths 8, 16, 24) that,
  trained alone, still gets the epochs the data needs in the budget (``EPOCH_IMAGES`` / training
  images, between 8 and 100 epochs: small sets need many passes, large ones few; with
  ``--members K`` given, in a K-th of it);
* members: when the budget trains the chosen model for at least two members' worth of epochs
  (a member gets twice the epochs the data needs, at most 50, plus a few seconds of set-up),
  it trains that many members of an ensemble (up to 5, each with its own seed; their
  probabilities are averaged) rather than more epochs of one model: in the 100-epoch runs of
  the 2026-11-22 and 2026-12-01 benches, 28 of the 36 best validation epochs of the four
  datasets under 2,000 images came before epoch 50 (RetinaMNIST and COVID-19 at 3-21), so
  epochs past 50 buy less than another member (so members of a small set may train fewer
  epochs than one model alone would);
* epochs: what the chosen model affords in the budget per member, capped at 100; AdamW 3e-3
  with a cosine schedule and a short warm-up (the ``fast`` recipe's optimiser);
* a hard stop (``train.max_seconds``) at the training share of the budget, so a slow machine
  or a wrong estimate costs epochs, never the budget.

The budget covers everything the run does: the probe, data loading, training, and the final
evaluation on val and test.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from medlens.data.registry import Task

# (model, kwargs) ladders, cheapest first.
LADDER_2D = (("cnn_small", {}), ("resnet_compact", {"width": 16}), ("resnet_compact", {"width": 24}),
             ("resnet_compact", {"width": 32}))
LADDER_3D = (("resnet_compact", {"width": 8, "stem": "standard"}), ("resnet_compact", {"width": 16, "stem": "standard"}),
             ("resnet_compact", {"width": 24, "stem": "standard"}))
EPOCH_IMAGES = 60_000  # images a run should see at least: epochs needed = this / training images
MIN_EPOCHS, MAX_EPOCHS = 8, 100
FALLBACK_SIZE = 28  # px; image folders drop to it when their default size does not fit the budget
TRAIN_SHARE = 0.80  # of the budget left after the probe; the rest covers loading and evaluation
IMBALANCE_WEIGHTS = 1.5
SMALL_DATA, MEDIUM_DATA, BIG_BATCH_DATA = 2_000, 20_000, 5_000
MAX_MEMBERS = 5
MEMBER_MAX_EPOCHS = 50  # an ensemble member's epochs: twice the need, at most this
MEMBER_OVERHEAD_S = 5.0  # per ensemble member: trainer set-up, its final val + test scoring, saving


@dataclass(frozen=True)
class DatasetProfile:
    """What the rules may look at.

    Attributes:
        n_train: training images.
        n_eval: validation + test images (evaluated at the end, inside the budget).
        size: image edge in pixels.
        channels: 1 or 3.
        spatial_dims: 2 or 3.
        n_classes: classes (labels for multi-label).
        task: the :class:`Task`.
        imbalance: largest / smallest training class count (1 for multi-label).
    """

    n_train: int
    n_eval: int
    size: int
    channels: int
    spatial_dims: int
    n_classes: int
    task: Task
    imbalance: float


@dataclass(frozen=True)
class AutoPlan:
    """The chosen config overrides, the reason for each choice, and the time estimate."""

    overrides: dict
    reasons: list[str]
    budget_s: float
    estimate_s: float
    throughput: dict
    fits: bool = True  # the chosen model gets the epochs the data needs

    def to_dict(self) -> dict:
        return asdict(self)


def parse_budget(text: str | float) -> float:
    """``"5m"``, ``"90s"``, ``"1h"``, ``"1h30m"`` or a number of seconds -> seconds.

    Raises:
        ValueError: anything else, or a budget under 10 seconds.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text))
        if not match or not any(match.groups()):
            raise ValueError(f"--budget must look like 5m, 90s, 1h or 1h30m; got {text!r}")
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = 3600 * h + 60 * m + s
    if not math.isfinite(seconds) or seconds < 10:
        raise ValueError(f"--budget must be at least 10 seconds; got {text!r}")
    return seconds


def profile_source(source) -> DatasetProfile:
    """The :class:`DatasetProfile` of a resolved :class:`~medlens.data.source.Source`."""
    train = source.splits["train"]
    task = source.info.task
    counts = train.class_counts(source.info.n_classes)
    imbalance = 1.0 if task.is_multilabel else float(counts.max() / max(counts[counts > 0].min(), 1))
    return DatasetProfile(n_train=len(train), n_eval=len(source.splits["val"]) + len(source.splits["test"]),
                          size=source.size, channels=int(train.images.shape[1]), spatial_dims=train.images.ndim - 2,
                          n_classes=source.info.n_classes, task=task, imbalance=imbalance)


def probe_throughput(name: str, kwargs: dict, profile: DatasetProfile, batch_size: int, *, steps: int = 6,
                     warmup: int = 2) -> float:
    """Training images per second of one model here: timed forward + backward + AdamW steps.

    Random input of the dataset's shape, channels-last as the engine runs it; the first
    ``warmup`` steps (allocation, kernel selection) are not timed, and the rate comes from the
    median step time, so a short burst of other work on a shared machine (seen here: two
    processes with two threads each on two cores make single steps 5-30x slower) does not
    decide the plan.
    """
    import torch

    from medlens.models import create_model, get_model_spec

    torch.manual_seed(0)
    model = create_model(name, in_channels=profile.channels, num_classes=max(profile.n_classes, 2),
                         spatial_dims=profile.spatial_dims, input_size=profile.size, **kwargs)
    x = torch.rand(batch_size, profile.channels, *([profile.size] * profile.spatial_dims))
    if get_model_spec(name).channels_last:
        fmt = torch.channels_last if profile.spatial_dims == 2 else torch.channels_last_3d
        model, x = model.to(memory_format=fmt), x.contiguous(memory_format=fmt)
    y = torch.randint(0, max(profile.n_classes, 2), (batch_size,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def candidate_label(name: str, kwargs: dict) -> str:
    """``resnet_compact(width=16)``: how a ladder rung is named in reasons and ``auto.json``."""
    return name + (f"({', '.join(f'{k}={v}' for k, v in kwargs.items())})" if kwargs else "")


def needed_epochs(n_train: int) -> int:
    """Epochs a dataset of ``n_train`` images needs: ``EPOCH_IMAGES / n_train`` in [8, 100]."""
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(EPOCH_IMAGES / max(n_train, 1)))))


def plan_auto(profile: DatasetProfile, budget_s: float, throughput: Callable[[str, dict, int], float], *,
              spent_s: float = 0.0, members: int | None = None) -> AutoPlan:
    """Apply the rules (module docstring) to a dataset and a budget.

    Args:
        profile: the dataset's properties.
        budget_s: the whole run's budget in seconds.
        throughput: ``(model name, kwargs, batch size) -> training images/s`` (the probe, or a
            stand-in in tests); called cheapest model first, and not past the first model that no
            longer fits.
        spent_s: seconds already spent (the probe itself), taken off the budget.
        members: the user's ensemble size (``--members``; 1 also for multi-device runs, which
            train one model); None lets the rule choose.

    Returns:
        :class:`AutoPlan` whose ``overrides`` go into :func:`~medlens.engine.config.build_config`.
    """
    reasons = []
    o: dict = {"data": {}, "model": {}, "augment": {}, "optim": {}, "train": {}}
    task = profile.task
    if task.is_multilabel:
        o["optim"]["loss"] = "bce"
        reasons.append("loss bce: a multi-label task (one sigmoid per label)")
    else:
        o["optim"]["loss"] = "ce"
        reasons.append(f"loss ce: a {task.value} task")
    if not task.is_multilabel and profile.imbalance > IMBALANCE_WEIGHTS:
        o["data"]["class_weights"] = "balanced"
        o["data"]["correct_priors"] = True
        reasons.append(f"class weights balanced: the largest class has {profile.imbalance:.1f}x the images of the "
                       f"smallest (> {IMBALANCE_WEIGHTS}); then prior correction: the saved model's logits get the "
                       f"log training priors back, so its argmax is the accuracy-optimal decision for data drawn "
                       f"like the training split")
    else:
        o["data"]["class_weights"] = "none"
        o["data"]["correct_priors"] = False
    from medlens.data.augment import AugmentConfig

    preset = "standard" if profile.n_train < SMALL_DATA else "light" if profile.n_train < MEDIUM_DATA else "none"
    o["augment"] = asdict(AugmentConfig.preset(preset))
    reasons.append(f"augmentation {preset}: {profile.n_train:,} training images "
                   f"(standard below {SMALL_DATA:,}, light below {MEDIUM_DATA:,}, none above)")
    batch = 64 if profile.n_train < BIG_BATCH_DATA else 128
    o["data"]["batch_size"] = batch
    reasons.append(f"batch {batch}: {'under' if batch == 64 else 'at least'} {BIG_BATCH_DATA:,} training images")

    need = needed_epochs(profile.n_train)
    left = max(budget_s - spent_s, 1.0)
    train_s = left * TRAIN_SHARE
    ladder = LADDER_3D if profile.spatial_dims == 3 else LADDER_2D

    def share(k: int) -> float:
        """Training seconds of each of ``k`` members (one model: all of it)."""
        return train_s if k == 1 else train_s / k - MEMBER_OVERHEAD_S

    # The time one model gets: all of it when the rules choose the members (they are bought with
    # what is left over), its share when the user fixed them.
    model_s = train_s if members is None or members == 1 else max(share(members), 1.0)
    measured: dict[str, float] = {}
    chosen, chosen_rate = None, None
    for name, kwargs in ladder:
        rate = throughput(name, kwargs, batch)
        label = candidate_label(name, kwargs)
        measured[label] = round(rate, 1)
        affordable = model_s * rate / profile.n_train
        if chosen is None or affordable >= need:
            chosen, chosen_rate, chosen_label = (name, kwargs), rate, label
        if affordable < need:
            break
    full = model_s * chosen_rate / profile.n_train  # epochs of the chosen model its training time buys
    member_epochs = min(MEMBER_MAX_EPOCHS, 2 * need)
    member_s = member_epochs * profile.n_train / chosen_rate + MEMBER_OVERHEAD_S
    chosen_members = members is None
    if chosen_members:
        members = int(min(MAX_MEMBERS, max(1, math.floor(train_s / member_s))))
    per_member_s = share(members)
    epochs = int(max(1, min(MAX_EPOCHS, math.floor(per_member_s * chosen_rate / profile.n_train))))
    o["model"] = {"name": chosen[0], "kwargs": dict(chosen[1])}
    reasons.append(f"model {chosen_label}: the largest candidate that trains the {need} epochs "
                   f"{profile.n_train:,} images need in {model_s:.0f} s at the measured {chosen_rate:,.0f} img/s"
                   if full >= need else
                   f"model {chosen_label}: the cheapest candidate; even it affords only {full:.0f} of the {need} "
                   f"epochs this data needs in {model_s:.0f} s")
    warmup = 2 if epochs >= 10 else 0
    o["optim"].update({"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine",
                       "warmup_epochs": warmup})
    o["train"].update({"epochs": epochs, "max_seconds": round(train_s, 1), "monitor": "val_auc", "members": members})
    if not chosen_members:
        reasons.append(f"members {members}: as asked (--members, or one model for a multi-device run); the budget is "
                       f"shared among them")
    elif members > 1:
        reasons.append(f"members {members}: the {train_s:.0f} s of training buy {full:.0f} epochs of this model, room "
                       f"for {members} members of {member_epochs} epochs each (twice the {need} this data needs, "
                       f"capped at {MEMBER_MAX_EPOCHS}) plus {MEMBER_OVERHEAD_S:.0f} s set-up each; an ensemble (max {MAX_MEMBERS}) "
                       f"averages their probabilities")
    else:
        reasons.append(f"members 1: the {train_s:.0f} s of training buy {full:.0f} epochs of this model, less than "
                       f"two members of {member_epochs} epochs (twice the {need} this data needs, capped at "
                       f"{MEMBER_MAX_EPOCHS}) plus {MEMBER_OVERHEAD_S:.0f} s set-up each: one model gets them all")
    reasons.append(f"epochs {epochs}{' per member' if members > 1 else ''}: {per_member_s:.0f} s of training at "
                   f"{chosen_rate:,.0f} img/s (cap {MAX_EPOCHS}); AdamW 3e-3, cosine with {warmup} warm-up epochs; "
                   f"hard stop after {train_s:.0f} s in all")
    estimate = spent_s + members * (epochs * profile.n_train / chosen_rate + profile.n_eval / (3 * chosen_rate)) \
        + (members - 1) * MEMBER_OVERHEAD_S
    return AutoPlan(overrides=o, reasons=reasons, budget_s=budget_s, estimate_s=round(estimate, 1),
                    throughput=measured, fits=full >= need)


def auto_overrides(data_overrides: dict, budget: str | float, *, say=print, members: int | None = None) -> AutoPlan:
    """Resolve the data, probe this machine, and plan; ``data_overrides`` is the config's data section.

    Image folders whose size the user did not fix are first planned at their default size; when
    even the cheapest model cannot train the epochs the data needs there, the plan drops to
    ``FALLBACK_SIZE`` px (4-5x less compute per image) and says so.
    """
    from dataclasses import replace

    from medlens.data.spec import parse_spec
    from medlens.engine.config import DataConfig, resolve_data

    start = time.perf_counter()
    budget_s = parse_budget(budget)
    source = resolve_data(DataConfig(**data_overrides))
    profile = profile_source(source)
    say(f"auto: {profile.n_train:,} training images, {profile.size} px, {profile.channels} channel(s), "
        f"{profile.spatial_dims}D, {profile.n_classes} classes, {profile.task.value}, imbalance "
        f"{profile.imbalance:.1f}; budget {budget_s:.0f} s; probing throughput")
    sizes = [profile.size]
    spec = parse_spec(data_overrides["spec"])
    if spec.source.decodes_images and spec.size is None and data_overrides.get("size") is None \
            and profile.size > FALLBACK_SIZE and profile.spatial_dims == 2:
        sizes.append(FALLBACK_SIZE)
    cache: dict[tuple, float] = {}
    for size in sizes:
        sized = replace(profile, size=size)

        def rate(name: str, kwargs: dict, batch: int, sized=sized) -> float:
            key = (sized.size, candidate_label(name, kwargs), batch)
            if key not in cache:
                cache[key] = probe_throughput(name, kwargs, sized, batch)
            return cache[key]

        # The probe's own time is known only after it ran: plan once to probe, then again with it.
        plan_auto(sized, budget_s, rate, spent_s=time.perf_counter() - start, members=members)
        plan = plan_auto(sized, budget_s, rate, spent_s=time.perf_counter() - start, members=members)
        if plan.fits or size == sizes[-1]:
            break
    if size != profile.size:
        plan.overrides["data"]["size"] = size
        plan.reasons.insert(0, f"size {size} px: at {profile.size} px even the cheapest model could not train the "
                               f"{needed_epochs(profile.n_train)} epochs this data needs in the budget")
    for reason in plan.reasons:
        say(f"auto: {reason}")
    return plan


def build_train_config(overrides: dict | None = None, *, recipe: str = "default", budget: str | float | None = None,
                       file: str | None = None, say=print):
    """The run config of ``medlens train`` / ``cv`` / ``bench``: a recipe, or the auto plan, plus overrides.

    The one place where ``--recipe auto`` is composed, so a notebook gets exactly what the CLI does::

        config, plan = build_train_config({"data": {"spec": "retinamnist"}}, recipe="auto", budget="5m")
        medlens.workflows.train(config, "runs/retina", plan=plan)

    Args:
        overrides: nested config overrides (``{"optim": {"lr": 0.01}}``): the flags; win over all.
        recipe: a name of :data:`medlens.engine.config.RECIPES`, or ``auto`` (then ``budget`` is needed).
        budget: ``--recipe auto``'s whole-run time budget (``"5m"``, ``"90s"``, seconds).
        file: a YAML config file (``--config``).
        say: where the plan's reasons are printed (one line each).

    Returns:
        ``(RunConfig, AutoPlan or None)``.

    Raises:
        ValueError: a budget without ``recipe auto`` or the reverse, or any bad config value.
    """
    from dataclasses import replace

    from medlens.engine.config import build_config

    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    for section in ("data", "model", "augment", "optim", "train"):
        overrides.setdefault(section, {})
    if recipe != "auto":
        if budget is not None:
            raise ValueError("--budget goes with --recipe auto")
        return build_config(overrides, recipe=recipe, file=file), None
    if budget is None:
        raise ValueError("--recipe auto needs --budget, e.g. --budget 5m")
    # Prior correction is checked against the balancing the plan chooses, so it waits for the plan.
    asked = {k: v for k, v in overrides["data"].items() if k != "correct_priors"}
    base = build_config({**overrides, "data": asked}, file=file)
    data = dict(base.data.__dict__)
    # --members fixes the ensemble size; a multi-device run trains one model; else the rules choose.
    given = overrides["train"].get("members")
    members = given if given is not None else None if base.train.one_process else 1
    plan = auto_overrides(data, budget, say=say, members=members)
    planned = plan.overrides["data"].get("correct_priors", False)
    plan.overrides["data"]["correct_priors"] = False
    config = build_config(overrides, recipe="default", file=file, plan=plan.overrides)
    if planned and "correct_priors" not in overrides["data"]:
        # The rules pair balanced class weights with prior correction; the user's own options
        # (class weights off, another loss) win, and then there is nothing to correct.
        balanced = config.data.class_weights == "balanced" or config.data.oversample
        loss = plan.overrides["optim"]["loss"] if config.optim.loss == "auto" else config.optim.loss
        if balanced and loss == "ce":
            config = replace(config, data=replace(config.data, correct_priors=True))
            plan.overrides["data"]["correct_priors"] = True
        else:
            plan.reasons.append(f"no prior correction: your options give {'loss ' + loss if balanced else 'no balancing'}"
                                f", which it does not fit")
            say(f"auto: {plan.reasons[-1]}")
    return config, plan
