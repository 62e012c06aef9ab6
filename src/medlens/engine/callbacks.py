"""Lightning callbacks of a run: the recorder (history, checkpoints, tracking) and the progress bar."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, TQDMProgressBar

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
    """

    def __init__(self, run_dir: Path, card: ModelCard, monitor: str, mode: str, tracker: Tracker,
                 logit_shift: torch.Tensor | None = None):
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
        # Every process calls this (under DDP it synchronises them); only the main one writes.
        trainer.save_checkpoint(folder.resume_state, weights_only=False)
        if not trainer.is_global_zero:
            return
        write_history(self.rows, folder.history)
        self.tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=trainer.current_epoch)
        log.info("epoch %d: train loss %.4f | val loss %.4f ACC %.4f AUC %.4f | lr %.3g | %.1f s, %.0f img/s%s",
                 row["epoch"], row["train_loss"], row["val_loss"], row["val_acc"], row["val_auc"], row["lr"],
                 row["seconds"], row["images_per_second"], "  *best*" if improved else "")

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


class EpochProgressBar(TQDMProgressBar):
    """One bar per epoch showing the running training loss and images per second."""

    def __init__(self):
        super().__init__(leave=False)

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.file = sys.stderr
        return bar

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        seen = float(pl_module._loss_sum[1])
        if seen:
            items["loss"] = f"{float(pl_module._loss_sum[0]) / seen:.4f}"
            elapsed = time.perf_counter() - pl_module._epoch_start
            items["img/s"] = f"{seen / elapsed:.0f}" if elapsed > 0 else "-"
        return items
