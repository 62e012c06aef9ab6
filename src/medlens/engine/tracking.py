"""Experiment tracking: a plain ``history.csv`` always, and MLflow (SQLite by default).

MLflow gets one call per epoch, never per step, so tracking costs nothing measurable. The
run id is kept in the run folder (``tracking.json``) so a resumed run logs into the same
MLflow run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

from medlens._io import atomic_path
from medlens.engine.run_folder import RunFolder

log = logging.getLogger("medlens")

HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "train_auc", "val_loss", "val_acc", "val_auc", "lr",
                   "seconds", "images_per_second")


def write_history(rows: list[dict], path: str | Path) -> None:
    """Write ``rows`` (dicts keyed by :data:`HISTORY_COLUMNS`) as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in row.items() if k in HISTORY_COLUMNS})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def read_history(path: str | Path) -> list[dict]:
    """Rows of a ``history.csv`` with numbers parsed (``epoch`` as int)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in rows]


def default_tracking_uri(run_dir: Path) -> str:
    """``sqlite:///<folder holding the run>/mlflow.db``: every run under ``runs/`` in one store."""
    return f"sqlite:///{RunFolder(Path(run_dir).resolve()).tracking_db}"


def _store_lock(uri: str):
    """A file lock around the first use of a SQLite MLflow store (a no-op context for other stores).

    Two runs started together on a new ``mlflow.db`` both ran MLflow's schema migrations, and
    one crashed (``alembic ... CommandError: Online migration expected to match one row``, 3 of
    3 tries); both could also create the experiment. Under ``mlflow.db.lock`` the first creates
    tables and experiment while the second waits, then finds them. Held only while the tracker
    starts (a second or two), so a long run never blocks another.
    """
    import contextlib

    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db) + ".lock", timeout=300)


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = str(value)[:500]
    return out


class Tracker:
    """MLflow logging for one run (a no-op when ``uri`` is ``none``).

    Args:
        uri: MLflow tracking URI, or ``none``.
        run_dir: the run folder (its name becomes the MLflow run name).
        params: the resolved config as a nested dict (logged flattened, once).
        tags: extra tags of a new MLflow run (``mlflow.parentRunId``: nested under that run).
    """

    def __init__(self, uri: str, run_dir: Path, params: dict, tags: dict | None = None):
        self.enabled = uri.lower() != "none"
        self.client = None
        self.run_id = None
        if not self.enabled:
            return
        logging.getLogger("alembic").setLevel(logging.WARNING)
        with _store_lock(uri):
            self._start(uri, run_dir, params, tags)

    def _start(self, uri: str, run_dir: Path, params: dict, tags: dict | None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        folder = RunFolder(run_dir)
        state_file = folder.tracking_state
        if state_file.is_file():
            self.run_id = json.loads(state_file.read_text())["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name("medlens")
        if experiment is None:
            # Artifacts beside the runs, not in ./mlruns of whatever folder the user stands in.
            artifacts = RunFolder(folder.path.resolve()).tracking_artifacts.as_uri()
            experiment_id = self.client.create_experiment("medlens", artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        # An ensemble member is named after its ensemble too: "breast/m0", not a bare "m0".
        ensemble = folder.ensemble
        name = f"{ensemble.path.name}/{folder.path.name}" if ensemble is not None else folder.path.name
        run = self.client.create_run(experiment_id, run_name=name, tags=tags)  # under the store's lock: tables exist
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = _flatten("", params, {})
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        with atomic_path(state_file) as tmp:
            tmp.write_text(json.dumps({"tracking_uri": uri, "run_id": self.run_id}))

    def log_metrics(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=batch)

    def finish(self, artifacts: list[Path], status: str = "FINISHED") -> None:
        if not self.enabled:
            return
        for path in artifacts:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=status)
