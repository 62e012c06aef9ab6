"""``--recipe auto --budget 5m``: one set of rules that fits a run to a dataset and a time budget.

The rules read only the dataset's properties (training images, image size, channels, 2D/3D,
classes, task, imbalance) and a throughput probe of a few real training steps on this machine;
there is no per-dataset constant. Each rule is a ``choose_*`` function that returns its choice
and the reason for it; :func:`plan_auto` composes them. What they decide, and why, is written to
``auto.json`` in the run folder and printed:

* loss (:func:`choose_loss`): BCE for multi-label tasks, else cross-entropy; balanced class
  weights (:func:`choose_class_weights`) when the largest training class has more than 1.5x the
  images of the smallest, and then prior correction (:func:`choose_prior_correction`,
  ``data.correct_priors``): the saved model's logits get the log training priors added back, so
  its probabilities are calibrated and its argmax is the accuracy-optimal decision for data
  drawn like the training split (the official test splits are), while training itself stays
  balanced. Without it the weighted models of the 2026-12-01 bench predicted minority classes
  too often: adding the priors afterwards raised validation ACC in 7 of their 9 runs
  (benchmarks/prior_shift.py; test ACC +.09 AdrenalMNIST3D, +.05 RetinaMNIST, -.04 BreastMNIST);
* augmentation (:func:`choose_augmentation`): stronger the fewer training images there are
  (``standard`` below 2,000, ``light`` below 20,000, none above), because small sets overfit first;
* batch size (:func:`choose_batch_size`): 64 below 5,000 training images (more steps per epoch),
  else 128;
* model (:func:`choose_model`): the largest of a ladder of CPU-friendly candidates (2D: the
  two-conv CNN, then the compact ResNet at widths 16, 24 and 32; 3D: the compact ResNet at widths
  8, 16, 24) that, trained alone, still gets the epochs the data needs in the budget
  (``EPOCH_IMAGES`` / training images, between 8 and 100 epochs: small sets need many passes,
  large ones few; with ``--members K`` given, in a K-th of it);
* members (:func:`choose_members`): when the budget trains the chosen model for at least two
  members' worth of epochs (a member gets twice the epochs the data needs, at most 50, plus a few
  seconds of set-up), it trains that many members of an ensemble (up to 5, each with its own
  seed; their probabilities are averaged) rather than more epochs of one model: in the 100-epoch
  runs of the 2026-11-22 and 2026-12-01 benches, 28 of the 36 best validation epochs of the four
  datasets under 2,000 images came before epoch 50 (RetinaMNIST and COVID-19 at 3-21), so
  epochs past 50 buy less than another member (so members of a small set may train fewer
  epochs than one model alone would);
* epochs (:func:`choose_epochs`): what the chosen model affords in the budget per member, capped
  at 100; AdamW 3e-3 with a cosine schedule and a short warm-up (the ``fast`` recipe's optimiser,
  :func:`choose_optimizer`);
* a hard stop (:func:`choose_hard_stop`, ``train.max_seconds``) at the training share of the
  budget, so a slow machine or a wrong estimate costs epochs, never the budget.

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
LADDER_3D = (("resnet_compact", {"width": 8, "stem": "standard"}),
             ("resnet_compact", {"width": 16, "stem": "standard"}),
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


def choose_loss(profile: DatasetProfile) -> tuple[str, str]:
    """The loss rule: BCE for a multi-label task, else cross-entropy.

    Args:
        profile: the dataset's properties; only ``task`` is read.

    Returns:
        ``(loss, reason)``: ``"bce"`` or ``"ce"`` (the ``optim.loss`` override) and why.

    Example:
        >>> choose_loss(DatasetProfile(500, 200, 28, 1, 2, 2, Task.BINARY, 1.0))
        ('ce', 'loss ce: a binary task')
    """
    if profile.task.is_multilabel:
        return "bce", "loss bce: a multi-label task (one sigmoid per label)"
    return "ce", f"loss ce: a {profile.task.value} task"


def choose_class_weights(profile: DatasetProfile) -> tuple[str, str | None]:
    """The class-weight rule: balanced when the largest class has over ``IMBALANCE_WEIGHTS``x the smallest's images.

    Multi-label tasks are never weighted.

    Args:
        profile: the dataset's properties; ``task`` and ``imbalance`` are read.

    Returns:
        ``(class_weights, reason)``: ``"balanced"`` and why, or ``"none"`` and None (a plan
        does not mention balancing it does not do).

    Example:
        >>> choose_class_weights(DatasetProfile(500, 200, 28, 1, 2, 2, Task.BINARY, 3.0))[0]
        'balanced'
    """
    if not profile.task.is_multilabel and profile.imbalance > IMBALANCE_WEIGHTS:
        return "balanced", (f"class weights balanced: the largest class has {profile.imbalance:.1f}x the images of "
                            f"the smallest (> {IMBALANCE_WEIGHTS})")
    return "none", None


def choose_prior_correction(class_weights: str) -> tuple[bool, str | None]:
    """The prior-correction rule: after balanced training, add the training priors back.

    Args:
        class_weights: what :func:`choose_class_weights` chose (``"balanced"`` or ``"none"``).

    Returns:
        ``(correct_priors, reason)``: True and why when the classes are trained balanced, else
        ``(False, None)``. The reason continues the class-weight reason (it starts with "then").

    Example:
        >>> choose_prior_correction("none")
        (False, None)
    """
    if class_weights == "balanced":
        return True, ("then prior correction: the saved model's logits get the log training priors back, so its "
                      "argmax is the accuracy-optimal decision for data drawn like the training split")
    return False, None


def choose_augmentation(profile: DatasetProfile) -> tuple[str, str]:
    """The augmentation rule: the fewer training images, the stronger the preset.

    Args:
        profile: the dataset's properties; only ``n_train`` is read.

    Returns:
        ``(preset, reason)``: a name for :meth:`~medlens.data.augment.AugmentConfig.preset`
        (``"standard"`` below ``SMALL_DATA`` images, ``"light"`` below ``MEDIUM_DATA``, else
        ``"none"``) and why.

    Example:
        >>> choose_augmentation(DatasetProfile(8000, 2000, 28, 1, 2, 2, Task.BINARY, 1.0))[0]
        'light'
    """
    preset = "standard" if profile.n_train < SMALL_DATA else "light" if profile.n_train < MEDIUM_DATA else "none"
    return preset, (f"augmentation {preset}: {profile.n_train:,} training images "
                    f"(standard below {SMALL_DATA:,}, light below {MEDIUM_DATA:,}, none above)")


def choose_batch_size(profile: DatasetProfile) -> tuple[int, str]:
    """The batch-size rule: 64 below ``BIG_BATCH_DATA`` training images (more steps per epoch), else 128.

    Args:
        profile: the dataset's properties; only ``n_train`` is read.

    Returns:
        ``(batch_size, reason)``.

    Example:
        >>> choose_batch_size(DatasetProfile(500, 200, 28, 1, 2, 2, Task.BINARY, 1.0))
        (64, 'batch 64: under 5,000 training images')
    """
    batch = 64 if profile.n_train < BIG_BATCH_DATA else 128
    return batch, f"batch {batch}: {'under' if batch == 64 else 'at least'} {BIG_BATCH_DATA:,} training images"


def choose_hard_stop(budget_s: float, spent_s: float = 0.0) -> tuple[float, str]:
    """The hard-stop rule: training gets ``TRAIN_SHARE`` of the budget left after ``spent_s``.

    Args:
        budget_s: the whole run's budget in seconds.
        spent_s: seconds already spent (the probe); at least 1 s of budget is taken to be left.

    Returns:
        ``(train_s, reason)``: the training seconds of all members together, unrounded (every
        other rule divides them; ``train.max_seconds`` rounds them to 0.1 s), and the reason's
        wording, which ends the epochs reason.

    Example:
        >>> choose_hard_stop(300, 20)
        (224.0, 'hard stop after 224 s in all')
    """
    train_s = max(budget_s - spent_s, 1.0) * TRAIN_SHARE
    return train_s, f"hard stop after {train_s:.0f} s in all"


def member_seconds(train_s: float, members: int) -> float:
    """Training seconds of each of ``members`` ensemble members.

    Args:
        train_s: training seconds of the whole run (:func:`choose_hard_stop`).
        members: the ensemble size, 1 or more.

    Returns:
        All of ``train_s`` for one model; for several, an equal share less the
        ``MEMBER_OVERHEAD_S`` each member spends on set-up, scoring and saving (may be negative
        when the budget is that short).
    """
    return train_s if members == 1 else train_s / members - MEMBER_OVERHEAD_S


@dataclass(frozen=True)
class ModelChoice:
    """The ladder rung :func:`choose_model` chose.

    Attributes:
        name: the model's registry name.
        kwargs: its :func:`~medlens.models.create_model` keyword arguments.
        label: :func:`candidate_label` of the two.
        rate: its measured training images per second.
        epochs: epochs its training time buys (unrounded); at least the needed epochs when it fits.
        fits: whether it gets the epochs the data needs (:func:`needed_epochs`).
        throughput: img/s of every rung probed, by label, rounded to 0.1 (``auto.json``'s throughput).
    """

    name: str
    kwargs: dict
    label: str
    rate: float
    epochs: float
    fits: bool
    throughput: dict[str, float]


def choose_model(profile: DatasetProfile, throughput: Callable[[str, dict, int], float], *, batch_size: int,
                 train_s: float, members: int | None = None) -> tuple[ModelChoice, str]:
    """The model rule: the largest rung of the ladder whose training time buys the epochs the data needs.

    The ladder is ``LADDER_3D`` for volumes, else ``LADDER_2D``. The model's training time is all
    of ``train_s`` when the rules choose the members (they are bought with what is left over),
    and each member's share when the user fixed them.

    Args:
        profile: the dataset's properties.
        throughput: ``(model name, kwargs, batch size) -> training images/s``; called cheapest
            rung first, and not past the first rung that no longer fits.
        batch_size: the batch the rungs are probed at (:func:`choose_batch_size`).
        train_s: training seconds of the whole run (:func:`choose_hard_stop`).
        members: the user's ensemble size, or None when the rules choose it.

    Returns:
        ``(choice, reason)``: the cheapest rung when none fits, and the reason says so.

    Example:
        >>> profile = DatasetProfile(500, 200, 28, 1, 2, 2, Task.BINARY, 1.0)
        >>> choose_model(profile, lambda name, kwargs, batch: 1000.0, batch_size=64, train_s=100)[0].label
        'resnet_compact(width=32)'
    """
    need = needed_epochs(profile.n_train)
    ladder = LADDER_3D if profile.spatial_dims == 3 else LADDER_2D
    model_s = train_s if members is None or members == 1 else max(member_seconds(train_s, members), 1.0)
    measured: dict[str, float] = {}
    chosen = None
    for name, kwargs in ladder:
        rate = throughput(name, kwargs, batch_size)
        label = candidate_label(name, kwargs)
        measured[label] = round(rate, 1)
        affordable = model_s * rate / profile.n_train
        if chosen is None or affordable >= need:
            chosen = name, kwargs, label, rate
        if affordable < need:
            break
    name, kwargs, label, rate = chosen
    epochs = model_s * rate / profile.n_train
    choice = ModelChoice(name=name, kwargs=dict(kwargs), label=label, rate=rate, epochs=epochs, fits=epochs >= need,
                         throughput=measured)
    if choice.fits:
        return choice, (f"model {label}: the largest candidate that trains the {need} epochs "
                        f"{profile.n_train:,} images need in {model_s:.0f} s at the measured {rate:,.0f} img/s")
    return choice, (f"model {label}: the cheapest candidate; even it affords only {epochs:.0f} of the {need} "
                    f"epochs this data needs in {model_s:.0f} s")


def choose_members(profile: DatasetProfile, train_s: float, rate: float, *,
                   members: int | None = None) -> tuple[int, str]:
    """The members rule: as many members of twice the needed epochs (at most 50) as the time buys, up to 5.

    Args:
        profile: the dataset's properties; only ``n_train`` is read.
        train_s: training seconds of the whole run (:func:`choose_hard_stop`).
        rate: the chosen model's training images per second (:attr:`ModelChoice.rate`).
        members: the user's ensemble size (``--members``, or 1 for a multi-device run); kept as given.

    Returns:
        ``(members, reason)``: between 1 and ``MAX_MEMBERS`` when the rule chooses.

    Example:
        >>> choose_members(DatasetProfile(500, 200, 28, 1, 2, 2, Task.BINARY, 1.0), 240.0, 500.0)[0]
        4
    """
    if members is not None:
        return members, (f"members {members}: as asked (--members, or one model for a multi-device run); the budget "
                         f"is shared among them")
    need = needed_epochs(profile.n_train)
    full = train_s * rate / profile.n_train  # epochs of the model alone
    member_epochs = min(MEMBER_MAX_EPOCHS, 2 * need)
    member_s = member_epochs * profile.n_train / rate + MEMBER_OVERHEAD_S
    count = int(min(MAX_MEMBERS, max(1, math.floor(train_s / member_s))))
    if count > 1:
        return count, (f"members {count}: the {train_s:.0f} s of training buy {full:.0f} epochs of this model, "
                       f"room for {count} members of {member_epochs} epochs each (twice the {need} this data "
                       f"needs, capped at {MEMBER_MAX_EPOCHS}) plus {MEMBER_OVERHEAD_S:.0f} s set-up each; an "
                       f"ensemble (max {MAX_MEMBERS}) averages their probabilities")
    return 1, (f"members 1: the {train_s:.0f} s of training buy {full:.0f} epochs of this model, less than "
               f"two members of {member_epochs} epochs (twice the {need} this data needs, capped at "
               f"{MEMBER_MAX_EPOCHS}) plus {MEMBER_OVERHEAD_S:.0f} s set-up each: one model gets them all")


def choose_epochs(profile: DatasetProfile, train_s: float, rate: float, members: int) -> tuple[int, str]:
    """The epochs rule: what each member's share of the training time affords, between 1 and ``MAX_EPOCHS``.

    Args:
        profile: the dataset's properties; only ``n_train`` is read.
        train_s: training seconds of the whole run (:func:`choose_hard_stop`).
        rate: the chosen model's training images per second.
        members: the ensemble size (:func:`choose_members`).

    Returns:
        ``(epochs, reason)``: epochs of each member and why.

    Example:
        >>> choose_epochs(DatasetProfile(500, 200, 28, 1, 2, 2, Task.BINARY, 1.0), 240.0, 500.0, 4)
        (55, 'epochs 55 per member: 55 s of training at 500 img/s (cap 100)')
    """
    per_member_s = member_seconds(train_s, members)
    epochs = int(max(1, min(MAX_EPOCHS, math.floor(per_member_s * rate / profile.n_train))))
    return epochs, (f"epochs {epochs}{' per member' if members > 1 else ''}: {per_member_s:.0f} s of training at "
                    f"{rate:,.0f} img/s (cap {MAX_EPOCHS})")


def choose_optimizer(epochs: int) -> tuple[dict, str]:
    """The optimiser: the ``fast`` recipe's AdamW 3e-3 with a cosine schedule, warmed up for 2 of 10+ epochs.

    Args:
        epochs: each member's epochs (:func:`choose_epochs`); under 10 get no warm-up.

    Returns:
        ``(optim overrides, reason)``; the reason continues the epochs reason.

    Example:
        >>> choose_optimizer(55)[1]
        'AdamW 3e-3, cosine with 2 warm-up epochs'
    """
    warmup = 2 if epochs >= 10 else 0
    return ({"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": warmup},
            f"AdamW 3e-3, cosine with {warmup} warm-up epochs")


def plan_auto(profile: DatasetProfile, budget_s: float, throughput: Callable[[str, dict, int], float], *,
              spent_s: float = 0.0, members: int | None = None) -> AutoPlan:
    """Apply the rules (module docstring, one ``choose_*`` function each) to a dataset and a budget.

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
    from medlens.data.augment import AugmentConfig  # imports torch: not at module import

    loss, loss_reason = choose_loss(profile)
    class_weights, weights_reason = choose_class_weights(profile)
    correct_priors, priors_reason = choose_prior_correction(class_weights)
    preset, augment_reason = choose_augmentation(profile)
    batch_size, batch_reason = choose_batch_size(profile)
    train_s, stop_reason = choose_hard_stop(budget_s, spent_s)
    model, model_reason = choose_model(profile, throughput, batch_size=batch_size, train_s=train_s, members=members)
    member_count, members_reason = choose_members(profile, train_s, model.rate, members=members)
    epochs, epochs_reason = choose_epochs(profile, train_s, model.rate, member_count)
    optim, optim_reason = choose_optimizer(epochs)
    overrides = {
        "data": {"class_weights": class_weights, "correct_priors": correct_priors, "batch_size": batch_size},
        "model": {"name": model.name, "kwargs": dict(model.kwargs)},
        "augment": asdict(AugmentConfig.preset(preset)),
        "optim": {"loss": loss, **optim},
        "train": {"epochs": epochs, "max_seconds": round(train_s, 1), "monitor": "val_auc", "members": member_count},
    }
    # One line per decision, as printed and written to auto.json: the prior correction follows
    # from the class weights, the optimiser's warm-up and the hard stop from the epochs.
    balancing = "; ".join(reason for reason in (weights_reason, priors_reason) if reason)
    reasons = [loss_reason, *([balancing] if balancing else []), augment_reason, batch_reason, model_reason,
               members_reason, f"{epochs_reason}; {optim_reason}; {stop_reason}"]
    # Each member trains, then scores val + test forward-only (taken as 3x the training rate).
    estimate = spent_s + member_count * (epochs * profile.n_train / model.rate + profile.n_eval / (3 * model.rate)) \
        + (member_count - 1) * MEMBER_OVERHEAD_S
    return AutoPlan(overrides=overrides, reasons=reasons, budget_s=budget_s, estimate_s=round(estimate, 1),
                    throughput=model.throughput, fits=model.fits)


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
            plan.reasons.append("no prior correction: your options give "
                                f"{'loss ' + loss if balanced else 'no balancing'}, which it does not fit")
            say(f"auto: {plan.reasons[-1]}")
    return config, plan
