"""``train(config, out)``: one training run, from a dataset spec to a finished run folder.

What the run folder holds (``config.yaml``, ``splits.json``, ``history.csv``, ``train.log``,
``checkpoints/{best,last,resume}``, ``metrics.json``) is documented once, in
:mod:`medlens.engine.run_folder`, whose :class:`~medlens.engine.run_folder.RunFolder` names every path.

An ensemble (``train.members`` K > 1) is K such runs under ``members/``: a workflow above this
one (:mod:`medlens.workflows.ensemble`); ``medlens.workflows.train`` takes either.

With ``data.correct_priors`` the best and last checkpoints hold the prior-corrected classifier
bias; the resume state, ``history.csv`` and the best-epoch choice are those of the model in
training (uncorrected; the binary AUC is the same either way), and ``metrics.json`` scores the
corrected best checkpoint.

Example:
    >>> from medlens.engine.config import build_config
    >>> cfg = build_config({"data": {"spec": "breastmnist"}, "model": {"name": "cnn_small"},
    ...                     "train": {"epochs": 2}})
    >>> result = train(cfg, "runs/example")                       # doctest: +SKIP
    >>> result.metrics["test"]["auc"]                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from medlens._io import write_json
from medlens.engine.config import RunConfig, load_run_config, write_yaml
from medlens.engine.run_folder import RUN_METRICS_SCHEMA_VERSION, RunFolder

log = logging.getLogger("medlens")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run at a safe point; its resume state is that of the last finished epoch.

    A ``KeyboardInterrupt`` so that nothing on the way up takes it for an error; the CLI exits
    with :attr:`exit_code` (128 + the signal: 130 for SIGINT, 143 for SIGTERM), as a shell reports
    a process ended by that signal, so a scheduler sees the run did not finish.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum
        self.message = message


class _StopRequested(Exception):
    """Raised inside the Lightning loop at the first batch boundary after a signal."""


@contextlib.contextmanager
def _signals_stop_training(received: dict):
    """SIGINT and SIGTERM set ``received["signum"]`` instead of ending the process (main thread only).

    A second signal of either kind ends the process the usual way (the user insists).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if "signum" in received:
            for sig, old in previous.items():
                signal.signal(sig, old)
            signal.raise_signal(signum)
            return
        received["signum"] = signum

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _signal_stop_callback(received: dict):
    """A Lightning callback that stops the loop at the first batch boundary after a signal.

    Stopping between batches, rather than finishing the epoch, keeps a kill by the scheduler's
    grace period from landing mid-save; the resume state on disk is the last finished epoch's
    (saved whole at every epoch end), from which ``--resume`` continues bit-identically.
    """
    from lightning.pytorch.callbacks import Callback

    class SignalStop(Callback):
        def _check(self) -> None:
            if "signum" in received:
                raise _StopRequested()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._check()

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
            self._check()

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._check()

    return SignalStop()


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run folder.
        metrics: the content of ``metrics.json``.
        best_checkpoint: ``run_dir/checkpoints/best.safetensors``.
    """

    run_dir: Path
    metrics: dict
    best_checkpoint: Path


class _RunLogHandler(logging.FileHandler):
    """``train.log``'s handler: a failed write (a full disk) is one warning line, once, not a traceback per line.

    logging's default prints ``--- Logging error ---`` and a traceback for every record it
    cannot write; the run itself goes on (its checkpoints fail in one line if the disk stays full).
    """

    _reported = False

    def handleError(self, record: logging.LogRecord) -> None:
        if self._reported:
            return
        self._reported = True
        error = sys.exc_info()[1]
        reason = getattr(error, "strerror", None) or type(error).__name__
        print(f"medlens: warning: cannot write {self.baseFilename} ({reason}); it misses lines from here on",
              file=sys.stderr, flush=True)


def _setup_log(run_dir: Path, rank: int) -> logging.Handler | None:
    if rank != 0:
        return None
    handler = _RunLogHandler(RunFolder(run_dir).log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def say(message: str, rank: int = 0) -> None:
    """Log to train.log, and print to stderr on the main process."""
    log.info(message)
    if rank == 0:
        print(message, file=sys.stderr, flush=True)


def _global_rank() -> int:
    """0 in the process the user started; > 0 in processes a DDP launcher started (they set these)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", "0")) * 1000 + int(os.environ.get("LOCAL_RANK", "0"))


def train(config: RunConfig, out: str | os.PathLike, *, source=None, on_epoch=None,
          tracking_tags: dict | None = None) -> TrainResult:
    """Train one new model into ``out`` (which must not hold a run yet).

    Args:
        config: the run's config; ``train.members`` must be 1 (an ensemble is a workflow:
            :func:`medlens.workflows.train` takes both).
        out: the run folder to create.
        source: the already-resolved data of ``config.data`` (None: resolved here).
        on_epoch: called in every process after each epoch's validation as
            ``on_epoch(epoch, metrics) -> bool`` (``epoch`` 0-based, ``metrics`` the logged
            values, ``val_auc`` ...); True stops training after this epoch, which still
            finishes the run normally (a search's pruner stops poor trials so). None: no hook.
        tracking_tags: extra MLflow tags of the new run (``mlflow.parentRunId`` nests it under
            another run). None: none.

    Raises:
        FileExistsError: ``out`` already holds a run (continue it with :func:`resume`).
        ValueError: a bad option (unknown model, loss that does not fit the task, 3D model on
            2D data, ``train.members`` > 1, ...), named in the message.
    """
    run_dir = Path(out)
    if config.train.members > 1:
        raise ValueError(f"train.members {config.train.members} is an ensemble of several runs: train it with "
                         "medlens.workflows.train (or medlens train --members K)")
    check_new_run(run_dir)
    return _run(config, run_dir, resume=False, source=source, on_epoch=on_epoch, tracking_tags=tracking_tags)


def check_new_run(run_dir: Path) -> None:
    """Refuse to start a run (single or ensemble) in a folder that already holds one.

    Raises:
        FileExistsError: ``run_dir`` holds a run (checked on the main process only: DDP workers
            start inside the folder the main process just made).
    """
    if RunFolder(run_dir).is_run and _global_rank() == 0:
        raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                              "or choose another --out")


def resume(run_dir: str | os.PathLike, *, source=None) -> TrainResult:
    """Continue an interrupted run from its last completed epoch.

    Optimizer, schedule, loop counters and history come back from ``checkpoints/resume``;
    batch order, augmentation and dropout are reseeded from ``(seed, epoch)``, so the run ends
    with the same weights as one that was never interrupted. A run that never finished an epoch
    starts again from the beginning with its saved config.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder (no ``config.yaml``).
        ValueError: ``run_dir`` is an ensemble (resume it with :func:`medlens.workflows.resume`).
    """
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    if config.train.members > 1:
        raise ValueError(f"{run_dir} is an ensemble of {config.train.members} runs: resume it with "
                         "medlens.workflows.resume (or medlens train --resume)")
    if not RunFolder(run_dir).resume_state.is_file():
        # Stopped before its first epoch ended (in pre-training, say): the same seed from the start
        # gives exactly the run that was interrupted.
        print(f"{run_dir} has no finished epoch yet: starting it again from the beginning", file=sys.stderr)
        return _run(config, run_dir, resume=False, source=source)
    return _run(config, run_dir, resume=True, source=source)


@contextlib.contextmanager
def run_log(run_dir: Path, rank: int = 0, *, created: bool | None = None):
    """``train.log`` of ``run_dir`` for the duration, Lightning kept quiet; a run folder that this
    call created (or ``created``: the caller did) and that still holds no run when an error leaves
    is removed (a bad option or missing data leaves nothing behind)."""
    created = not run_dir.exists() if created is None else created
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _setup_log(run_dir, rank)
    try:
        with _quiet_lightning():
            yield
    except BaseException:
        if created and rank == 0 and not RunFolder(run_dir).is_run:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
                handler = None
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _run(config: RunConfig, run_dir: Path, *, resume: bool, source=None, on_epoch=None,
         tracking_tags: dict | None = None) -> TrainResult:
    rank = _global_rank()
    created = not run_dir.exists()
    # The main process holds the run's lock: a second trainer of this run is refused at once, and
    # before run_log, so that its refusal never removes the folder the first one is starting.
    with RunFolder(run_dir).training_lock() if rank == 0 else contextlib.nullcontext():
        with run_log(run_dir, rank, created=created):
            return _train_in(config, run_dir, resume=resume, rank=rank, source=source, on_epoch=on_epoch,
                             tracking_tags=tracking_tags)


@contextlib.contextmanager
def _quiet_lightning():
    """Hide Lightning's start-up chatter (GPU/TPU lines, tips) and warnings that do not apply."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero",
                                                    "lightning.fabric.utilities.rank_zero")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # Every process computes validation metrics on the whole split: nothing to synchronise.
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
        # medlens iterates its own BatchLoader, which batches in the main process on purpose.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def _train_in(config: RunConfig, run_dir: Path, *, resume: bool, rank: int, source=None, on_epoch=None,
              tracking_tags: dict | None = None) -> TrainResult:
    """One run, step by step: data, model and loss, the run folder, the card, the Lightning fit, the scores."""
    import lightning.pytorch as pl

    from medlens.engine.callbacks import EpochProgress, RunRecorder
    from medlens.engine.config import default_batch_size, resolve_data
    from medlens.engine.module import ClassifierModule
    from medlens.engine.tracking import Tracker, default_tracking_uri
    from medlens.engine.transfer import initialise, input_normalisation

    cfg = config
    pl.seed_everything(cfg.train.seed, verbose=False)
    source = source if source is not None else resolve_data(cfg.data)
    if source.metadata is not None:  # a table's (or grouped folder's) split: what it came to, per split
        for line in source.split_summary():
            say(f"split {line}", rank)
    for warning in source.warnings:
        say(f"warning: {warning}", rank)
    if source.bad_files:
        say(f"warning: skipped {len(source.bad_files)} unreadable file(s) (data.skip_bad): "
            + "; ".join(f"{name} ({reason})" for name, reason in source.bad_files), rank)
    train_split = source.splits["train"]
    spatial_dims = train_split.images.ndim - 2
    if cfg.data.batch_size is None:  # recorded in config.yaml as the number used
        cfg = replace(cfg, data=replace(cfg.data, batch_size=default_batch_size(spatial_dims)))
    if cfg.data.root is None and not resume:
        # The data root this run read ($MEDLENS_DATA or the default), recorded: `medlens evaluate RUN`
        # in a new shell without $MEDLENS_DATA then finds the same files instead of downloading them.
        from medlens.data.download import data_root

        cfg = replace(cfg, data=replace(cfg.data, root=str(data_root(None))))
    model, loss, loss_name, class_weights, logit_shift = model_and_loss(cfg, source)
    if not resume:
        _check_memory(cfg, model, source)
    _announce(cfg, source, loss_name, class_weights, logit_shift, rank)
    if not resume:  # the starting weights, before the folder is written: one that does not fit leaves nothing
        initialise(model, cfg.model, in_channels=int(train_split.images.shape[1]), spatial_dims=spatial_dims,
                   class_names=list(source.info.class_names), say=lambda m: say(m, rank))
    normalisation = input_normalisation(cfg.model, train_split.images,
                                        own_checkpoint=RunFolder(run_dir).last if resume else None)
    start_or_check(cfg, run_dir, source, resume=resume, write=rank == 0)
    card = _model_card(cfg, source, normalisation)
    model = _prepare_model(model, cfg, source, normalisation, run_dir, resume=resume, rank=rank)

    module = ClassifierModule(model, loss, config=cfg, task=source.info.task, normalisation=normalisation,
                              spatial_dims=spatial_dims, num_classes=source.info.n_classes)
    datamodule = _DataModule(source, cfg, oversample=cfg.data.oversample, num_classes=source.info.n_classes)
    uri = cfg.train.tracking_uri or default_tracking_uri(run_dir)
    tracker = Tracker(uri, run_dir, cfg.to_dict(), tags=tracking_tags) if rank == 0 else Tracker("none", run_dir, {})
    progress = EpochProgress() if cfg.train.progress and rank == 0 else None
    recorder = RunRecorder(run_dir, card, cfg.train.monitor, cfg.train.monitor_mode, tracker, logit_shift,
                           patience=cfg.train.early_stop, progress=progress,
                           say=lambda message: print(message, file=sys.stderr, flush=True))
    received: dict = {}
    trainer = _trainer(cfg, run_dir, recorder, progress, on_epoch=on_epoch,
                       extra_callbacks=[_signal_stop_callback(received)])
    folder = RunFolder(run_dir)
    status = "FAILED"
    try:
        with _signals_stop_training(received):
            try:
                trainer.fit(module, datamodule=datamodule, ckpt_path=str(folder.resume_state) if resume else None)
            except BaseException:
                if "signum" not in received:
                    raise
                # Ours (_StopRequested) or Lightning's own SIGTERMException (a SystemExit that
                # would exit 0): either way the run stopped at a batch boundary.
        if "signum" in received:
            status = "KILLED"
            raise _interrupted(run_dir, received["signum"], len(recorder.rows), rank)
        status = "FINISHED"
    finally:
        if rank == 0 and status != "FINISHED":
            tracker.finish([], status=status)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, {}, folder.best)
    metrics = _final_metrics(run_dir, source, source.info.task, recorder, spatial_dims, cfg)
    if metrics.get("diverged"):
        say(f"warning: {run_dir} is no better than chance: {metrics['diverged']}", rank)
    _fit_ood(run_dir, source, rank)
    tracker.log_metrics({f"{split}_{k}": v for split in ("val", "test") for k, v in metrics[split].items()},
                        step=metrics["epochs_run"])
    tracker.finish([folder.metrics, folder.config, folder.history, folder.best_card])
    say(f"done in {metrics['seconds']:.0f} s: best epoch {metrics['best_epoch']}, "
        f"val ACC {metrics['val']['acc']:.3f} AUC {metrics['val']['auc']:.3f}, "
        f"test ACC {metrics['test']['acc']:.3f} AUC {metrics['test']['auc']:.3f} -> {run_dir}", rank)
    return TrainResult(run_dir, metrics, folder.best)


def _check_memory(cfg: RunConfig, model, source) -> None:
    """Refuse a run whose memory estimate is above ``train.memory_share`` of the device's memory."""
    from medlens.engine.memory import check_memory, estimate_memory, machine_memory

    if cfg.train.memory_share <= 0:
        return
    device = "cuda" if torch.cuda.is_available() and cfg.train.devices != 0 else "cpu"
    estimate = estimate_memory(model, source, batch_size=cfg.data.batch_size, optimizer=cfg.optim.optimizer,
                               device=device)
    log.info("memory estimate: %s", estimate.describe())
    check_memory(estimate, total=machine_memory(device), share=cfg.train.memory_share,
                 batch_size=cfg.data.batch_size, size=source.size, spatial_dims=source.splits["train"].images.ndim - 2)


def _interrupted(run_dir: Path, signum: int, epochs_done: int, rank: int) -> TrainingInterrupted:
    """The exception (and the line said) for a run stopped by ``signum`` after ``epochs_done`` epochs."""
    folder = RunFolder(run_dir)
    resumable = folder.ensemble.path if folder.ensemble is not None else run_dir  # an ensemble resumes whole
    message = f"interrupted after epoch {epochs_done}; continue with `medlens train --resume {resumable}`"
    say(f"{signal.Signals(signum).name}: {message}", rank)
    return TrainingInterrupted(signum, message)


def _announce(cfg: RunConfig, source, loss_name: str, class_weights, logit_shift, rank: int) -> None:
    """The run's first lines: data, model, loss and optimiser; then balancing and prior correction."""
    info, train_split = source.info, source.splits["train"]
    say(f"medlens train: {source.spec} ({info.task.value}, {info.n_classes} classes, "
        f"{int(train_split.images.shape[1])}x{source.size}px {train_split.images.ndim - 2}D; train {len(train_split)}, "
        f"val {len(source.splits['val'])}, test {len(source.splits['test'])}) -> {cfg.model.name}, "
        f"loss {loss_name}, {cfg.optim.optimizer} lr {cfg.optim.lr}, {cfg.train.epochs} epochs", rank)
    if cfg.data.oversample:
        say("oversampling: training batches drawn with probability 1/(images in the class), "
            "so every class is seen equally often", rank)
        if cfg.data.class_weights == "balanced":
            say("warning: class weights balanced and oversampling both balance the classes, so together they "
                "balance them twice (rare classes now outweigh common ones); keep one of the two", rank)
    if class_weights is not None:
        listed = ", ".join(f"{name} {w:.3f}" for name, w in zip(info.class_names, class_weights.tolist(), strict=True))
        say(f"class weights (balanced): {listed}", rank)
    if logit_shift is not None:
        listed = ", ".join(f"{name} {s:+.3f}" for name, s in zip(info.class_names, logit_shift.tolist(), strict=True))
        say(f"prior correction: the saved models' logits get the log training priors added ({listed}), so "
            f"their probabilities are for the training class mix and argmax maximises accuracy there", rank)


def _model_card(cfg: RunConfig, source, normalisation):
    """The card every checkpoint of the run carries: architecture, task, classes, input, data, config."""
    from medlens.engine.checkpoint import ModelCard
    from medlens.models import get_model_spec

    images = source.splits["train"].images
    return ModelCard(
        # The options after defaults (efficientnet_lite0's min_size, say), so the card alone says how it was built.
        architecture=cfg.model.name, model_kwargs={**get_model_spec(cfg.model.name).default_options,
                                                   **cfg.model.kwargs}, task=source.info.task.value,
        class_names=list(source.info.class_names), in_channels=int(images.shape[1]), spatial_dims=images.ndim - 2,
        input_size=source.size, normalisation=normalisation.to_dict(),
        dataset={"spec": source.spec, "fingerprint": source.fingerprint, "split_method": source.split_method,
                 "sizes": {k: len(v) for k, v in source.splits.items()},
                 "class_counts": {k: v.tolist() for k, v in source.class_counts().items()},
                 "warnings": list(source.warnings),
                 "skipped_files": [name for name, _ in source.bad_files]},
        config=cfg.to_dict(), versions=_versions(),
    )


def _prepare_model(model, cfg: RunConfig, source, normalisation, run_dir: Path, *, resume: bool, rank: int):
    """Autoencoder pre-training (new runs only), then the memory format and ``torch.compile`` asked for."""
    from medlens.models import get_model_spec

    images = source.splits["train"].images
    spatial_dims = images.ndim - 2
    if cfg.model.pretrain == "autoencoder" and not resume:
        from medlens.engine.pretrain import pretrain_autoencoder

        pretrain_autoencoder(model, source.splits["train"], cfg, normalisation, spatial_dims, int(images.shape[1]),
                             source.size, run_dir, say=lambda m: say(m, rank))
    if get_model_spec(cfg.model.name).channels_last and cfg.model.channels_last:
        # Measured here: channels-last is 1.1-1.5x faster in 2D training, 1.1-1.3x in 3D.
        model = model.to(memory_format=torch.channels_last if spatial_dims == 2 else torch.channels_last_3d)
    if cfg.model.compile:
        model = torch.compile(model)
    return model


def _trainer(cfg: RunConfig, run_dir: Path, recorder, progress=None, *, on_epoch=None,
             extra_callbacks: list | None = None):
    """The Lightning trainer of the run: the recorder (which also stops early), medlens's progress display,
    the per-epoch hook and ``extra_callbacks`` (run before the recorder).

    Lightning's progress bar is always off: :class:`~medlens.engine.callbacks.EpochProgress` is the
    one display (a bar per epoch on a terminal, a plain line per epoch elsewhere).
    """
    import lightning.pytorch as pl

    from medlens.engine.checkpoint import safetensors_checkpoint_io

    callbacks = [*(extra_callbacks or []), recorder] + ([progress] if progress is not None else [])
    if on_epoch is not None:
        from medlens.engine.callbacks import EpochHook

        callbacks.append(EpochHook(on_epoch))
    return pl.Trainer(
        accelerator="auto", devices=cfg.train.devices, strategy=cfg.train.strategy,
        num_nodes=cfg.train.num_nodes, precision=cfg.train.precision, max_epochs=cfg.train.epochs,
        max_time=None if cfg.train.max_seconds is None else timedelta(seconds=cfg.train.max_seconds),
        logger=False, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, gradient_clip_val=cfg.optim.grad_clip,
        plugins=[safetensors_checkpoint_io()], default_root_dir=str(run_dir), use_distributed_sampler=False,
    )


def start_or_check(cfg: RunConfig, run_dir: Path, source, *, resume: bool, write: bool) -> None:
    """A new run writes ``config.yaml`` and ``splits.json``; a resumed one checks its data did not change."""
    folder = RunFolder(run_dir)
    if resume:
        started_on = json.loads(folder.splits.read_text()).get("fingerprint")
        if started_on != source.fingerprint:
            raise ValueError(f"the data of {cfg.data.spec} changed since {run_dir} started (fingerprint "
                             f"{source.fingerprint[:12]} vs {str(started_on)[:12]}); start a new run instead")
    elif write:
        write_yaml(cfg, folder.config)
        source.save_splits(folder.splits)


def model_and_loss(cfg: RunConfig, source):
    """The untrained model and the loss of a run: every bad model, option or loss fails here, first."""
    from medlens.engine.checkpoint import classifier_bias_name
    from medlens.engine.losses import create_loss, default_loss
    from medlens.models import create_model

    if cfg.model.name == "ensemble":
        raise ValueError("model 'ensemble' is assembled from trained members, not trained itself; train K members "
                         "of one model with --members K (e.g. --model resnet_compact --members 3)")
    train_split = source.splits["train"]
    task, num_classes = source.info.task, source.info.n_classes
    model = create_model(cfg.model.name, in_channels=int(train_split.images.shape[1]), num_classes=num_classes,
                         spatial_dims=train_split.images.ndim - 2, input_size=source.size, **cfg.model.kwargs)
    loss_name = default_loss(task) if cfg.optim.loss == "auto" else cfg.optim.loss
    if cfg.augment.mixup > 0 and loss_name == "aucm":
        raise ValueError("augment.mixup does not work with loss 'aucm' (it needs hard labels); "
                         "set mixup to 0 or use ce/bce/focal")
    class_weights = _class_weights(cfg, train_split.labels, num_classes)
    loss_kwargs = {}
    if loss_name == "focal":
        loss_kwargs["gamma"] = cfg.optim.focal_gamma
    if loss_name == "aucm":
        loss_kwargs["margin"] = cfg.optim.aucm_margin
        loss_kwargs["imratio"] = _positive_ratio(train_split.labels)
    loss = create_loss(loss_name, task=task, num_classes=num_classes, class_weights=class_weights, **loss_kwargs)
    logit_shift = None
    if cfg.data.correct_priors:
        if loss_name != "ce":
            raise ValueError(f"data.correct_priors maps softmax probabilities back to the training priors: it needs "
                             f"loss ce; got {loss_name!r}")
        classifier_bias_name(model, cfg.model.name)  # a model without one fails here, before training
        # Balanced training fits p(k|x) / prior_k (up to a constant); adding log prior_k to the
        # logits gives back p(k|x). Class weights and oversampling together divide by prior_k
        # twice (each alone balances), so the shift doubles. An empty class counts 1, not log 0.
        counts = np.maximum(train_split.class_counts(num_classes), 1).astype(np.float64)
        times = (cfg.data.class_weights == "balanced") + bool(cfg.data.oversample)
        logit_shift = torch.tensor(times * np.log(counts / counts.sum()), dtype=torch.float32)
    return model, loss, loss_name, class_weights, logit_shift


def _versions() -> dict:
    import lightning

    from medlens import __version__

    return {"medlens": __version__, "torch": torch.__version__, "lightning": lightning.__version__}


def _positive_ratio(labels: np.ndarray) -> float | list[float]:
    """Fraction of positives (AUCM's ``imratio``): binary class 1, or one per label."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return [float(v) for v in labels.mean(axis=0)]
    return float((labels == 1).mean())


def _class_weights(cfg: RunConfig, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    if cfg.data.class_weights == "none":
        return None
    from medlens.data.balance import class_weights

    return torch.tensor(class_weights(labels, num_classes), dtype=torch.float32)


def score(model: torch.nn.Module, card, source, task) -> dict:
    """Val and test ACC/AUC (official definitions) of a model and its card's normalisation."""
    from medlens.metrics import accuracy_score, roc_auc_score
    from medlens.inference.predict import predict

    results = {}
    for split in ("val", "test"):
        predictions = predict(model, source.splits[split], task=task, mean=card.normalisation["mean"],
                              std=card.normalisation["std"], channels_last=True)
        results[split] = {
            "acc": accuracy_score(predictions.y_true, predictions.y_score, task=task),
            "auc": roc_auc_score(predictions.y_true, predictions.y_score, task=task),
            "n": len(predictions.y_true),
        }
        if split == "val":
            results["diverged"] = _no_better_than_chance(np.asarray(predictions.y_score))
    return results


def _no_better_than_chance(scores: np.ndarray) -> str | None:
    """Why validation scores ``(N, K)`` cannot tell images apart, or None when they can.

    The sign of a diverged run (loss 1e30, AUC exactly .5): non-finite scores, or the same
    scores for every image (every ranking a tie). A weak model that ranks images at all (an AUC
    under .5 on a small split is possible by chance) is not flagged: that is a poor model, not
    a broken run, and no threshold on a test or validation metric is chosen here.
    """
    if scores.size == 0:
        return None
    if not np.isfinite(scores).all():
        return "its validation scores are not finite (NaN or infinite)"
    spread = float((scores.max(axis=0) - scores.min(axis=0)).max())
    # float32 probabilities: a spread below 1e-6 is rounding, not a ranking.
    if spread < 1e-6:
        return "it gives every validation image the same scores (AUC 0.5 by ties): the training diverged"
    return None


def _fit_ood(run_dir: Path, source, rank: int) -> None:
    """Fit the out-of-distribution detector of the best checkpoint (issue 19; :mod:`medlens.engine.ood`)."""
    from medlens.engine.ood import fit_run_detector

    try:
        card = fit_run_detector(run_dir, source=source)
    except ValueError as exc:  # a model without one classifier layer: the run stands, without flags
        say(f"no out-of-distribution detector: {exc}", rank)
        return
    say(f"out-of-distribution detector: threshold flags {card['val_flagged']:.1%} of val, "
        f"{card['test_flagged']:.1%} of test", rank)


def _final_metrics(run_dir: Path, source, task, recorder, spatial_dims: int, cfg: RunConfig) -> dict:
    """Evaluate the best checkpoint on val and test; write metrics.json and the best card's metrics."""
    from medlens.engine.checkpoint import load_model, save_model

    best = RunFolder(run_dir).best
    model, card = load_model(best)
    results = score(model, card, source, task)
    diverged = results.pop("diverged")
    save_model(model, replace(card, metrics={**card.metrics, **results}), best)
    history = recorder.rows
    metrics = {
        "schema_version": RUN_METRICS_SCHEMA_VERSION,
        "dataset": source.spec,
        "model": cfg.model.name,
        "best_epoch": recorder.best_epoch,
        "monitor": cfg.train.monitor,
        "epochs_run": len(history),
        "seconds": float(sum(row["seconds"] for row in history)),
        "train_images_per_second": (float(np.median([row["images_per_second"] for row in history])) if history
                                    else math.nan),
        "val": results["val"],
        "test": results["test"],
    }
    if diverged:
        metrics["diverged"] = diverged  # the CLI exits non-zero; the folder is kept for a look
    write_json(RunFolder(run_dir).metrics, metrics)  # NaN (an undefined AUC) as null
    return metrics


class _DataModule:
    """Lazily built so that it is created inside each DDP process with that process's rank."""

    def __new__(cls, source, cfg: RunConfig, *, oversample: bool, num_classes: int):
        import lightning.pytorch as pl

        from medlens.data.loader import BatchLoader

        class RunData(pl.LightningDataModule):
            def __init__(self):
                super().__init__()
                self.train_loader = None

            def train_dataloader(self):
                weights = None
                if oversample:
                    from medlens.data.balance import oversample_weights

                    weights = oversample_weights(source.splits["train"].labels, num_classes)
                self.train_loader = BatchLoader(
                    source.splits["train"], batch_size=cfg.data.batch_size, shuffle=True, seed=cfg.train.seed,
                    weights=weights, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank)
                return self.train_loader

            def val_dataloader(self):
                # Every process validates the whole split (small), so metrics need no gathering.
                return BatchLoader(source.splits["val"], batch_size=max(256, cfg.data.batch_size))

        return RunData()
