"""``tune(config, out, space=...)``: a hyperparameter search on Optuna, one normal run per trial.

The search is an Optuna study: the TPE sampler proposes each trial's values from the space
(:mod:`medlens.workflows.tune_space`), the trial trains one model with them into
``OUT/trials/NNN`` (a normal run folder: reportable, evaluable), and its objective is the best
validation value of ``train.monitor`` over its epochs (never the test split). After every epoch
the trial reports that value to a successive-halving pruner (ASHA, as AutoGluon runs it through
Ray Tune), which stops trials that are behind the others at the same epoch; a pruned trial still
finishes its run folder with the epochs it ran.

**Where the study lives.** By default in ``OUT/study.db`` (SQLite: embedded, no server). With
``storage`` any SQLAlchemy URL (``postgresql://user@host/db``) lets many ``medlens tune``
processes on many machines share one study: each asks Optuna's storage for its next trial, so
no two run the same one, and together they stop at ``trials`` finished trials (a worker that
would start one past the count marks its claim failed and stops instead).

**Resuming and crashes.** Running the same command again continues the study: finished and
pruned trials are kept and count. A trial whose worker died (``kill -9``, a lost machine) is
marked failed and its values are queued again as a new trial: at once when the worker ran on
this machine and its process is gone, otherwise when its heartbeat (every
:data:`HEARTBEAT_S` s) has been silent for :data:`GRACE_S` s. Optuna commits every finished trial
before the next starts, so killing the tune process never loses one. ``tune_summary.json`` is
rewritten (atomically) after every trial.

**Budget.** With ``budget_s`` this process starts no trial past its budget, and each trial's
training gets ``train.max_seconds`` = the budget left over the trials left (minus the measured
overhead of loading and scoring), so the last trial ends inside the budget.

**MLflow.** The tune is one MLflow run; each trial's run is nested under it
(``mlflow.parentRunId``), in the same store as ``medlens train`` uses (``runs/mlflow.db`` beside
the tune folder, unless ``train.tracking_uri`` says otherwise).

Example:
    >>> from medlens.engine.config import build_config
    >>> from medlens.workflows.tune_space import load_space
    >>> base = build_config({"data": {"spec": "breastmnist"}, "train": {"epochs": 10}}, recipe="fast")
    >>> summary = tune(base, "runs/breast-tune", space=load_space("default"), trials=8,
    ...                budget_s=180)                                            # doctest: +SKIP
    >>> summary["best"]["value"]                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import statistics
import time
from dataclasses import replace
from pathlib import Path

from medlens._io import atomic_path, write_json
from medlens.engine.run_folder import RunFolder

STUDY_SCHEMA = 1
# Heartbeat of a running trial, and how long it may be silent before another worker takes the
# trial as dead: four missed beats, so a busy database or a long garbage collection is not a death.
HEARTBEAT_S = 30
GRACE_S = 120
# A dead trial's values are queued again at most this often (a trial that kills its worker each
# time, out of memory say, is not retried for ever).
MAX_RETRY = 2
PRUNERS = ("halving", "hyperband", "median", "none")
# Fields of the base config that may differ between machines (and runs) of one study.
LOCAL_FIELDS = (("data", "root"), ("train", "tracking_uri"), ("train", "progress"), ("train", "max_seconds"))


class _Surplus(Exception):
    """A claimed trial beyond ``trials``: marked failed and not run (another worker got there first)."""


def tune(config, out: str | os.PathLike, *, space, trials: int | None = None, budget_s: float | None = None,
         storage: str | None = None, study_name: str | None = None, pruner: str = "halving",
         refit: bool = False, say=print, started: float | None = None) -> dict:
    """Run (or continue) a hyperparameter search; see the module docstring.

    Args:
        config: the base :class:`~medlens.engine.config.RunConfig`: every trial is it with the
            space's values set. Its ``train.monitor`` is the objective, ``train.epochs`` each
            trial's epochs (the pruner's maximum resource).
        out: the tune folder (created; an existing one is continued).
        space: a :class:`~medlens.workflows.tune_space.Space`.
        trials: stop when the study holds this many finished (complete or pruned) trials, all
            workers together (None: until the budget is spent).
        budget_s: this process's time budget in seconds (None: no limit; then ``trials`` is needed).
        storage: SQLAlchemy URL of the study (None: ``OUT/study.db``).
        study_name: the study's name in the storage (None: the tune folder's name).
        pruner: ``halving`` (successive halving, the default), ``hyperband``, ``median`` or ``none``.
        refit: afterwards, train the best config on train + val and score it on test once.
        say: where progress lines go.
        started: the ``time.monotonic()`` the budget counts from (the command passes its own
            start, so loading the libraries counts too); None: now.

    Returns:
        The summary (also ``OUT/tune_summary.json``).

    Raises:
        ValueError: a bad space or option, an unreachable storage, or a study in the storage
            made for other data, another objective or another space; named in the message.
    """
    from medlens.workflows.tune_space import check_space

    started = time.monotonic() if started is None else started  # checking and loading are part of the job
    if trials is None and budget_s is None:
        raise ValueError("give --trials N, --budget (e.g. 10m), or both: otherwise the search never ends")
    if pruner not in PRUNERS:
        raise ValueError(f"--pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}")
    if not config.train.one_process:
        raise ValueError("medlens tune trains its trials one after another in one process; run several tune "
                         f"workers on one --storage to use more devices (got devices {config.train.devices!r}, "
                         f"strategy {config.train.strategy!r}, nodes {config.train.num_nodes})")
    out = Path(out)
    folder = RunFolder(out)
    if out.exists() and not folder.is_tune and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not a medlens tune folder; choose another --out")
    base = config.to_dict()
    base["train"]["members"] = 1
    sources = _Sources()
    check_space(space, base, source=sources.get(config.data), sources=sources.get)
    record = study_record(config, space)
    name = study_name or out.resolve().name
    created = not out.exists()
    url = storage or f"sqlite:///{folder.study_db.resolve()}"
    # tune.json first, the study second: a tune killed between the two is still a tune folder
    # that the same command continues. A folder this call made is removed again if the study
    # cannot be opened (an unreachable storage, another search's study), so nothing is left behind.
    new_record = not folder.is_tune
    out.mkdir(parents=True, exist_ok=True)
    if new_record:
        write_json(folder.tune_record, {**record, "study": name, "storage": redact(url),
                                        "embedded": storage is None})
    try:
        study, storage_ = _open_study(url, name, record, config, pruner=pruner, trials=trials)
    except BaseException:
        if created:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        elif new_record:
            folder.tune_record.unlink(missing_ok=True)
        raise
    _requeue_dead_trials(study, storage_, say)
    parent = _parent_run(config, out, record)
    runner = _Runner(study, storage_, base, space, out, config, sources, budget_s=budget_s, trials=trials,
                     parent_run_id=parent.run_id if parent else None, say=say, started=started)
    status = "FAILED"
    try:
        runner.run()
        status = "FINISHED"
    finally:
        summary = write_summary(study, out, space, base, wall_s=runner.wall_s, budget_s=budget_s)
        if parent is not None:
            if summary["best"] is not None:
                parent.log_metrics({f"best_{config.train.monitor}": summary["best"]["value"]},
                                   step=summary["counts"]["complete"])
            parent.finish([folder.tune_summary], status=status)
    if refit:
        if summary["best"] is None:
            raise ValueError(f"--refit needs a finished trial; {out} has none yet")
        summary["refit"] = refit_best(out, summary, sources, say=say)
        write_json(folder.tune_summary, summary)
    return summary


def study_record(config, space) -> dict:
    """What a study is for: the data, the objective, the space and the base config (less what may
    differ between machines). A worker joining a study with another record is refused."""
    base = config.to_dict()
    for section, key in LOCAL_FIELDS:
        base[section].pop(key, None)
    base["train"]["members"] = 1
    data = {k: base["data"][k] for k in ("spec", "size", "split_seed", "ratios", "channels", "folds", "fold")}
    return json.loads(json.dumps({"schema": STUDY_SCHEMA, "data": data, "monitor": config.train.monitor,
                                  "direction": _direction(config), "space": space.to_dict(), "base": base}))


def redact(url: str) -> str:
    """A storage URL without its password (``postgresql://me:***@host/db``), for files and messages."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # not a URL SQLAlchemy parses: no password in it to hide
        return url


def _direction(config) -> str:
    return "maximize" if config.train.monitor_mode == "max" else "minimize"


def _open_study(url: str, name: str, record: dict, config, *, pruner: str, trials: int | None):
    """Connect to the storage and create or load the study, checking it is this search's.

    Returns:
        ``(study, storage)``: the Optuna study and its ``RDBStorage``.
    """
    import optuna
    import sqlalchemy.exc

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine_kwargs = {}
    if url.startswith("postgresql://"):
        # The driver medlens[tune] installs (psycopg 3); SQLAlchemy 2.0 alone would reach for psycopg2.
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if url.startswith("postgresql"):
        engine_kwargs = {"connect_args": {"connect_timeout": 10}}
    elif url.startswith("sqlite"):
        # Several local workers may share one SQLite study: wait for the write lock, not fail.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        storage = _storage(url, engine_kwargs)
        study = optuna.create_study(storage=storage, study_name=name, direction=record["direction"],
                                    sampler=_sampler(config, trials, storage, name), pruner=_pruner(pruner, config),
                                    load_if_exists=True)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:
        reason = " ".join(str(err).split("\n")[0].split()) or type(err).__name__
        raise ValueError(f"cannot open the study storage {redact(url)}: {reason[:300]}") from None
    stored = study.user_attrs.get("medlens")
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(f"study {name!r} in {redact(url)} was not made by medlens tune; "
                             "choose another --study name")
        study.set_user_attr("medlens", record)
    elif stored != record:
        raise ValueError(f"study {name!r} in {redact(url)} was made for {_difference(stored, record)}; "
                         "rerun with the same DATA and options to continue it, or choose another --study / --out")
    return study, storage


def _storage(url: str, engine_kwargs: dict):
    """Optuna's RDB storage of ``url``, with heartbeats; workers that start together on a new database
    race to create its tables, and the losers retry once the winner is done."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(6):
        try:
            with _quiet_optuna():
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S, heartbeat_stale_trial_callback=_retry())
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _difference(stored: dict, record: dict) -> str:
    """The first way a stored study record differs from this search's, in words."""
    theirs = stored.get("data") or {}
    for key, value in record["data"].items():
        if theirs.get(key) != value:
            return f"other data (data.{key} {theirs.get(key)!r}, not {value!r})"
    if stored.get("monitor") != record["monitor"]:
        return f"another objective ({stored.get('monitor')!r}, not {record['monitor']!r})"
    if stored.get("space") != record["space"]:
        return "another search space"
    for section, values in record["base"].items():
        theirs = stored.get("base", {}).get(section, {})
        for key, value in values.items():
            if theirs.get(key) != value:
                return f"another base config ({section}.{key} {theirs.get(key)!r}, not {value!r})"
    return "another medlens version's record"


def _sampler(config, trials: int | None, storage, name: str):
    """TPE, seeded from the base seed and what the study already holds (a continued study or a
    second worker does not replay the first one's draws)."""
    import optuna

    try:
        done = len(optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False))
    except KeyError:
        done = 0
    # TPE models the good trials only once it has some: Optuna's default is 10 random ones
    # first, which for a search of 8 trials would be no TPE at all; a third of the trials, at
    # least 2, keeps both phases.
    startup = 10 if trials is None else min(10, max(2, trials // 3))
    seed = config.train.seed + 1000 * done + os.getpid() % 1000 * (done > 0)
    return optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed)


def _pruner(name: str, config):
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=config.train.epochs, reduction_factor=3)
    # Successive halving (one bracket): with the tens of trials a budget allows here, Hyperband's
    # several brackets would each hold too few trials to compare. Rungs at 1, 3, 9, ... epochs; a
    # trial continues past a rung if it is in the best third of the trials that reached it.
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


def _requeue_dead_trials(study, storage, say) -> None:
    """Trials left running by a dead worker of this machine: marked failed, their values queued again."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    retry = _retry()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, run_dir = trial.user_attrs.get("pid"), trial.user_attrs.get("run_dir")
        # Ours for sure only if it ran here: same host name, and its tune folder (OUT of
        # OUT/trials/NNN) on this disk (containers on two machines can share a host name);
        # otherwise the heartbeat decides.
        mine = trial.user_attrs.get("host") == host and run_dir is not None and Path(run_dir).parents[1].is_dir()
        if not mine or pid is None or _alive(pid):
            continue
        storage.set_trial_system_attr(trial._trial_id, "fail_reason", f"its worker (pid {pid}) died")
        if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            say(f"trial {trial.number}: its worker (pid {pid}) is gone: marked failed, its values queued again")
            retry(study, storage.get_trial(trial._trial_id))


def _retry():
    """Optuna's callback that queues a dead trial's values again as a new trial (at most MAX_RETRY times)."""
    import optuna

    with _quiet_optuna():
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


@contextlib.contextmanager
def _quiet_optuna():
    """Hide Optuna's "experimental feature" warnings of the heartbeat API medlens relies on knowingly."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _parent_run(config, out: Path, record: dict):
    """The tune's own MLflow run (the trials nest under it), or None without MLflow."""
    from medlens.engine.tracking import Tracker, default_tracking_uri

    uri = config.train.tracking_uri or default_tracking_uri(out)
    if uri.lower() == "none":
        return None
    return Tracker(uri, out, {"tune": {k: record[k] for k in ("data", "monitor", "space")}},
                   tags={"medlens.kind": "tune"})


class _Sources:
    """Resolved data, once per data config (a searched ``data.size`` resolves each size once)."""

    def __init__(self):
        self._cache = {}

    def get(self, data):
        from medlens.engine.config import resolve_data

        key = (data.spec, data.root, data.size, data.split_seed, data.ratios, data.channels, data.folds, data.fold)
        if key not in self._cache:
            self._cache[key] = resolve_data(data)
        return self._cache[key]


class _Runner:
    """The loop of one worker: claim a trial, train it, report it, until the count or the budget is reached."""

    def __init__(self, study, storage, base: dict, space, out: Path, config, sources: _Sources, *, budget_s, trials,
                 parent_run_id, say, started: float):
        from medlens.engine.tracking import default_tracking_uri

        self.study, self.storage, self.base, self.space, self.out = study, storage, base, space, out
        self.sources = sources
        self.monitor = config.train.monitor
        self.budget_s, self.trials, self.say = budget_s, trials, say
        self.parent_run_id = parent_run_id
        self.tracking_uri = config.train.tracking_uri or default_tracking_uri(out)
        self.start = started
        self.overheads: list[float] = []
        self.walls: list[float] = []
        self.stop = False

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self.start

    def _finished(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _share(self) -> float | None:
        """Training seconds the next trial may take (None: no budget), or 0 when none is left."""
        if self.budget_s is None:
            return None
        left = self.budget_s - self.wall_s
        trials_left = max(1, self.trials - self._finished()) if self.trials else 1
        share = left / trials_left
        # What a trial spends outside training (model set-up, scoring val and test, MLflow), as
        # measured on this worker's trials; before the first one, a tenth of the share is held back.
        overhead = statistics.median(self.overheads) if self.overheads else 0.1 * share
        return max(0.0, share - overhead)

    def run(self) -> None:
        while not self.stop:
            if self.trials is not None and self._finished() >= self.trials:
                self.say(f"tune: {self._finished()} trials finished (--trials {self.trials})")
                return
            share = self._share()
            if share is not None and share < 1.0:
                self.say(f"tune: budget of {self.budget_s:.0f} s spent ({self.wall_s:.0f} s): no further trial")
                return
            if share is not None and self.trials is None and self.walls and share < 0.5 * statistics.median(self.walls):
                # Without --trials a trial runs its epochs; one started with under half the time the
                # others took would be cut short and compared unfairly with them.
                self.say(f"tune: {share:.0f} s of the budget left, under half a trial's "
                         f"{statistics.median(self.walls):.0f} s: no further trial")
                return
            self.study.optimize(lambda trial, share=share: self._objective(trial, share), n_trials=1,
                                catch=(_Surplus,), gc_after_trial=False)

    def _objective(self, trial, share: float | None) -> float:
        import optuna
        from optuna.trial import TrialState

        from medlens.engine import train as engine
        from medlens.engine.config import config_from_dict
        from medlens.engine.tracking import read_history
        from medlens.workflows.tune_space import trial_config_dict

        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        if self.trials is not None:
            ahead = [t for t in self.study.get_trials(deepcopy=False, states=(
                TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)) if t.number < trial.number]
            if len(ahead) >= self.trials:
                self.stop = True
                trial.set_user_attr("surplus", True)
                raise _Surplus(f"trial {trial.number} is past --trials {self.trials}")
        values = self.space.suggest(trial)
        raw = trial_config_dict(self.base, self.space.overrides(values))
        raw["train"].update(tracking_uri=self.tracking_uri, progress=False, members=1)
        if share is not None:
            limit = raw["train"].get("max_seconds")
            raw["train"]["max_seconds"] = round(share if limit is None else min(limit, share), 1)
        config = config_from_dict(raw)
        run = RunFolder(self.out).trial(trial.number)
        trial.set_user_attr("run_dir", str(run.path.resolve()))
        retry_of = self.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        self.say(f"trial {trial.number}{f' (retry of {retry_of})' if retry_of is not None else ''}: {shown}")
        pruned, running = [], []
        better = max if self.monitor != "val_loss" else min

        def on_epoch(epoch: int, metrics: dict) -> bool:
            # The objective is the best epoch's value (the run keeps that checkpoint), so the pruner
            # is fed the best so far: trials are compared on what they would return if stopped now.
            value = metrics.get(self.monitor, math.nan)
            if not math.isfinite(value):
                return False
            running.append(value if not running else better(running[-1], value))
            trial.report(running[-1], step=epoch + 1)
            if epoch + 1 < config.train.epochs and trial.should_prune():  # the last epoch has nothing to save
                pruned.append(epoch)
                return True
            return False

        tags = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else None
        start = time.monotonic()
        result = engine.train(config, run.path, source=self.sources.get(config.data), on_epoch=on_epoch,
                              tracking_tags=tags)
        wall = time.monotonic() - start
        self.overheads.append(max(0.0, wall - result.metrics["seconds"]))
        self.walls.append(wall)
        history = read_history(run.history)
        scores = [row[self.monitor] for row in history if math.isfinite(row[self.monitor])]
        trial.set_user_attr("epochs_run", result.metrics["epochs_run"])
        trial.set_user_attr("best_epoch", result.metrics["best_epoch"])
        trial.set_user_attr("train_seconds", round(result.metrics["seconds"], 2))
        trial.set_user_attr("val", result.metrics["val"])
        best = (max(scores) if self.monitor != "val_loss" else min(scores)) if scores else math.nan
        stopped = "" if not config.train.max_seconds or result.metrics["epochs_run"] >= config.train.epochs else \
            f", stopped by its time share of {config.train.max_seconds:.0f} s"
        if pruned:
            self.say(f"trial {trial.number}: pruned after epoch {pruned[0] + 1} ({self.monitor} best {best:.4f}, "
                     f"{wall:.0f} s)")
            raise optuna.TrialPruned()
        self.say(f"trial {trial.number}: {self.monitor} {best:.4f} ({result.metrics['epochs_run']} epochs, "
                 f"{wall:.0f} s{stopped})")
        write_summary(self.study, self.out, self.space, self.base, wall_s=self.wall_s, budget_s=self.budget_s,
                      pending=(trial.number, best))
        return best


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_summary(study, out: Path, space, base: dict, *, wall_s: float, budget_s: float | None,
                  pending: tuple[int, float] | None = None) -> dict:
    """``tune_summary.json`` from the study: the best trial and its config, every trial's state,
    value, duration and epochs, and the counts per state (a claim past ``--trials`` is left out).

    Args:
        pending: ``(number, value)`` of a trial whose value is known but not yet stored (the
            summary written just before Optuna records it).
    """
    from optuna.trial import TrialState

    from medlens.engine.config import config_from_dict
    from medlens.workflows.tune_space import trial_config_dict

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        state, value = t.state.name, t.value
        if pending is not None and t.number == pending[0]:
            state, value = TrialState.COMPLETE.name, pending[1]
        if state == TrialState.PRUNED.name and t.intermediate_values:  # the best so far when it was stopped
            value = t.intermediate_values[max(t.intermediate_values)]
        duration = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else None)
        rows.append({"number": t.number, "state": state, "value": value, "params": dict(t.params),
                     "duration_s": duration, "epochs_run": t.user_attrs.get("epochs_run"),
                     "best_epoch": t.user_attrs.get("best_epoch"), "val": t.user_attrs.get("val"),
                     "run_dir": t.user_attrs.get("run_dir"), "host": t.user_attrs.get("host"),
                     "retry_of": t.system_attrs.get("failed_trial"),
                     "curve": {str(k): v for k, v in sorted(t.intermediate_values.items())}})
    counts = {s: sum(r["state"] == s.upper() for r in rows) for s in ("complete", "pruned", "fail", "running",
                                                                     "waiting")}
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None and math.isfinite(r["value"])]
    record = study.user_attrs["medlens"]
    best = None
    if done:
        pick = max if record["direction"] == "maximize" else min
        top = pick(done, key=lambda r: r["value"])
        raw = trial_config_dict(base, space.overrides(top["params"]))
        config = config_from_dict(raw).to_dict()
        best = {"number": top["number"], "value": top["value"], "params": top["params"],
                "run_dir": top["run_dir"], "config": config}
    summary = {"schema": STUDY_SCHEMA, "study": study.study_name, "data": record["data"]["spec"],
               "monitor": record["monitor"], "direction": record["direction"], "space": record["space"],
               "counts": counts, "best": best, "trials": rows, "wall_s": round(wall_s, 1), "budget_s": budget_s}
    folder = RunFolder(out)
    if folder.refit.is_finished:  # kept from an earlier --refit
        summary["refit"] = folder.refit.read_metrics().get("refit")
    write_json(folder.tune_summary, summary)
    if best is not None:  # with the summary, so a kill never leaves a best.yaml older than it
        from medlens.engine.config import write_yaml

        write_yaml(config_from_dict(best["config"]), folder.best_config)
    return summary


def format_summary(summary: dict) -> str:
    """The printed table: one row per trial, the best marked."""
    from medlens._table import format_table

    names = list(summary["space"])
    best = summary["best"]["number"] if summary["best"] else None
    rows = []
    for r in summary["trials"]:
        value = "-" if r["value"] is None or not math.isfinite(r["value"]) else f"{r['value']:.4f}"
        rows.append([f"{r['number']}{' *' if r['number'] == best else ''}", r["state"].lower(), value,
                     str(r["epochs_run"] if r["epochs_run"] is not None else "-"),
                     "-" if r["duration_s"] is None else f"{r['duration_s']:.0f}",
                     *(_short(r["params"][n]) if n in r["params"] else "-" for n in names)])
    return format_table(["trial", "state", summary["monitor"], "epochs", "seconds", *names], rows)


def refit_best(out: str | os.PathLike, summary: dict, sources: _Sources | None = None, *, say=print) -> dict:
    """Train the best trial's config on train + val and score the final model on test, once.

    The refit trains as many epochs as the best trial took to its best epoch, on the same
    schedule (the trial's ``train.epochs``), then stops: with validation folded into training
    there is no held-out split left to choose a checkpoint, so the model after that epoch is the
    result. Its ``checkpoints/best`` is that model, and its ``metrics.json`` that model's
    scores (``val`` is then training data, named so in ``refit``).

    Returns:
        ``{"run_dir", "epochs", "test": {"acc", "auc", "n"}}`` (also in the refit's ``metrics.json``).
    """
    import shutil

    from medlens.engine import train as engine
    from medlens.engine.checkpoint import load_model
    from medlens.engine.config import config_from_dict
    from medlens.engine.run_folder import sidecar

    folder = RunFolder(out)
    refit = folder.refit
    if refit.is_finished and "refit" in (metrics := refit.read_metrics()):
        say(f"refit: finished earlier, kept ({refit.path})")
        return metrics["refit"]
    if refit.path.exists():  # an interrupted refit starts again: it is one short run
        shutil.rmtree(refit.path)
    best = summary["best"]
    config = config_from_dict(best["config"])
    config = replace(config, train=replace(config.train, early_stop=None, max_seconds=None))
    epochs = _trial_best_epoch(summary) + 1
    sources = sources or _Sources()
    source = pooled_train_val(sources.get(config.data))
    say(f"refit: trial {best['number']}'s config on train + val ({len(source.splits['train'])} images), "
        f"{epochs} epochs, then test once")
    engine.train(config, refit.path, source=source, on_epoch=lambda epoch, _: epoch + 1 >= epochs)
    for name in ("best",):  # the final model is the result: no held-out split chose another
        with atomic_path(refit.checkpoint(name)) as tmp:
            shutil.copyfile(refit.last, tmp)
        with atomic_path(sidecar(refit.checkpoint(name))) as tmp:
            shutil.copyfile(refit.last_card, tmp)
    model, card = load_model(refit.best)
    scores = engine.score(model, card, source, source.info.task)
    result = {"run_dir": str(refit.path.resolve()), "trial": best["number"], "epochs": epochs,
              "test": scores["test"]}
    metrics = refit.read_metrics()
    metrics.update(best_epoch=epochs - 1, val=scores["val"], test=scores["test"],
                   refit={**result, "note": "val was part of training; test scored once, on the final model"})
    write_json(refit.metrics, metrics)
    say(f"refit: test ACC {scores['test']['acc']:.4f} AUC {scores['test']['auc']:.4f} -> {refit.path}")
    return result


def _trial_best_epoch(summary: dict) -> int:
    number = summary["best"]["number"]
    row = next(r for r in summary["trials"] if r["number"] == number)
    return int(row["best_epoch"])


def pooled_train_val(source):
    """``source`` with validation folded into training (val kept as is, for the engine's per-epoch
    bookkeeping only; test untouched)."""
    import hashlib

    import numpy as np

    from medlens.data.source import TensorSplit

    train, val = source.splits["train"], source.splits["val"]
    pool = TensorSplit(np.concatenate([np.asarray(train.images), np.asarray(val.images)]),
                       np.concatenate([train.labels, val.labels]), np.concatenate([train.ids, val.ids]))
    method = f"{source.split_method}+train+val"
    fingerprint = hashlib.sha256(f"{source.fingerprint}|{method}".encode()).hexdigest()[:24]
    return replace(source, splits={"train": pool, "val": val, "test": source.splits["test"]}, split_method=method,
                   fingerprint=fingerprint)


def study_from_summary(summary: dict):
    """An in-memory Optuna study holding the summary's finished trials (for Optuna's figures),
    so a report needs neither the storage nor its credentials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    from medlens.workflows.tune_space import parse_space

    space = parse_space(summary["space"], source="of the summary")
    distributions = {}
    for p in space.params:
        if p.kind == "choice":
            distributions[p.name] = CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            distributions[p.name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            distributions[p.name] = FloatDistribution(float(p.low), float(p.high), log=p.kind == "log", step=p.step)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _quiet_optuna():
        study = optuna.create_study(direction=summary["direction"], study_name=summary["study"])
        for row in summary["trials"]:
            if row["state"] not in ("COMPLETE", "PRUNED") or set(row["params"]) != set(distributions):
                continue
            value = row["value"]
            if value is None or not math.isfinite(value):
                continue
            study.add_trial(create_trial(
                state=TrialState[row["state"]], value=value if row["state"] == "COMPLETE" else None,
                params=row["params"], distributions=distributions,
                intermediate_values={int(k): v for k, v in row["curve"].items()}))
    return study
