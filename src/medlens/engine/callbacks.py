"""Lightning callbacks of a run: the recorder (history, checkpoints, tracking, early stopping) and
the progress display.

One rule picks the best epoch and stops early (:meth:`RunRecorder._better`): an epoch improves
when its monitored value is better, or equal at a lower validation loss. Early stopping counts the
epochs since the best one, so an epoch marked ``*best*`` always resets it, and a run stops
exactly ``patience`` epochs after its last ``*best*`` epoch, saying so.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint

from medlens.engine.checkpoint import ModelCard, save_model
from medlens.engine.run_folder import RunFolder
from medlens.engine.tracking import Tracker, write_history

log = logging.getLogger("medlens")


def _unwrap(model):
    """The plain module under ``torch.compile`` (its state_dict keys carry no ``_orig_mod.``)."""
    return getattr(model, "_orig_mod", model)


class RunRecorder(Checkpoint):
    """At the end of every epoch (after validation and the schedule step), on the main process:
    append a row to ``history.csv``, log it to MLflow and ``train.log``, save the best and last
    model checkpoints and the resume state.

    It subclasses Lightning's ``Checkpoint`` so that Lightning runs it after the module's own
    epoch-end hook (which steps the schedule) and after early stopping: the saved state is then
    exactly the state the next epoch starts from.

    Args:
        run_dir: the run folder.
        card: the model card; metrics are filled in per save.
        monitor: ``val_auc``, ``val_acc`` or ``val_loss``.
        mode: ``max`` or ``min``.
        tracker: MLflow tracker (disabled on non-zero ranks).
        logit_shift: added to the classifier bias of the saved best and last models
            (``data.correct_priors``), never to the model in training.
        patience: stop after this many epochs without a new best epoch (None: never).
        progress: the progress display told of each finished epoch (None: nothing shown).
        say: where the early-stopping line goes (besides ``train.log``), on the main process.
    """

    def __init__(self, run_dir: Path, card: ModelCard, monitor: str, mode: str, tracker: Tracker,
                 logit_shift: torch.Tensor | None = None, *, patience: int | None = None,
                 progress: EpochProgress | None = None, say=None):
        self.patience = patience
        self.progress = progress
        self.say = say
        self.stopped_early: str | None = None
        self.run_dir = Path(run_dir)
        self.card = card
        self.monitor = monitor
        self.mode = mode
        self.tracker = tracker
        self.logit_shift = logit_shift
        self.rows: list[dict] = []
        self.best_score = -math.inf if mode == "max" else math.inf
        self.best_loss = math.inf  # validation loss of the best epoch: breaks ties of the monitor
        self.best_epoch = -1

    def _better(self, value: float, loss: float) -> bool:
        """Whether an epoch beats the best so far: a better monitored value, or an equal one at a
        lower validation loss. A small validation split saturates its AUC (1.0 on the 30 images
        of the COVID-19 folder by epoch 8-10 of 75): without the tie-break the first, still
        high-learning-rate epoch to reach it would stay "best" for the rest of the run."""
        if math.isnan(value):
            return False
        if value == self.best_score and self.monitor != "val_loss":
            return not math.isnan(loss) and loss < self.best_loss
        return value > self.best_score if self.mode == "max" else value < self.best_score

    def _consider(self, epoch: int, value: float, loss: float) -> bool:
        """Take one epoch's monitored value and validation loss; True (and remembered) if it is the new best."""
        improved = self._better(value, loss) or self.best_epoch < 0
        if improved:
            self.best_score = value if not math.isnan(value) else self.best_score
            self.best_loss = loss if not math.isnan(loss) else math.inf
            self.best_epoch = epoch
        return improved

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        train_metrics = dict(getattr(pl_module, "train_epoch_metrics", {}))
        seconds = time.perf_counter() - pl_module._epoch_start
        row = {"epoch": trainer.current_epoch, **{k: train_metrics.get(k, math.nan) for k in
                                                  ("train_loss", "train_acc", "train_auc")},
               "val_loss": metrics.get("val_loss", math.nan), "val_acc": metrics.get("val_acc", math.nan),
               "val_auc": metrics.get("val_auc", math.nan), "lr": train_metrics.get("lr", math.nan),
               "seconds": seconds, "images_per_second": pl_module.last_train_images_per_second}
        for key in ("val_acc", "val_auc", "val_loss"):  # the module logs +-inf for an undefined metric
            if math.isinf(row[key]):
                row[key] = math.nan
        self.rows.append(row)
        improved = self._consider(trainer.current_epoch, row[self.monitor], row["val_loss"])
        folder = RunFolder(self.run_dir)
        if trainer.is_global_zero:
            epoch_metrics = {"epoch": trainer.current_epoch, **{k: row[k] for k in ("val_loss", "val_acc", "val_auc")}}
            model = _unwrap(pl_module.model)
            if improved:
                save_model(model, replace(self.card, metrics=epoch_metrics), folder.best,
                           logit_shift=self.logit_shift)
            save_model(model, replace(self.card, metrics=epoch_metrics), folder.last,
                       logit_shift=self.logit_shift)
        stop = self._should_stop(trainer)  # before the resume state is saved, as Lightning's own would be
        # Every process calls this (under DDP it synchronises them); only the main one writes.
        trainer.save_checkpoint(folder.resume_state, weights_only=False)
        if not trainer.is_global_zero:
            return
        write_history(self.rows, folder.history)
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=trainer.current_epoch)
        line = epoch_line(row, trainer.max_epochs, improved)
        log.info(line)
        if self.progress is not None:
            self.progress.epoch_done(line, row, improved, trainer, self.monitor)
        if stop:
            self.stopped_early = (
                f"early stopping after epoch {row['epoch']}: no better {self.monitor} (ties: lower val loss) "
                f"in the {self.patience} epoch(s) since the best epoch {self.best_epoch}; "
                f"the best epoch's checkpoint is kept")
            log.info(self.stopped_early)
            if self.say is not None:
                self.say(self.stopped_early)

    def _should_stop(self, trainer) -> bool:
        """Early stopping by the best-epoch rule: ``patience`` epochs since the last best one.

        Every process computes the same validation metrics (each validates the whole split), so
        they agree; the decision is still reduced so that no process can stop alone under DDP.
        """
        if not self.patience:
            return False
        stop = trainer.current_epoch - self.best_epoch >= self.patience
        stop = bool(trainer.strategy.reduce_boolean_decision(stop, all=False))
        if stop:
            trainer.should_stop = True
        return stop

    def state_dict(self) -> dict:
        return {"rows": self.rows, "best_score": self.best_score, "best_loss": self.best_loss,
                "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = [dict(row) for row in state_dict["rows"]]
        self.best_score = state_dict["best_score"]
        self.best_epoch = state_dict["best_epoch"]
        # A state saved before the tie-break existed: the best epoch's loss from its history row.
        best_row = [row for row in self.rows if row["epoch"] == self.best_epoch]
        fallback = best_row[0]["val_loss"] if best_row and not math.isnan(best_row[0]["val_loss"]) else math.inf
        self.best_loss = state_dict.get("best_loss", fallback)


def epoch_line(row: dict, epochs: int | None, improved: bool) -> str:
    """One finished epoch as the plain line of ``train.log`` and of a non-terminal stderr."""
    of = f"/{epochs}" if epochs and epochs > 0 else ""
    return (f"epoch {row['epoch']}{of}: train loss {row['train_loss']:.4f} | val loss {row['val_loss']:.4f} "
            f"ACC {row['val_acc']:.4f} AUC {row['val_auc']:.4f} | lr {row['lr']:.3g} | {row['seconds']:.1f} s, "
            f"{row['images_per_second']:.0f} img/s{'  *best*' if improved else ''}")


class EpochHook(Callback):
    """Calls ``fn(epoch, metrics) -> bool`` after each epoch's validation, on the main process; a true
    answer stops training after this epoch (the run still saves it and finishes normally).

    The engine knows nothing of what the hook is for: a hyperparameter search feeds its pruner
    through it (:mod:`medlens.workflows.tune`). Being a plain ``Callback``, Lightning runs it before
    :class:`RunRecorder` (a ``Checkpoint``), which then records and saves the epoch as usual.
    With several processes (DDP) every process asks the hook, so they all stop together; a
    hook should then answer the same on every process.

    Args:
        fn: ``(epoch, metrics)``: the 0-based epoch and the logged values (``val_auc``,
            ``val_acc``, ``val_loss``, ... as floats; an undefined metric NaN).
    """

    def __init__(self, fn):
        self.fn = fn

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics = {k: (math.nan if math.isinf(v) else v) for k, v in metrics.items()}
        if self.fn(trainer.current_epoch, metrics):
            trainer.should_stop = True


class EpochProgress(Callback):
    """The one progress display of a training run, on stderr of the main process.

    On a terminal: a bar per epoch over its training batches with the running loss, images per
    second and tqdm's time left in the epoch; when the epoch ends (after validation) the bar is
    completed with the validation metric, the ``*best*`` mark and the time left in the run, and
    left on screen, one line per epoch. Elsewhere (a pipe, a file, a CI log) bars would be
    carriage-return noise: one plain line per epoch, the line ``train.log`` gets.

    Lightning's own progress bar stays off (its validation bars are the noise this replaces).

    Args:
        stream: where to write (default ``sys.stderr`` at the time of each write).
        terminal: force the terminal display on or off (None: ``stream.isatty()``).
    """

    def __init__(self, stream=None, terminal: bool | None = None):
        self._stream = stream
        self._terminal = terminal
        self._bar = None
        self._seconds: list[float] = []

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stderr

    @property
    def terminal(self) -> bool:
        if self._terminal is not None:
            return self._terminal
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.terminal:
            return
        from tqdm.auto import tqdm

        total = trainer.num_training_batches
        # The size once per epoch, through shutil: a terminal that reports 0x0 (a fresh pty, some
        # CI consoles) gets $COLUMNS x $LINES or 80x24, where tqdm's own detection draws nothing.
        size = shutil.get_terminal_size()
        self._bar = tqdm(total=total if isinstance(total, int) else None, file=self.stream, leave=True,
                         desc=f"epoch {trainer.current_epoch}/{trainer.max_epochs}", unit="batch",
                         ncols=size.columns, nrows=size.lines, bar_format="{desc} {bar:10} {n_fmt}/{total_fmt} "
                                                        "[{elapsed}<{remaining}]{postfix}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._bar is None:
            return
        seen = float(pl_module._loss_sum[1])
        elapsed = time.perf_counter() - pl_module._epoch_start
        if seen:
            self._bar.set_postfix_str(f"loss {float(pl_module._loss_sum[0]) / seen:.4f} "
                                      f"{seen / elapsed if elapsed > 0 else 0:.0f} img/s", refresh=False)
        self._bar.update(1)

    def epoch_done(self, line: str, row: dict, improved: bool, trainer, monitor: str) -> None:
        """Called by the recorder once the epoch's row (validation included) is known."""
        self._seconds.append(row["seconds"])
        if self._bar is None:
            print(line, file=self.stream, flush=True)
            return
        left = max(0, (trainer.max_epochs or 0) - row["epoch"] - 1)
        # The run's time left: the mean epoch so far times the epochs left (early stopping may end it sooner).
        eta = sum(self._seconds) / len(self._seconds) * left
        self._bar.set_postfix_str(
            f"loss {row['train_loss']:.4f} {monitor.replace('val_', 'val ')} {row[monitor]:.4f} "
            f"{row['images_per_second']:.0f} img/s ETA {_duration(eta)}{' *best*' if improved else ''}",
            refresh=False)
        self._bar.close()
        self._bar = None

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
