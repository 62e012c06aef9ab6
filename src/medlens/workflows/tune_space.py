"""The search space of ``medlens tune``: which config fields a trial draws, and from what.

A space file is a YAML mapping of dotted config fields (the sections and keys of
:class:`~medlens.engine.config.RunConfig`, plus ``model.kwargs.<name>``) to what each trial draws::

    optim.lr: {log: [1.0e-4, 1.0e-2]}        # float, log-uniform between the two ends
    optim.weight_decay: {log: [1.0e-6, 1.0e-3]}
    augment.rotate: {uniform: [0, 20]}        # float, uniform (optional step: 5)
    train.epochs: {int: [5, 20]}              # integer (optional step: 5, log: true)
    model.name: [resnet_compact, cnn_small]   # one of a list
    model.kwargs.width: [16, 24, 32]
    data.size: [28, 64]
    data.class_weights: balanced              # a plain value: fixed for every trial

Everything is checked before the first trial starts: unknown sections and fields, fields a search
must not move (the dataset, its split, the seed, the objective, the budget), malformed ranges,
and every value and range end against the config's own checks (a negative learning rate fails
here, not in trial 7). :func:`parse_space` returns a :class:`Space`; :meth:`Space.suggest` draws
one trial's values through Optuna and :meth:`Space.overrides` turns them into nested config
overrides.

Example:
    >>> space = parse_space({"optim.lr": {"log": [1e-4, 1e-2]}, "model.kwargs.width": [16, 32]})
    >>> [p.name for p in space.params]
    ['optim.lr', 'model.kwargs.width']
    >>> space.overrides({"optim.lr": 0.001, "model.kwargs.width": 16})
    {'optim': {'lr': 0.001}, 'model': {'kwargs': {'width': 16}}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Fields a search must not move: the dataset and its split (the objective would be measured on
# another validation set each trial), the seed (tuning it fits the validation noise), the
# objective itself, and what the tune sets per trial (the time share, MLflow, the progress bar).
FROZEN = {
    "data.spec": "the dataset is the tune's DATA",
    "data.root": "where the data lives is not a hyperparameter",
    "data.split_seed": "another split means another validation set, so trials would not be comparable",
    "data.ratios": "another split means another validation set, so trials would not be comparable",
    "data.folds": "cross-validation folds change the validation set",
    "data.fold": "cross-validation folds change the validation set",
    "train.seed": "tuning the seed fits the validation noise",
    "train.monitor": "the objective is --monitor",
    "train.max_seconds": "each trial's time share comes from --budget",
    "train.tracking_uri": "every trial logs where the tune does",
    "train.progress": "not a hyperparameter",
    "train.members": "a trial trains one model; --refit can train an ensemble of the best config",
}
KINDS = ("log", "uniform", "int")
SPACE_NAMES = ("default",)

# The default space (``--space default``): the fast recipe's knobs, each centred on the fast
# recipe's own value (lr 3e-3, weight decay 1e-4, width 24, batch 64, rotation 10 degrees) and
# reaching about 3x either side, so the search starts from a known-good point on small MedMNIST
# sets and can move away from it where the data asks. The architecture is the fast recipe's, so
# every trial costs about what one fast run does.
DEFAULT_SPACE: dict[str, Any] = {
    "optim.lr": {"log": [1.0e-3, 1.0e-2]},
    "optim.weight_decay": {"log": [1.0e-5, 1.0e-3]},
    "model.kwargs.width": [16, 24, 32],
    "data.batch_size": [32, 64, 128],
    "augment.rotate": {"uniform": [0.0, 20.0]},
}


@dataclass(frozen=True)
class Param:
    """One searched field.

    Attributes:
        name: the dotted config field (``optim.lr``, ``model.kwargs.width``).
        kind: ``log``, ``uniform`` or ``int`` for a range; ``choice`` for a list.
        low, high: the range's ends (ranges only).
        step: the range's step (``uniform`` and ``int``; None: continuous / 1).
        log: an ``int`` range drawn log-uniformly.
        choices: the list's values (``choice`` only).
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()

    def values_to_check(self) -> list:
        """The values that the config must accept: every choice, or both ends of a range."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def suggest(self, trial):
        """This field's value for an Optuna ``trial``."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.kind == "log",
                                   step=self.step)


@dataclass(frozen=True)
class Space:
    """A checked search space: the searched :class:`Param` list and the fixed values.

    Attributes:
        params: searched fields, in file order.
        fixed: ``{dotted field: value}`` set the same in every trial.
        source: where the space came from (``default`` or the file's path), for messages.
    """

    params: tuple[Param, ...]
    fixed: dict = field(default_factory=dict)
    source: str = "default"

    def to_dict(self) -> dict:
        """The space as a space file would hold it (what ``tune.json`` and the study record)."""
        out: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "choice":
                out[p.name] = list(p.choices)
            else:
                spec: dict[str, Any] = {p.kind: [p.low, p.high]}
                if p.step is not None:
                    spec["step"] = p.step
                if p.log:
                    spec["log"] = True
                out[p.name] = spec
        out.update(self.fixed)
        return out

    def suggest(self, trial) -> dict:
        """``{dotted field: value}`` of one trial: every searched field drawn through ``trial``."""
        return {p.name: p.suggest(trial) for p in self.params}

    def overrides(self, values: dict) -> dict:
        """Nested config overrides of the fixed values and ``values`` (``{dotted field: value}``)."""
        out: dict = {}
        for name, value in {**self.fixed, **values}.items():
            node = out
            *parents, leaf = name.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out


def load_space(space: str | Path) -> Space:
    """The space named ``default``, or read from a YAML file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid YAML or not a valid space (see :func:`parse_space`).
    """
    if str(space) in SPACE_NAMES:
        return parse_space(DEFAULT_SPACE, source="default")
    import yaml

    from medlens.engine.config import _yaml_loader

    path = Path(space)
    if not path.is_file():
        raise FileNotFoundError(f"space file {path} does not exist (or use --space default)")
    try:
        raw = yaml.load(path.read_text(), Loader=_yaml_loader())
    except yaml.YAMLError as err:
        raise ValueError(f"space file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_space(raw, source=str(path))


def parse_space(raw, *, source: str = "default") -> Space:
    """Check a space mapping field by field (see the module docstring) and build the :class:`Space`.

    Args:
        raw: ``{dotted field: list | {log|uniform|int: [low, high], step?, log?} | value}``.
        source: named in error messages.

    Raises:
        ValueError: not a mapping, an empty space, an unknown or frozen field, a malformed range.
    """
    from medlens.engine.config import SECTIONS

    where = f"space {source}" if source == "default" else f"space file {source}"
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where} must be a non-empty mapping of config fields to ranges, e.g. "
                         "'optim.lr: {log: [1.0e-4, 1.0e-2]}'")
    params, fixed = [], {}
    for name, spec in raw.items():
        name = str(name)
        parts = name.split(".")
        if len(parts) < 2 or parts[0] not in SECTIONS:
            raise ValueError(f"{where}: {name!r} is not a config field; fields are SECTION.KEY with SECTION one "
                             f"of {', '.join(SECTIONS)} (e.g. optim.lr, model.kwargs.width)")
        section, key = parts[0], parts[1]
        valid = [f.name for f in fields(SECTIONS[section])]
        if key not in valid:
            raise ValueError(f"{where}: unknown field {name!r}; valid keys of {section}: {', '.join(valid)}")
        if (len(parts) > 2) != (name.startswith("model.kwargs.")) or (len(parts) > 3):
            raise ValueError(f"{where}: {name!r} is not a config field; only model.kwargs takes a third part "
                             f"(model.kwargs.width)")
        if name == "model.kwargs":
            raise ValueError(f"{where}: search model.kwargs one keyword at a time (model.kwargs.width: [16, 32])")
        if name in FROZEN:
            raise ValueError(f"{where}: {name} cannot be searched: {FROZEN[name]}")
        if isinstance(spec, list):
            if not spec:
                raise ValueError(f"{where}: {name} lists no values; give at least one")
            if any(isinstance(v, (dict, list)) for v in spec):
                raise ValueError(f"{where}: {name} lists a nested value; choices must be plain values")
            params.append(Param(name, "choice", choices=tuple(spec)))
        elif isinstance(spec, dict):
            params.append(_range(where, name, spec))
        else:
            fixed[name] = spec
    if not params:
        raise ValueError(f"{where} searches nothing: every field is a fixed value; give at least one list or range")
    return Space(tuple(params), fixed, source)


def _range(where: str, name: str, spec: dict) -> Param:
    # ``log`` names a float range, or with ``int`` the flag that draws the integers log-uniformly.
    kinds = ["int"] if "int" in spec and isinstance(spec.get("log", False), bool) else [k for k in spec if k in KINDS]
    extra = sorted(set(spec) - set(KINDS) - {"step", "log"})
    if len(kinds) != 1 or extra:
        raise ValueError(f"{where}: {name} must be one of {{log: [low, high]}}, {{uniform: [low, high]}}, "
                         f"{{int: [low, high]}} (with optional step, and log for int) or a list; got {spec!r}")
    kind = kinds[0]
    ends = spec[kind]
    numbers = isinstance(ends, list) and len(ends) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in ends)
    if not numbers:
        raise ValueError(f"{where}: {name}: {kind} needs [low, high], two finite numbers; got {ends!r}")
    low, high = ends
    if kind == "int" and not all(isinstance(v, int) for v in ends):
        raise ValueError(f"{where}: {name}: int needs integer ends; got {ends!r}")
    if not low < high:
        raise ValueError(f"{where}: {name}: low must be below high; got [{low}, {high}]")
    if kind == "uniform" and "log" in spec:
        raise ValueError(f"{where}: {name}: a uniform range is not log-scaled; use {{log: [low, high]}} instead")
    log = spec.get("log", False) if kind == "int" else kind == "log"
    if not isinstance(log, bool):
        raise ValueError(f"{where}: {name}: log must be true or false; got {log!r}")
    if log and low <= 0:
        raise ValueError(f"{where}: {name}: a log range needs low > 0; got {low}")
    step = spec.get("step")
    if step is not None:
        if kind == "log" or log:
            raise ValueError(f"{where}: {name}: a log range takes no step")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0 \
                or (kind == "int" and not isinstance(step, int)):
            raise ValueError(f"{where}: {name}: step must be a positive {'integer' if kind == 'int' else 'number'}; "
                             f"got {step!r}")
    return Param(name, kind, low=low, high=high, step=step, log=kind == "int" and log)


# Data fields that change what is loaded: each of their values is loaded once before the first trial.
LOADING_FIELDS = ("data.size", "data.channels")


def check_space(space: Space, base: dict, *, source=None, sources=None) -> None:
    """Every choice and range end of ``space`` must make a valid config on top of ``base``.

    Args:
        space: the parsed space.
        base: the base config as a nested dict (:meth:`RunConfig.to_dict`).
        source: the resolved data of ``base``; when given, each value of a model field is also
            checked by building the model (an unknown keyword of the model fails here).
        sources: ``DataConfig -> Source`` (cached); when given, each value of a field that
            changes what is loaded (``data.size``, ``data.channels``) is loaded once here, so
            missing data fails before the first trial, not in one of them.

    Raises:
        ValueError: the first value the config, the model or the data refuses, naming the field.
    """
    from medlens.engine.config import config_from_dict
    from medlens.models import get_model_spec

    where = f"space {space.source}" if space.source == "default" else f"space file {space.source}"
    model_names = next((list(p.choices) for p in space.params if p.name == "model.name"), [None])
    for param in space.params:
        for value in param.values_to_check():
            # A model keyword must suit every model the space can draw with it.
            names = model_names if param.name.startswith("model.kwargs.") else [None]
            for name in names:
                values = {param.name: value, **({"model.name": name} if name is not None else {})}
                try:
                    cfg = config_from_dict(trial_config_dict(base, space.overrides(values)))
                    get_model_spec(cfg.model.name)
                    if source is not None and param.name.startswith("model."):
                        from medlens.engine.train import model_and_loss

                        model_and_loss(cfg, source)
                    if sources is not None and param.name in LOADING_FIELDS:
                        sources(cfg.data)
                except (ValueError, TypeError, OSError) as err:
                    with_model = f" (with model.name {name!r})" if name is not None else ""
                    raise ValueError(f"{where}: {param.name} = {value!r}{with_model} is not valid: {err}") from None


def trial_config_dict(base: dict, overrides: dict) -> dict:
    """The nested config of one trial: ``base`` with ``overrides`` merged in.

    ``model.kwargs`` merges key by key, so a searched width keeps the base's other keywords;
    when a trial draws another model than the base's, the base's keywords (made for that
    model) are dropped and only the drawn ones are kept.
    """
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in base.items()}
    for section, values in overrides.items():
        merged = dict(out.get(section) or {})
        for key, value in values.items():
            if section == "model" and key == "kwargs":
                continue
            merged[key] = value
        if section == "model":
            same_model = merged.get("name") == (base.get("model") or {}).get("name")
            kwargs = dict((base.get("model") or {}).get("kwargs") or {}) if same_model else {}
            kwargs.update(values.get("kwargs", {}))
            merged["kwargs"] = kwargs
        out[section] = merged
    return out
