"""Dataset specs and the source registry: ``parse_spec("folder:x.zip@128")`` -> :class:`DatasetSpec`.

A spec names a source by its prefix, as timm's ``create_dataset`` does: ``folder:PATH``,
``npz:FILE.npz``; a spec without a prefix is a MedMNIST name (``breastmnist``,
``breastmnist@64``), the prefix-less default source. An optional ``@SIZE`` at the end asks for
an image edge in pixels. Each source is one :class:`DataSource` record, added with
:func:`register_source`: its prefix, its resolver (target and size -> ``Source``) and the facts
that code outside ``medlens.data`` asks about instead of reading the spec string (does it decode
image files, so that any size and channel count can be asked for; its default size; what is
known about a dataset before loading it).

The built-in sources (MedMNIST names, ``folder:``, ``npz:``) are registered at the end of this
module, with their resolvers named by dotted path (in :mod:`medlens.data.source`) and imported
when a spec is resolved: listing the sources (``medlens datasets``) imports no numpy.

Example:
    >>> spec = parse_spec("folder:images.zip@128")
    >>> spec.source.prefix, spec.target, spec.size, spec.source.decodes_images
    ('folder', 'images.zip', 128, True)
    >>> parse_spec("breastmnist").known_info().spatial_dims
    2
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medlens.data.registry import DatasetInfo, get_dataset_info, list_datasets

if TYPE_CHECKING:
    from medlens.data.source import Source

# A source prefix: what comes before the first ':' of a spec. MedMNIST names hold no ':'.
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_VALID_PREFIX = re.compile(r"[a-z][a-z0-9_]*")
DEFAULT_FOLDER_SIZE = 64


@dataclass(frozen=True)
class ResolveOptions:
    """The options of :func:`medlens.data.source.resolve` that a resolver may use.

    Each source reads the ones that apply to it and ignores the rest.

    Attributes:
        root: data root for downloadable files (None: ``$MEDLENS_DATA``, else ``~/.medlens/data``).
        download_missing: download a missing file (else ``FileNotFoundError``).
        verify: check a downloaded file's MD5.
        seed: seed of any split medlens makes.
        ratios: (train, val, test) ratios for data without its own split.
        channels: sources that decode images: force 1 or 3 channels (None: from the images).
        skip_bad: sources that decode images: skip unreadable files and list them.
        mmap_threshold: bytes above which arrays are memory-mapped.
        source_options: the table and task options of :func:`check_source_options` (CSV
            manifest columns, ``group_regex``, ``task``, ``class_order``), already checked.
        unsplit: sources that split their data (``folder:``, ``csv:``): make no split, every image in
            ``train`` (``evaluate --split all`` on an external dataset: nothing to carve).
    """

    root: str | os.PathLike | None
    download_missing: bool
    verify: bool
    seed: int
    ratios: tuple[float, float, float]
    channels: int | None
    skip_bad: bool
    mmap_threshold: int
    source_options: Mapping[str, object] = field(default_factory=dict)
    unsplit: bool = False


# The options a CSV manifest or a folder can be given (spec-independent, so they live in the
# run's config.yaml as data.source_options and `evaluate RUN` reloads the same data):
#   image_col      column holding each image's path, relative to the CSV's folder
#   image_pattern  path built from columns, e.g. images/{image_id}.jpg (instead of image_col)
#   label_col      label column, or a list of 0/1 columns (multi-label)
#   label_sep      separator of several labels in one cell (multi-label), e.g. "|"
#   split_col      column of train/val/test names (the dataset's own split)
#   group_col      patient (or lesion) id: every group stays in one split and fold
#   group_regex    folders: a regex on the file name whose first group (or match) is the group id
#   task           binary, multiclass, ordinal or multilabel (default: inferred from the labels)
#   class_order    class names in label-id order (ordinal grades that do not sort by name)
SOURCE_OPTION_KEYS = ("image_col", "image_pattern", "label_col", "label_sep", "split_col", "group_col",
                      "group_regex", "task", "class_order")
TASK_NAMES = ("binary", "multiclass", "ordinal", "multilabel")


def check_source_options(options: Mapping[str, object] | None) -> dict[str, object]:
    """The table and task options, checked and normalised (lists for ``label_col`` and ``class_order``).

    Args:
        options: ``{key: value}`` with keys from :data:`SOURCE_OPTION_KEYS`; None or empty values
            are dropped.

    Returns:
        A new dict holding only the given options; ``label_col`` and ``class_order`` as lists
        of strings (a comma-separated string is split).

    Raises:
        ValueError: an unknown key (the valid ones listed), a value that is not text, an
            unknown task, or a ``group_regex`` that does not compile.

    Example:
        >>> check_source_options({"label_col": "a,b", "task": "multilabel", "split_col": None})
        {'label_col': ['a', 'b'], 'task': 'multilabel'}
    """
    out: dict[str, object] = {}
    for key, value in (options or {}).items():
        if key not in SOURCE_OPTION_KEYS:
            raise ValueError(f"unknown data source option {key!r}; valid: {', '.join(SOURCE_OPTION_KEYS)}")
        if value is None or value == "" or value == []:
            continue
        if key in ("label_col", "class_order"):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(v, (str, int)) for v in items):
                raise ValueError(f"data source option {key} must be a name or a list of names; got {value!r}")
            out[key] = [str(v).strip() for v in items if str(v).strip()]
            continue
        if not isinstance(value, str):
            raise ValueError(f"data source option {key} must be text; got {value!r}")
        if key == "task" and value not in TASK_NAMES:
            raise ValueError(f"task must be one of {', '.join(TASK_NAMES)}; got {value!r}")
        if key == "group_regex":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"group_regex {value!r} is not a valid regular expression ({exc})") from None
        out[key] = value
    return out


@dataclass(frozen=True)
class DataSource:
    """What the registry knows about one kind of dataset source.

    Attributes:
        prefix: the spec prefix without its colon (``"folder"`` for ``folder:PATH``); ``""`` for
            the prefix-less default source (MedMNIST names).
        resolver: ``resolver(target, *, size, options) -> Source``: ``target`` is the spec
            without prefix and size (a path, a name), ``size`` the edge in pixels (the spec's,
            the caller's, else ``default_size``), ``options`` a :class:`ResolveOptions`. Or its
            dotted path, ``"package.module:function"``, imported when a spec is first resolved
            (so that registering and listing the source import nothing heavy).
        usage: how a spec of this source reads, for messages (``"folder:PATH"``).
        description: one line for ``medlens datasets``.
        default_size: edge in pixels when neither the spec nor the caller gives one; None: the
            data's own size.
        decodes_images: the source decodes image files and resizes them at load, so any size
            (a default that may be changed) and the ``channels`` option apply.
        known_info: ``known_info(target) -> DatasetInfo``, the facts known before loading (a
            registry's); None when only loading tells.
    """

    prefix: str
    resolver: Callable[..., Source] | str
    usage: str
    description: str
    default_size: int | None = None
    decodes_images: bool = False
    known_info: Callable[[str], DatasetInfo] | None = None

    def resolve(self, target: str, *, size: int | None, options: ResolveOptions) -> Source:
        """The resolved ``Source`` of ``target`` (the resolver is imported first when given by dotted path).

        Args:
            target: the spec without prefix and size.
            size: edge in pixels, or None for the data's own (see :attr:`resolver`).
            options: the :class:`ResolveOptions`.

        Returns:
            What the resolver returns, a :class:`~medlens.data.source.Source`.
        """
        resolver = self.resolver
        if isinstance(resolver, str):
            import importlib

            module, _, name = resolver.partition(":")
            resolver = getattr(importlib.import_module(module), name)
        return resolver(target, size=size, options=options)

    @property
    def origin(self) -> str:
        """The module that holds the resolver, for messages."""
        return self.resolver.partition(":")[0] if isinstance(self.resolver, str) else self.resolver.__module__


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed dataset spec.

    Attributes:
        text: the spec as given (stripped), for messages.
        source: the :class:`DataSource` its prefix names.
        target: the spec without prefix and size: a path for ``folder:``/``npz:``, a name for MedMNIST.
        size: the ``@SIZE`` in pixels, or None.
    """

    text: str
    source: DataSource
    target: str
    size: int | None

    def known_info(self) -> DatasetInfo | None:
        """The dataset's facts when the source knows them without loading (MedMNIST), else None.

        Raises:
            ValueError: the source knows its datasets and this one is not among them.
        """
        return None if self.source.known_info is None else self.source.known_info(self.target)


_SOURCES: dict[str, DataSource] = {}


def register_source(source: DataSource) -> DataSource:
    """Add ``source`` to the registry under its prefix.

    Args:
        source: the record; ``prefix`` lower case letters, digits and ``_`` (or ``""`` for the
            default source), ``usage`` starting with ``prefix:``.

    Returns:
        ``source``, unchanged.

    Raises:
        ValueError: the prefix is taken or malformed, ``usage`` does not show the prefix,
            ``default_size`` is not None or a positive integer, or a dotted-path resolver is
            not ``"module:function"``.

    Example:
        >>> def doc_resolver(target, *, size, options):
        ...     raise FileNotFoundError(target)
        >>> _ = register_source(DataSource("doc", doc_resolver, usage="doc:NAME", description="doc example"))
        >>> parse_spec("doc:x@32").size
        32
        >>> unregister_source("doc")
    """
    prefix = source.prefix
    if prefix and not _VALID_PREFIX.fullmatch(prefix):
        raise ValueError(f"source prefix {prefix!r} is not valid; use lower case letters, digits and '_', "
                         "starting with a letter")
    if prefix and not source.usage.startswith(f"{prefix}:"):
        raise ValueError(f"usage {source.usage!r} of source {prefix!r} must start with {prefix + ':'!r}")
    size = source.default_size
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"default_size {size!r} of source {prefix or 'default'!r} is not valid; "
                         "expected None or an integer >= 1")
    if isinstance(source.resolver, str) and not re.fullmatch(r"[\w.]+:\w+", source.resolver):
        raise ValueError(f"resolver {source.resolver!r} of source {prefix or 'default'!r} is not valid; "
                         "give a function or its dotted path 'package.module:function'")
    if prefix in _SOURCES:
        taken = _SOURCES[prefix]
        what = f"source {prefix + ':'!r}" if prefix else "the default (prefix-less) source"
        raise ValueError(f"{what} is already registered (by {taken.origin})")
    _SOURCES[prefix] = source
    return source


def unregister_source(prefix: str) -> None:
    """Remove the source registered under ``prefix`` (for tests and plugins).

    Raises:
        ValueError: no source has that prefix; the message lists the valid ones.
    """
    _SOURCES.pop(get_source(prefix).prefix)


def get_source(prefix: str) -> DataSource:
    """The :class:`DataSource` registered under ``prefix`` (``""``: the default source).

    Raises:
        ValueError: unknown prefix; the message lists the valid ones.

    Example:
        >>> get_source("npz").usage
        'npz:FILE.npz'
    """
    if prefix not in _SOURCES:
        raise ValueError(f"unknown dataset source {prefix + ':'!r}; valid: {_valid_text()}")
    return _SOURCES[prefix]


def list_sources() -> list[DataSource]:
    """Every registered source, in registration order (the default source first).

    Example:
        >>> [source.usage for source in list_sources()][1:]
        ['folder:PATH', 'npz:FILE.npz', 'csv:FILE.csv']
    """
    return list(_SOURCES.values())


def parse_spec(spec: str) -> DatasetSpec:
    """Split a spec into its source, target and size: ``"folder:x.zip@128"`` -> folder, ``x.zip``, 128.

    An ``@`` that is part of an existing path (``folder:scans@home``) stays in the path.

    Args:
        spec: a dataset spec (see the module docstring).

    Returns:
        The :class:`DatasetSpec`.

    Raises:
        ValueError: an unknown source prefix (the valid ones listed), a size that is not a
            whole number, or an empty spec.

    Example:
        >>> parsed = parse_spec("breastmnist@64")
        >>> parsed.source.prefix, parsed.target, parsed.size
        ('', 'breastmnist', 64)
    """
    if not isinstance(spec, str):
        raise ValueError(f"a dataset spec is a string such as breastmnist or folder:PATH; got {spec!r}")
    text = spec.strip()
    head, sep, rest = text.partition(":")
    if sep and _PREFIX.fullmatch(head):
        if head not in _SOURCES:
            raise ValueError(f"unknown dataset source {head + ':'!r} in spec {spec!r}; valid: {_valid_text()}")
        source, target = _SOURCES[head], rest
    else:
        source, target = get_source(""), text
    size = None
    body, at, tail = target.rpartition("@")
    if at and tail.isdigit():
        target, size = body, int(tail)
    elif at and (not source.prefix or not Path(target).exists()):
        raise ValueError(f"bad size {tail!r} in dataset spec {spec!r}; the size after @ is a whole number "
                         "of pixels, e.g. breastmnist@64 or folder:images.zip@128")
    if not target:
        raise ValueError(f"empty dataset spec {spec!r}; use a name ({', '.join(list_datasets()[:3])}, ...), "
                         f"{' or '.join(s.usage for s in list_sources() if s.prefix)}")
    return DatasetSpec(text=text, source=source, target=target, size=size)


def _valid_text() -> str:
    """``folder:PATH, npz:FILE.npz, or a MedMNIST name such as breastmnist``, from the registry."""
    named = [source.usage for source in _SOURCES.values() if source.prefix]
    default = _SOURCES.get("")
    if default is not None:
        named.append(f"or {default.usage}")
    return ", ".join(named)


# The built-in sources; a new one (csv:PATH) is one more call. Their resolvers live in
# medlens.data.source (numpy, scikit-learn) and are imported when a spec is resolved.
register_source(DataSource(
    "", "medlens.data.source:_resolve_medmnist", usage="a MedMNIST name (breastmnist, breastmnist@64)",
    description="a MedMNIST dataset from the data root, downloaded if missing", default_size=28,
    known_info=get_dataset_info,
))
register_source(DataSource(
    "folder", "medlens.data.source:_resolve_folder", usage="folder:PATH",
    description="a directory or .zip of class folders, optionally under train/val/test",
    # No fixed default: 64 px for 2D images, 3D volumes their own size up to 64 (data.folder).
    default_size=None, decodes_images=True,
))
register_source(DataSource("npz", "medlens.data.source:_resolve_npz", usage="npz:FILE.npz",
                           description="a local file in the MedMNIST layout"))
register_source(DataSource(
    "csv", "medlens.data.source:_resolve_csv", usage="csv:FILE.csv",
    description="a CSV/TSV manifest: one row per image (path or id), label(s), optional split, patient, metadata",
    default_size=DEFAULT_FOLDER_SIZE, decodes_images=True,
))
