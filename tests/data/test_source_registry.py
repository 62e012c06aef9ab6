"""The source registry (medlens.data.spec): built-in prefixes, parsing, errors, a third-party source.

The toy source is registered by a fixture and unregistered after its test, so the registry is
the same for every other test.
"""

from __future__ import annotations

import numpy as np
import pytest

from medlens.cli import main
from medlens.data.registry import SPLITS, DatasetInfo, Task, get_dataset_info
from medlens.data.source import Source, TensorSplit, resolve
from medlens.data.spec import (
    DataSource,
    ResolveOptions,
    get_source,
    list_sources,
    parse_spec,
    register_source,
    unregister_source,
)


def _noop_resolver(target, *, size, options):
    raise AssertionError("not resolved in this test")


# --------------------------------------------------------------------------------------------
# built-in sources
# --------------------------------------------------------------------------------------------


def test_the_built_in_sources_in_registration_order():
    assert [source.prefix for source in list_sources()][:3] == ["", "folder", "npz"]
    assert [source.usage for source in list_sources()][1:3] == ["folder:PATH", "npz:FILE.npz"]
    assert {source.origin for source in list_sources()[:3]} == {"medlens.data.source"}


def test_a_resolver_given_by_dotted_path_is_imported_when_resolving(tmp_path):
    """A source may name its resolver as 'module:function' (the built-ins do: listing them stays light)."""
    record = register_source(DataSource("lazy", "medlens.data.source:_resolve_npz", usage="lazy:FILE.npz",
                                        description="npz under another prefix (test)"))
    try:
        arrays = {f"{split}_{kind}": value for split in SPLITS for kind, value in
                  (("images", np.zeros((4, 8, 8), np.uint8)), ("labels", np.array([[0], [1], [0], [1]])))}
        np.savez(tmp_path / "toy.npz", **arrays)
        source = resolve(f"lazy:{tmp_path / 'toy.npz'}")
        assert source.splits["train"].images.shape == (4, 1, 8, 8) and source.info.class_names == ("0", "1")
        assert record.origin == "medlens.data.source"
    finally:
        unregister_source("lazy")


@pytest.mark.parametrize(
    ("spec", "prefix", "target", "size"),
    [
        ("breastmnist", "", "breastmnist", None),
        (" breastmnist@64 ", "", "breastmnist", 64),
        ("folder:images.zip", "folder", "images.zip", None),
        ("folder:path/to/dir@128", "folder", "path/to/dir", 128),
        ("npz:files/breastmnist.npz", "npz", "files/breastmnist.npz", None),
    ],
)
def test_parse_spec_names_the_source_target_and_size(spec, prefix, target, size):
    parsed = parse_spec(spec)
    assert parsed.source is get_source(prefix)
    assert (parsed.target, parsed.size, parsed.text) == (target, size, spec.strip())


def test_facts_of_the_built_in_sources():
    medmnist, folder, npz = get_source(""), get_source("folder"), get_source("npz")
    assert (medmnist.default_size, medmnist.decodes_images) == (28, False)
    # folders choose at load: 64 px for 2D images, 3D volumes their own size up to 64 (test_folder_size.py)
    assert (folder.default_size, folder.decodes_images) == (None, True)
    assert (npz.default_size, npz.decodes_images) == (None, False)


def test_known_info_is_the_registry_entry_for_medmnist_and_none_for_local_data():
    assert parse_spec("organmnist3d@64").known_info() is get_dataset_info("organmnist3d")
    assert parse_spec("folder:images.zip").known_info() is None
    assert parse_spec("npz:x.npz").known_info() is None
    with pytest.raises(ValueError, match="unknown dataset 'nosuchmnist'"):
        parse_spec("nosuchmnist").known_info()


def test_an_at_inside_an_existing_path_stays_in_the_path(tmp_path):
    folder = tmp_path / "scans@home"
    folder.mkdir()
    parsed = parse_spec(f"folder:{folder}")
    assert (parsed.target, parsed.size) == (str(folder), None)
    assert parse_spec(f"folder:{folder}@32").target == str(folder)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["xls:labels.xls", "Folder:images", "http://example.org/x.zip"])
def test_unknown_prefix_lists_the_valid_sources(spec):
    head = spec.split(":")[0]
    with pytest.raises(ValueError, match=rf"unknown dataset source '{head}:' in spec '{spec}'; valid: ") as error:
        parse_spec(spec)
    message = str(error.value)
    assert "folder:PATH, npz:FILE.npz, csv:FILE.csv, or a MedMNIST name" in message
    assert "\n" not in message


@pytest.mark.parametrize("spec", ["breastmnist@big", "folder:does/not/exist@big"])
def test_a_size_that_is_not_a_number_is_a_bad_size(spec):
    with pytest.raises(ValueError, match="bad size 'big' in dataset spec"):
        parse_spec(spec)


@pytest.mark.parametrize("spec", ["", "   ", "folder:", "npz:@64"])
def test_an_empty_spec_names_what_a_spec_looks_like(spec):
    with pytest.raises(ValueError, match=r"empty dataset spec .*folder:PATH or npz:FILE.npz"):
        parse_spec(spec)


def test_a_spec_that_is_not_a_string():
    with pytest.raises(ValueError, match="a dataset spec is a string"):
        parse_spec(None)


@pytest.mark.parametrize(("prefix", "message"), [
    ("folder", r"source 'folder:' is already registered \(by medlens.data.source\)"),
    ("", r"the default \(prefix-less\) source is already registered \(by medlens.data.source\)"),
])
def test_duplicate_registration_raises(prefix, message):
    usage = f"{prefix}:X" if prefix else "NAME"
    with pytest.raises(ValueError, match=message):
        register_source(DataSource(prefix, _noop_resolver, usage=usage, description="again"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prefix": "XLS", "usage": "XLS:PATH"}, "source prefix 'XLS' is not valid"),
        ({"prefix": "my-source", "usage": "my-source:PATH"}, "source prefix 'my-source' is not valid"),
        ({"prefix": "xls", "usage": "PATH.xls"}, "usage 'PATH.xls' of source 'xls' must start with 'xls:'"),
        ({"prefix": "xls", "usage": "xls:PATH", "default_size": 0}, "default_size 0 of source 'xls' is not valid"),
        ({"prefix": "xls", "usage": "xls:PATH", "resolver": "medlens.data.xls"},
         "resolver 'medlens.data.xls' of source 'xls' is not valid; give a function or its dotted path"),
    ],
)
def test_malformed_registration_raises(fields, message):
    with pytest.raises(ValueError, match=message):
        register_source(DataSource(**{"resolver": _noop_resolver, "description": "bad", **fields}))
    assert "xls" not in [source.prefix for source in list_sources()]


def test_unregistering_an_unknown_prefix_lists_the_valid_ones():
    with pytest.raises(ValueError,
                       match=r"unknown dataset source 'xls:'; valid: folder:PATH, npz:FILE.npz, csv:FILE.csv"):
        unregister_source("xls")


# --------------------------------------------------------------------------------------------
# a third-party source
# --------------------------------------------------------------------------------------------


@pytest.fixture
def toy_source():
    """``toy:NAME``: 4 images per split, edge ``size``; records what the resolver was called with."""
    calls = []

    def resolve_toy(target: str, *, size: int, options: ResolveOptions) -> Source:
        calls.append((target, size, options))
        rng = np.random.default_rng(options.seed)
        splits = {name: TensorSplit(rng.integers(0, 256, (4, 1, size, size), dtype=np.uint8),
                                    np.array([0, 1, 0, 1]), np.array([f"{name}/{i}" for i in range(4)]))
                  for name in SPLITS}
        info = DatasetInfo(name=target, task=Task.BINARY, class_names=("a", "b"), n_channels=1, spatial_dims=2,
                           sizes=(size,), split_sizes={name: 4 for name in SPLITS}, source="toy")
        return Source(spec=f"toy:{target}@{size}", info=info, size=size, splits=splits, split_method="official",
                      seed=options.seed, fingerprint=f"toy-{target}")

    record = register_source(DataSource("toy", resolve_toy, usage="toy:NAME", description="random toy images",
                                         default_size=12, decodes_images=True))
    yield record, calls
    unregister_source("toy")


def test_a_registered_source_resolves_through_resolve(toy_source):
    record, calls = toy_source
    source = resolve("toy:pets@8", seed=3, ratios="0.7/0.15/0.15", channels=1, skip_bad=True)
    assert source.spec == "toy:pets@8" and source.size == 8
    assert source.splits["train"].images.shape == (4, 1, 8, 8)
    target, size, options = calls[-1]
    assert (target, size) == ("pets", 8)
    assert (options.seed, options.ratios, options.channels, options.skip_bad) == (3, (0.7, 0.15, 0.15), 1, True)
    assert parse_spec("toy:pets").source is record


def test_a_registered_source_gets_its_default_size_or_the_callers(toy_source):
    _, calls = toy_source
    assert resolve("toy:pets").size == 12
    assert resolve("toy:pets", size=16).size == 16
    assert [size for _, size, _ in calls] == [12, 16]
    with pytest.raises(ValueError, match="size 16 disagrees with the size in dataset spec 'toy:pets@8'"):
        resolve("toy:pets@8", size=16)


def test_a_registered_source_is_listed_wherever_the_sources_are(toy_source, capsys, tmp_path):
    with pytest.raises(ValueError,
                       match=r"valid: folder:PATH, npz:FILE.npz, csv:FILE.csv, toy:NAME, or a MedMNIST name"):
        parse_spec("xls:x.xls")
    with pytest.raises(ValueError, match=r"\(or a local source: folder:PATH, npz:FILE.npz, csv:FILE.csv, toy:NAME\)"):
        get_dataset_info("nosuchmnist")
    assert main(["datasets", "--root", str(tmp_path)]) == 0
    assert "toy:NAME (random toy images)" in capsys.readouterr().out.splitlines()[-1]


def test_an_unregistered_source_is_gone(toy_source):
    unregister_source("toy")
    with pytest.raises(ValueError, match="unknown dataset source 'toy:'"):
        parse_spec("toy:pets")
    register_source(toy_source[0])  # for the fixture's own unregister
