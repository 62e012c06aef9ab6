"""``train(config, out)``: the one call that trains whatever a config describes.

A single model goes to :func:`medlens.engine.train.train`; ``train.members`` K > 1 to the
ensemble workflow. With the auto recipe's plan (:func:`medlens.engine.auto.build_train_config`)
its choices and reasons are written to the run folder's ``auto.json``.

Example:
    >>> from medlens.engine.auto import build_train_config
    >>> config, plan = build_train_config({"data": {"spec": "breastmnist"}}, recipe="auto",
    ...                                   budget="2m")                          # doctest: +SKIP
    >>> result = train(config, "runs/breast-auto", plan=plan)                   # doctest: +SKIP
"""

from __future__ import annotations

import os

from medlens.engine.run_folder import RunFolder


def train(config, out: str | os.PathLike, *, plan=None):
    """Train ``config`` (one model or an ensemble) into the new run folder ``out``.

    Args:
        config: a :class:`~medlens.engine.config.RunConfig`.
        out: the run folder to create.
        plan: the :class:`~medlens.engine.auto.AutoPlan` the config was built from, written to
            ``auto.json`` (None: not an auto run).

    Returns:
        :class:`~medlens.engine.train.TrainResult`.

    Raises:
        FileExistsError: ``out`` already holds a run.
        ValueError: a bad option, named in the message.
    """
    from medlens.engine import train as engine

    if config.train.members > 1:
        from medlens.workflows.ensemble import train_ensemble

        result = train_ensemble(config, out)
    else:
        result = engine.train(config, out)
    if plan is not None:
        write_plan(out, plan)
    return result


def resume(run_dir: str | os.PathLike):
    """Continue an interrupted run or ensemble (see :func:`medlens.engine.train.resume`)."""
    from medlens.engine import train as engine
    from medlens.engine.config import load_run_config

    config = load_run_config(run_dir)
    if config.train.members > 1:
        from medlens.workflows.ensemble import train_ensemble

        return train_ensemble(config, run_dir, resume=True)
    return engine.resume(run_dir)


def write_plan(run_dir: str | os.PathLike, plan) -> None:
    """The auto plan's choices and their reasons, as ``auto.json`` in ``run_dir``."""
    from medlens._io import write_json

    write_json(RunFolder(run_dir).auto_plan, plan.to_dict())
