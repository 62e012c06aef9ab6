"""The run folder: :class:`RunFolder` knows where every file of a run lives; nothing else spells it.

One training run (``medlens train``) writes::

    RUN/
      config.yaml            the resolved RunConfig (all --resume needs)             .config
      splits.json            image ids of each split, and the data's fingerprint     .splits
      history.csv            per epoch: train/val loss, ACC, AUC, LR, seconds, images/s   .history
      pretrain.csv           per autoencoder pre-training epoch (model.pretrain)     .pretrain_history
      train.log              what happened, in words                                 .log
      tracking.json          the MLflow run id, so a resumed run logs into the same MLflow run  .tracking_state
      auto.json              the auto recipe's choices and reasons (--recipe auto)   .auto_plan
      checkpoints/                                                                   .checkpoints
        best.safetensors + best.json      best by train.monitor; the model card     .best, .best_card
        last.safetensors + last.json      the last epoch                            .last, .last_card
        resume.safetensors + resume.json  optimizer, schedule, loops: for --resume  .resume_state, .resume_card
        ood.safetensors + ood.json        the out-of-distribution detector of best  .ood, .ood_card
      metrics.json           at the end: best epoch, val and test ACC/AUC of the best checkpoint  .metrics
      .train.lock            held (flock) while a process trains the run: a second trainer   .train_lock
                             is refused (:meth:`RunFolder.training_lock`); the kernel frees it
                             when the process dies, even by kill -9

``metrics.json`` carries ``schema_version`` (:data:`RUN_METRICS_SCHEMA_VERSION`, now 1): ``dataset``,
``model``, ``best_epoch`` (a list for an ensemble), ``monitor``, ``epochs_run``, ``seconds``,
``train_images_per_second``, and ``val`` / ``test`` each ``{acc, auc, n}`` (an undefined AUC is
``null``); an ensemble adds ``member``, ``members_planned`` and ``members`` (one entry per member).
A change that renames or removes a key raises the version; added keys do not.

An ensemble (``train.members`` K > 1) holds ``config.yaml``, ``splits.json``, ``train.log``,
``checkpoints/best`` (the ``ensemble`` model of the members' best checkpoints) and ``metrics.json``
(the ensemble's, with each member's beside it), and its members under ``members/m0 .. m<K-1>``
(:meth:`RunFolder.member`), each a whole run folder as above.

Later commands add, each atomically::

      eval/<split>/          medlens evaluate: metrics.json, predictions.csv and the   .eval_dir(split)
                             MedMNIST result file; eval/<split>@<data>/ for --data   .eval_dir(split, data)
      eval/robustness/       medlens robustness: metrics.json (every corruption and   .robustness_metrics
                             severity) and examples.png (one image per severity)      .robustness_examples
      export/model.onnx      medlens export: the ONNX graph                           .onnx
      export/model.json      its card: the model card, the checkpoint's SHA-256 and the check  .onnx_card
      report.html            medlens report                                           .report
      figures/               the report's figures as PNG                              .figures
      bench.json             medlens bench: the record of one (dataset, seed) run     .bench_record

A group (``medlens cv``, ``medlens train --seeds``) is a folder of run folders plus ``group.json``
(what the group is: kind, each member's config; :attr:`RunFolder.group`), the summary
``cv_summary.json`` or ``seeds_summary.json`` (:meth:`RunFolder.summary`) and ``report.html``.
A tuning folder (``medlens tune``) holds ``tune.json`` (what the search is: data, objective,
space, where the study is; :attr:`RunFolder.tune_record`), the Optuna study ``study.db`` (SQLite,
unless ``--storage`` names another database; :attr:`RunFolder.study_db`), one normal run folder
per trial under ``trials/NNN`` (:meth:`RunFolder.trial`), ``tune_summary.json``, the best trial's
config ``best.yaml`` (:attr:`RunFolder.best_config`), ``report.html``, and with ``--refit`` the
best config retrained on train + val under ``refit/`` (:attr:`RunFolder.refit`).

The folder holding a run also holds the default MLflow store, ``mlflow.db`` and
``mlflow-artifacts/`` (:attr:`RunFolder.tracking_db`), shared by every run beside it.

A checkpoint is two files: ``NAME.safetensors`` (the tensors) and ``NAME.json`` beside it
(:func:`sidecar`: the card and the rest of the state); an export's card sits beside its ``.onnx``
the same way.

A run's data is found again (``medlens evaluate``, the export's check) in one order,
:meth:`RunFolder.data_root`: ``--root``, the run's own ``data.root`` when that folder exists on
this machine, ``$MEDLENS_DATA``, ``~/.medlens/data``.

Example:
    >>> run = RunFolder("runs/breast")
    >>> run.best.as_posix(), run.eval_metrics("test").as_posix()
    ('runs/breast/checkpoints/best.safetensors', 'runs/breast/eval/test/metrics.json')
    >>> RunFolder.of("runs/breast/checkpoints/last.json").path.as_posix()
    'runs/breast'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
CHECKPOINTS = "checkpoints"
MEMBERS = "members"
SUMMARY_KINDS = ("cv", "seeds")


def sidecar(path: str | os.PathLike) -> Path:
    """The JSON beside a ``.safetensors`` checkpoint (or an ``.onnx`` export): its card.

    Example:
        >>> sidecar("runs/breast/checkpoints/best.safetensors").name
        'best.json'
    """
    return Path(path).with_suffix(CARD_SUFFIX)


def weights_file(path: str | os.PathLike) -> Path:
    """The ``.safetensors`` of a checkpoint named by that file, by its ``.json`` or by its bare name.

    Example:
        >>> weights_file("runs/breast/checkpoints/best.json").name
        'best.safetensors'
    """
    return Path(path).with_suffix(WEIGHTS_SUFFIX)


def _nan_for_null(value):
    """``value`` with every ``None`` read back as NaN (what :func:`medlens._io.write_json` wrote as null)."""
    if isinstance(value, dict):
        return {k: _nan_for_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return math.nan if value is None else value


# The version of the run-level metrics.json layout (see the module docstring).
RUN_METRICS_SCHEMA_VERSION = 1


class RunFolder:
    """The paths of one run folder (or group folder); see the module docstring for the layout.

    Properties only join paths: nothing touches the disk except :attr:`is_run`,
    :attr:`is_finished`, :attr:`is_group`, :meth:`data_root`, :meth:`read_metrics` and
    :meth:`training_lock`.

    Args:
        path: the run folder (need not exist yet).
        weights: the checkpoint this run is used through, when one was named (see :meth:`of`);
            None: ``checkpoints/best``.
    """

    __slots__ = ("_weights", "path")

    def __init__(self, path: str | os.PathLike, *, weights: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self._weights = None if weights is None else Path(weights)

    @classmethod
    def of(cls, run: str | os.PathLike) -> RunFolder:
        """The run folder of a run folder or of a checkpoint file, remembering the checkpoint.

        Args:
            run: a run folder (its ``checkpoints/best`` is used), or a checkpoint
                ``RUN/checkpoints/NAME.safetensors`` or ``.json`` (that one is used; the run
                folder is the one above ``checkpoints/``, or the folder holding a checkpoint kept
                elsewhere). ``~`` is expanded.

        Returns:
            A :class:`RunFolder` whose :attr:`weights` is the checkpoint to use.

        Raises:
            ValueError: ``run`` is neither a folder nor a ``.safetensors`` / ``.json`` file name.

        Example:
            >>> RunFolder.of("runs/breast/checkpoints/last.safetensors").weights.name
            'last.safetensors'
        """
        path = Path(run).expanduser()
        if path.is_dir():
            return cls(path)
        if path.suffix not in (WEIGHTS_SUFFIX, CARD_SUFFIX):
            raise ValueError(f"{path} is neither a run folder nor a checkpoint ({WEIGHTS_SUFFIX} or {CARD_SUFFIX})")
        home = path.parent.parent if path.parent.name == CHECKPOINTS else path.parent
        return cls(home, weights=weights_file(path))

    def __repr__(self) -> str:
        named = f", weights={str(self._weights)!r}" if self._weights is not None else ""
        return f"RunFolder({str(self.path)!r}{named})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunFolder):
            return NotImplemented
        return (self.path, self._weights) == (other.path, other._weights)

    def __hash__(self) -> int:
        return hash((self.path, self._weights))

    # ------------------------------------------------------------------ the run's own files

    @property
    def config(self) -> Path:
        """``config.yaml``: the resolved RunConfig."""
        return self.path / "config.yaml"

    @property
    def splits(self) -> Path:
        """``splits.json``: the image ids of each split and the data's fingerprint."""
        return self.path / "splits.json"

    @property
    def history(self) -> Path:
        """``history.csv``: one row per epoch."""
        return self.path / "history.csv"

    @property
    def pretrain_history(self) -> Path:
        """``pretrain.csv``: one row per autoencoder pre-training epoch."""
        return self.path / "pretrain.csv"

    @property
    def log(self) -> Path:
        """``train.log``: what happened, in words."""
        return self.path / "train.log"

    @property
    def tracking_state(self) -> Path:
        """``tracking.json``: the MLflow tracking URI and run id of this run."""
        return self.path / "tracking.json"

    @property
    def auto_plan(self) -> Path:
        """``auto.json``: the auto recipe's choices and their reasons."""
        return self.path / "auto.json"

    @property
    def metrics(self) -> Path:
        """``metrics.json``: the finished run's scores (written last: its presence means finished)."""
        return self.path / "metrics.json"

    @property
    def bench_record(self) -> Path:
        """``bench.json``: what ``medlens bench`` recorded of this run."""
        return self.path / "bench.json"

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``."""
        return self.path / CHECKPOINTS

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.safetensors`` (``best``, ``last`` or ``resume``)."""
        return self.checkpoints / f"{name}{WEIGHTS_SUFFIX}"

    @property
    def best(self) -> Path:
        """``checkpoints/best.safetensors``: the best model by ``train.monitor``."""
        return self.checkpoint("best")

    @property
    def best_card(self) -> Path:
        """``checkpoints/best.json``: the best model's card."""
        return sidecar(self.best)

    @property
    def last(self) -> Path:
        """``checkpoints/last.safetensors``: the model after the last epoch."""
        return self.checkpoint("last")

    @property
    def last_card(self) -> Path:
        """``checkpoints/last.json``: the last model's card."""
        return sidecar(self.last)

    @property
    def resume_state(self) -> Path:
        """``checkpoints/resume.safetensors``: the whole training state, for ``--resume``."""
        return self.checkpoint("resume")

    @property
    def resume_card(self) -> Path:
        """``checkpoints/resume.json``: the JSON half of the training state."""
        return sidecar(self.resume_state)

    @property
    def ood(self) -> Path:
        """``checkpoints/ood.safetensors``: the out-of-distribution detector fitted on the best model."""
        return self.checkpoint("ood")

    @property
    def ood_card(self) -> Path:
        """``checkpoints/ood.json``: the detector's card (threshold, share, the weights it fits)."""
        return sidecar(self.ood)

    @property
    def weights(self) -> Path:
        """The checkpoint this run is used through: the one given to :meth:`of`, else :attr:`best`."""
        return self._weights if self._weights is not None else self.best

    # ------------------------------------------------------------------ ensembles

    @property
    def members_dir(self) -> Path:
        """``members/``: an ensemble's member runs."""
        return self.path / MEMBERS

    def member(self, index: int) -> RunFolder:
        """``members/m<index>``: ensemble member ``index``, itself a run folder."""
        return RunFolder(self.members_dir / f"m{index}")

    @property
    def ensemble(self) -> RunFolder | None:
        """The ensemble this run is a member of (``ENSEMBLE/members/m<i>``), or None."""
        return RunFolder(self.path.parent.parent) if self.path.parent.name == MEMBERS else None

    # ------------------------------------------------------------------ evaluation, export, report

    def eval_dir(self, split: str, data: str | None = None) -> Path:
        """``eval/<split>/`` (the run's own data), or ``eval/<split>@<data>/`` for other data.

        Args:
            split: ``train``, ``val``, ``test`` or ``all``.
            data: a short, file-name-safe name of other data evaluated on (None: the run's own).
        """
        return self.path / "eval" / (split if data is None else f"{split}@{data}")

    def eval_metrics(self, split: str, data: str | None = None) -> Path:
        """``eval/<split>[@<data>]/metrics.json``: every metric of an evaluation."""
        return self.eval_dir(split, data) / "metrics.json"

    def other_data_metrics(self) -> list[Path]:
        """``eval/<split>@<data>/metrics.json`` of every evaluation on other data, sorted (external validation)."""
        return sorted((self.path / "eval").glob("*@*/metrics.json"))

    def eval_predictions(self, split: str, data: str | None = None) -> Path:
        """``eval/<split>[@<data>]/predictions.csv``: one row per image."""
        return self.eval_dir(split, data) / "predictions.csv"

    @property
    def robustness_dir(self) -> Path:
        """``eval/robustness/``: the test split under each corruption and severity."""
        return self.path / "eval" / "robustness"

    @property
    def robustness_metrics(self) -> Path:
        """``eval/robustness/metrics.json``: ACC, AUC, balanced accuracy, ECE per corruption and severity."""
        return self.robustness_dir / "metrics.json"

    @property
    def robustness_examples(self) -> Path:
        """``eval/robustness/examples.png``: one test image under every corruption and severity."""
        return self.robustness_dir / "examples.png"

    @property
    def export_dir(self) -> Path:
        """``export/``."""
        return self.path / "export"

    @property
    def onnx(self) -> Path:
        """``export/model.onnx``: the exported inference graph."""
        return self.export_dir / "model.onnx"

    @property
    def onnx_card(self) -> Path:
        """``export/model.json``: the export's card."""
        return sidecar(self.onnx)

    @property
    def report(self) -> Path:
        """``report.html``."""
        return self.path / "report.html"

    @property
    def figures(self) -> Path:
        """``figures/``: the report's figures as PNG."""
        return self.path / "figures"

    # ------------------------------------------------------------------ groups and the runs folder

    @property
    def group(self) -> Path:
        """``group.json`` of a cv / seeds group folder."""
        return self.path / "group.json"

    def summary(self, kind: str) -> Path:
        """``<kind>_summary.json`` of a group folder.

        Raises:
            ValueError: ``kind`` is not ``cv`` or ``seeds``.
        """
        if kind not in SUMMARY_KINDS:
            raise ValueError(f"group kind must be one of {', '.join(SUMMARY_KINDS)}; got {kind!r}")
        return self.path / f"{kind}_summary.json"

    # ------------------------------------------------------------------ tuning

    @property
    def tune_record(self) -> Path:
        """``tune.json`` of a tuning folder: the search's data, objective, space and storage."""
        return self.path / "tune.json"

    @property
    def study_db(self) -> Path:
        """``study.db``: the Optuna study of a tuning folder (SQLite, the default storage)."""
        return self.path / "study.db"

    @property
    def trials_dir(self) -> Path:
        """``trials/``: one run folder per trial."""
        return self.path / "trials"

    def trial(self, number: int) -> RunFolder:
        """``trials/NNN``: the run folder of trial ``number`` (zero-padded to 3 digits)."""
        return RunFolder(self.trials_dir / f"{number:03d}")

    @property
    def tune_summary(self) -> Path:
        """``tune_summary.json``: the best trial, its config, every trial's value and duration."""
        return self.path / "tune_summary.json"

    @property
    def best_config(self) -> Path:
        """``best.yaml``: the best trial's config, for ``medlens train --config best.yaml``."""
        return self.path / "best.yaml"

    @property
    def refit(self) -> RunFolder:
        """``refit/``: the best config trained on train + val (``medlens tune --refit``)."""
        return RunFolder(self.path / "refit")

    @property
    def is_tune(self) -> bool:
        """Whether this is a tuning folder (its ``tune.json`` exists)."""
        return self.tune_record.is_file()

    @property
    def tracking_db(self) -> Path:
        """``mlflow.db`` in the folder holding the run: the default MLflow store of every run there."""
        return self.path.parent / "mlflow.db"

    @property
    def tracking_artifacts(self) -> Path:
        """``mlflow-artifacts/`` in the folder holding the run, beside :attr:`tracking_db`."""
        return self.path.parent / "mlflow-artifacts"

    @property
    def train_lock(self) -> Path:
        """``RUN/.train.lock``: locked while a process trains the run (see :meth:`training_lock`)."""
        return self.path / ".train.lock"

    @contextlib.contextmanager
    def training_lock(self) -> Iterator[None]:
        """Hold the run's lock for the block; refuse at once when another process holds it.

        An OS lock (``flock`` through the ``filelock`` package), not a marker file: a killed
        trainer (``kill -9``, a power cut) leaves no stale lock behind, so ``--resume`` after a
        crash is never blocked, while two live trainers of one run (two ``--resume`` at once)
        can never interleave their checkpoints.

        Raises:
            ValueError: another process trains this run now.
        """
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.train_lock), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise ValueError(f"{self.path} is being trained by another process now (it holds {self.train_lock.name}); "
                             "wait for it to finish, or stop it and resume afterwards") from None
        try:
            yield
        finally:
            lock.release()

    # ------------------------------------------------------------------ reading

    @property
    def is_run(self) -> bool:
        """Whether a run was started here (its ``config.yaml`` exists)."""
        return self.config.is_file()

    @property
    def is_finished(self) -> bool:
        """Whether the run here finished (its ``metrics.json`` exists)."""
        return self.metrics.is_file()

    @property
    def is_group(self) -> bool:
        """Whether this is a cv / seeds group folder (its ``group.json`` exists)."""
        return self.group.is_file()

    def read_metrics(self) -> dict:
        """The finished run's ``metrics.json``, with ``null`` read back as NaN.

        The file is written by :func:`medlens._io.write_json` (NaN as ``null``); files from before
        hold a bare ``NaN``, which reads as NaN too. Training metrics hold no other ``null``.

        Raises:
            FileNotFoundError: the run has not finished.
        """
        if not self.metrics.is_file():
            raise FileNotFoundError(f"{self.path} is not a finished run: {self.metrics.name} is missing")
        return _nan_for_null(json.loads(self.metrics.read_text()))

    def data_root(self, root: str | os.PathLike | None = None, *, config: Mapping | None = None) -> Path:
        """The data folder in which to find this run's data again (evaluation, export checks).

        The one precedence, first match wins:

        1. ``root``, given explicitly (``--root``);
        2. the ``data.root`` the run was trained with, when that folder exists on this machine
           (a run copied from another machine passes over its old root);
        3. ``$MEDLENS_DATA``;
        4. ``~/.medlens/data``.

        Folder and npz specs name their own files; the root matters for MedMNIST names.

        Args:
            root: an explicit data folder, or None.
            config: the run's config as a dict (``RunConfig.to_dict()`` or a model card's
                ``config``) when the caller holds it already; None: read ``config.yaml`` (a
                folder without one has no stored root).

        Returns:
            The data folder (``~`` expanded).

        Example:
            >>> RunFolder("runs/x").data_root("/data/medmnist").as_posix()
            '/data/medmnist'
        """
        from medlens.data.download import data_root as default_root

        if root is not None:
            return default_root(root)
        if config is None and self.config.is_file():
            from medlens.engine.config import read_yaml

            config = read_yaml(self.config)
        data = (config or {}).get("data") or {}
        stored = data.get("root") if isinstance(data, Mapping) else None
        if stored and Path(stored).expanduser().is_dir():
            return default_root(stored)
        return default_root(None)
