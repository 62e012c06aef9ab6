"""Unit tests for medlens.engine.config: layering, the medmnist recipe, validation, YAML round trips."""

from __future__ import annotations

import dataclasses
from dataclasses import fields

import pytest
import yaml

from medlens.engine.config import (
    RECIPES,
    SECTIONS,
    AugmentConfig,
    RunConfig,
    build_config,
    config_from_dict,
    load_run_config,
    read_yaml,
    write_yaml,
)
from helpers import single_line

SPEC = {"data": {"spec": "breastmnist"}}


def _raw(section: str, key: str, value) -> dict:
    """A minimal valid raw config with ``section.key = value``."""
    raw = {"data": {"spec": "breastmnist"}}
    raw.setdefault(section, {})[key] = value
    return raw


def _write(path, text: str):
    path.write_text(text)
    return path


# --- recipes and layering -------------------------------------------------------------------


def test_medmnist_recipe_is_the_benchmark_protocol():
    cfg = build_config(SPEC, recipe="medmnist")
    assert cfg.model.name == "resnet18"
    assert cfg.model.kwargs == {}
    assert (cfg.optim.optimizer, cfg.optim.lr, cfg.optim.weight_decay) == ("adam", 1e-3, 0.0)
    assert cfg.optim.loss == "auto"
    assert cfg.data.batch_size == 128
    assert cfg.train.epochs == 100
    assert cfg.optim.schedule == "multistep"
    assert cfg.optim.milestones == (0.5, 0.75)
    assert cfg.optim.gamma == 0.1
    assert cfg.optim.grad_clip is None
    assert all(getattr(cfg.augment, f.name) == 0 for f in fields(AugmentConfig))
    assert cfg.train.monitor == "val_auc" and cfg.train.monitor_mode == "max"
    assert cfg.train.early_stop is None
    assert cfg.data.class_weights == "none"
    assert cfg.data.oversample is False


def test_medmnist_recipe_does_not_depend_on_the_defaults():
    """Every protocol value is spelled out in the recipe itself, not inherited from a default."""
    recipe = RECIPES["medmnist"]
    assert recipe["optim"]["optimizer"] == "adam" and recipe["optim"]["lr"] == 1e-3
    assert recipe["optim"]["schedule"] == "multistep" and list(recipe["optim"]["milestones"]) == [0.5, 0.75]
    assert recipe["data"]["batch_size"] == 128 and recipe["train"]["epochs"] == 100
    assert recipe["train"]["monitor"] == "val_auc" and recipe["train"]["early_stop"] is None


def test_default_recipe_is_the_dataclass_defaults():
    cfg = build_config(SPEC)
    assert cfg == RunConfig(data=SECTIONS["data"](spec="breastmnist"))
    assert cfg.optim.schedule == "none"


def test_layers_override_in_order_defaults_recipe_file_overrides(tmp_path):
    """defaults < recipe < YAML file < overrides; each layer merges key by key into the sections."""
    assert build_config(SPEC).optim.schedule == "none"  # default
    assert build_config(SPEC, recipe="medmnist").optim.schedule == "multistep"  # recipe wins over default

    file = _write(tmp_path / "run.yaml", "optim:\n  schedule: cosine\n  lr: 0.01\ntrain:\n  epochs: 7\n")
    from_file = build_config(SPEC, recipe="medmnist", file=file)
    assert from_file.optim.schedule == "cosine"  # file wins over recipe
    assert from_file.optim.lr == 0.01 and from_file.train.epochs == 7
    assert from_file.optim.optimizer == "adam" and from_file.optim.milestones == (0.5, 0.75)  # recipe keys kept
    assert from_file.train.monitor == "val_auc"

    overrides = {"data": {"spec": "pathmnist"}, "optim": {"schedule": "plateau"}}
    final = build_config(overrides, recipe="medmnist", file=file)
    assert final.optim.schedule == "plateau"  # overrides win over file
    assert final.optim.lr == 0.01 and final.train.epochs == 7  # file keys kept
    assert final.data.spec == "pathmnist" and final.data.batch_size == 128  # recipe keys kept


def test_file_can_name_the_dataset_and_overrides_can_replace_it(tmp_path):
    file = _write(tmp_path / "run.yaml", "data:\n  spec: dermamnist\n  batch_size: 32\n")
    assert build_config(file=file).data.spec == "dermamnist"
    cfg = build_config({"data": {"spec": "bloodmnist"}}, file=file)
    assert (cfg.data.spec, cfg.data.batch_size) == ("bloodmnist", 32)


def test_model_kwargs_is_replaced_as_a_whole_mapping(tmp_path):
    file = _write(tmp_path / "run.yaml", "model:\n  name: resnet_compact\n  kwargs: {width: 8, depth: [1, 2, 2, 1]}\n")
    assert build_config(SPEC, file=file).model.kwargs == {"width": 8, "depth": [1, 2, 2, 1]}
    cfg = build_config({**SPEC, "model": {"kwargs": {"width": 4}}}, file=file)
    assert cfg.model.kwargs == {"width": 4}
    assert cfg.model.name == "resnet_compact"


def test_build_config_does_not_mutate_the_recipe_or_the_overrides():
    recipe_copy = yaml.safe_load(yaml.safe_dump(RECIPES["medmnist"]))
    overrides = {"data": {"spec": "breastmnist"}, "optim": {"lr": 0.05}}
    build_config(overrides, recipe="medmnist")
    assert RECIPES["medmnist"] == recipe_copy
    assert overrides == {"data": {"spec": "breastmnist"}, "optim": {"lr": 0.05}}


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        build_config(SPEC, recipe="imagenet")
    message = single_line(info.value)
    assert "'imagenet'" in message
    assert all(name in message for name in RECIPES)


def test_config_is_frozen():
    cfg = build_config(SPEC)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 0.1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data = None  # type: ignore[misc]


@pytest.mark.parametrize("monitor, mode", [("val_auc", "max"), ("val_acc", "max"), ("val_loss", "min")])
def test_monitor_mode_follows_the_metric(monitor, mode):
    assert build_config({**SPEC, "train": {"monitor": monitor}}).train.monitor_mode == mode


# --- unknown sections and keys ---------------------------------------------------------------


def test_unknown_section_names_it_and_lists_the_sections():
    with pytest.raises(ValueError) as info:
        config_from_dict({**SPEC, "optimiser": {"lr": 0.1}})
    message = single_line(info.value)
    assert "'optimiser'" in message
    assert all(section in message for section in SECTIONS)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_unknown_key_names_it_and_lists_the_valid_keys(section):
    with pytest.raises(ValueError) as info:
        config_from_dict(_raw(section, "no_such_key", 1))
    message = single_line(info.value)
    assert f"{section}.no_such_key" in message
    assert all(f.name in message for f in fields(SECTIONS[section]))


@pytest.mark.parametrize("bad", [[1, 2], "fast", 3])
def test_section_that_is_not_a_mapping_is_an_error(bad):
    with pytest.raises(ValueError, match="'optim' must be a mapping"):
        config_from_dict({**SPEC, "optim": bad})


@pytest.mark.parametrize("raw", [None, [], "breastmnist"], ids=["none", "list", "str"])
def test_raw_config_must_be_a_mapping(raw):
    with pytest.raises(ValueError, match="must be a mapping"):
        config_from_dict(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", [{}, {"data": {}}, {"data": None}, {"optim": {"lr": 0.1}}])
def test_missing_data_spec_says_so(raw):
    with pytest.raises(ValueError) as info:
        config_from_dict(raw)
    assert "data.spec" in single_line(info.value)


@pytest.mark.parametrize("spec", ["", None, 3])
def test_empty_or_non_string_data_spec_is_an_error(spec):
    with pytest.raises(ValueError, match="data.spec"):
        config_from_dict({"data": {"spec": spec}})


def test_build_config_without_a_dataset_is_an_error():
    with pytest.raises(ValueError, match="data.spec"):
        build_config(recipe="medmnist")


# --- bad values ------------------------------------------------------------------------------

BAD_VALUES = [
    ("optim", "lr", -0.001),
    ("optim", "lr", 0),
    ("optim", "lr", float("inf")),
    ("optim", "lr", float("nan")),
    ("optim", "lr", "fast"),
    ("optim", "lr", True),
    ("optim", "optimizer", "rmsprop"),
    ("optim", "schedule", "linear"),
    ("optim", "loss", "hinge"),
    ("optim", "milestones", [0.5, 1.0]),
    ("optim", "milestones", [0.0, 0.5]),
    ("optim", "milestones", [1.5]),
    ("optim", "milestones", [-0.25]),
    ("optim", "milestones", ["half"]),
    ("optim", "gamma", 0),
    ("optim", "weight_decay", -1e-4),
    ("optim", "momentum", -0.9),
    ("optim", "grad_clip", 0),
    ("optim", "warmup_epochs", -1),
    ("optim", "warmup_epochs", 1.5),
    ("optim", "aucm_margin", 0),
    ("train", "monitor", "val_f1"),
    ("train", "epochs", 0),
    ("train", "epochs", True),
    ("train", "epochs", 10.0),
    ("train", "seed", -1),
    ("train", "early_stop", 0),
    ("train", "num_nodes", 0),
    ("data", "batch_size", 0),
    ("data", "batch_size", -8),
    ("data", "batch_size", True),
    ("data", "batch_size", 12.5),
    ("data", "channels", 2),
    ("data", "channels", 0),
    ("data", "size", 0),
    ("data", "size", False),
    ("data", "class_weights", "inverse"),
    ("data", "correct_priors", "yes"),
    ("data", "correct_priors", True),  # with class_weights none and no oversampling: nothing to undo
    ("model", "pretrain", "simclr"),
    ("model", "pretrain_epochs", 0),
    ("model", "kwargs", [("width", 8)]),
    ("augment", "hflip", -0.5),
    ("augment", "mixup", "yes"),
]


@pytest.mark.parametrize("section, key, value", BAD_VALUES, ids=[f"{s}.{k}={v!r}" for s, k, v in BAD_VALUES])
def test_bad_value_names_the_field(section, key, value):
    with pytest.raises(ValueError) as info:
        config_from_dict(_raw(section, key, value))
    assert f"{section}.{key}" in single_line(info.value)


@pytest.mark.parametrize("optimizer, loss", [("pesg", "auto"), ("pesg", "bce"), ("adam", "aucm"), ("sgd", "aucm")])
def test_pesg_and_aucm_go_together_only(optimizer, loss):
    with pytest.raises(ValueError) as info:
        config_from_dict({**SPEC, "optim": {"optimizer": optimizer, "loss": loss}})
    message = single_line(info.value)
    assert "optim.optimizer" in message and "optim.loss" in message


def test_pesg_with_aucm_is_accepted():
    cfg = config_from_dict({**SPEC, "optim": {"optimizer": "pesg", "loss": "aucm"}})
    assert (cfg.optim.optimizer, cfg.optim.loss) == ("pesg", "aucm")


GOOD_VALUES = [
    ("data", "channels", 1),
    ("data", "channels", 3),
    ("data", "channels", None),
    ("data", "size", 64),
    ("optim", "milestones", [0.3]),
    ("optim", "milestones", []),
    ("optim", "lr", 1),
    ("optim", "grad_clip", 1.0),
    ("train", "early_stop", 5),
    ("augment", "rotate", 15),
]


@pytest.mark.parametrize("section, key, value", GOOD_VALUES, ids=[f"{s}.{k}={v!r}" for s, k, v in GOOD_VALUES])
def test_good_edge_values_are_accepted(section, key, value):
    cfg = config_from_dict(_raw(section, key, value))
    expected = tuple(value) if key == "milestones" else value
    assert getattr(getattr(cfg, section), key) == expected


def test_milestones_are_stored_as_a_tuple():
    cfg = config_from_dict({**SPEC, "optim": {"milestones": [0.25, 0.5]}})
    assert cfg.optim.milestones == (0.25, 0.5) and isinstance(cfg.optim.milestones, tuple)
    assert hash(cfg.optim.milestones)  # a list would make the frozen config unhashable in part


def test_milestones_that_is_not_a_list_names_the_field():
    with pytest.raises(ValueError, match="optim.milestones"):
        config_from_dict(_raw("optim", "milestones", 0.5))


UNCHECKED = [
    ("data", "channels", True),
    ("data", "split_seed", -1),
    ("data", "split_seed", True),
    ("data", "oversample", "false"),
    ("model", "channels_last", "no"),
    ("model", "compile", 1),
    ("train", "progress", "false"),
]


@pytest.mark.parametrize("section, key, value", UNCHECKED, ids=[f"{s}.{k}={v!r}" for s, k, v in UNCHECKED])
def test_wrongly_typed_value_names_the_field(section, key, value):
    with pytest.raises(ValueError, match=f"{section}.{key}"):
        config_from_dict(_raw(section, key, value))


# --- YAML files ------------------------------------------------------------------------------

ROUND_TRIP = {
    "defaults": (SPEC, "default"),
    "medmnist": ({"data": {"spec": "breastmnist@64", "root": "/data/medmnist"}}, "medmnist"),
    "custom": (
        {
            "data": {"spec": "folder:images.zip", "size": 64, "channels": 3, "batch_size": 16,
                     "ratios": "0.7/0.15/0.15", "class_weights": "balanced", "oversample": True, "split_seed": 3},
            "model": {"name": "resnet_compact", "kwargs": {"width": 8, "depth": [1, 2, 2, 1], "stem": "small"},
                      "pretrain": "autoencoder", "pretrain_epochs": 2, "channels_last": False},
            "augment": {"hflip": 0.5, "rotate": 10.0, "mixup": 0.2},
            "optim": {"optimizer": "pesg", "loss": "aucm", "lr": 0.1, "milestones": [0.3, 0.6, 0.9],
                      "schedule": "cosine", "warmup_epochs": 2, "grad_clip": 1.5, "weight_decay": 1e-5},
            "train": {"epochs": 3, "seed": 11, "monitor": "val_loss", "early_stop": 2, "devices": 2,
                      "strategy": "ddp", "tracking_uri": "none", "progress": False},
        },
        "default",
    ),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_write_yaml_then_load_run_config_gives_the_same_config(tmp_path, name):
    overrides, recipe = ROUND_TRIP[name]
    cfg = build_config(overrides, recipe=recipe)
    write_yaml(cfg, tmp_path / "config.yaml")
    loaded = load_run_config(tmp_path)
    assert loaded == cfg
    assert loaded.to_dict() == cfg.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temporary file left behind


def test_written_yaml_is_plain_and_human_readable(tmp_path):
    cfg = build_config({**SPEC, "optim": {"milestones": [0.5, 0.75]}}, recipe="medmnist")
    write_yaml(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "!!python" not in text  # loadable by any YAML reader, no Python tags
    raw = yaml.safe_load(text)
    assert list(raw) == list(SECTIONS)
    assert raw["optim"]["milestones"] == [0.5, 0.75]
    assert raw == cfg.to_dict()


def test_write_yaml_replaces_an_existing_file(tmp_path):
    write_yaml(build_config({"data": {"spec": "a"}}), tmp_path / "config.yaml")
    write_yaml(build_config({"data": {"spec": "b"}}), tmp_path / "config.yaml")
    assert load_run_config(tmp_path).data.spec == "b"


@pytest.mark.parametrize("text", ["- data\n- model\n", "42\n", "just a string\n"], ids=["list", "int", "str"])
def test_yaml_that_is_not_a_mapping_is_one_clear_error(tmp_path, text):
    path = _write(tmp_path / "run.yaml", text)
    with pytest.raises(ValueError) as info:
        read_yaml(path)
    message = single_line(info.value)
    assert str(path) in message and "mapping" in message
    with pytest.raises(ValueError):
        build_config(SPEC, file=path)


@pytest.mark.parametrize("text", ["data: [unclosed\n", "optim:\n  lr: 0.1\n lr: 0.2\n", "a: b: c\n", "\tdata: 1\n"])
def test_invalid_yaml_is_one_clear_error(tmp_path, text):
    path = _write(tmp_path / "run.yaml", text)
    with pytest.raises(ValueError) as info:
        build_config(SPEC, file=path)
    message = single_line(info.value)
    assert str(path) in message and "not valid YAML" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained yaml traceback


def test_empty_yaml_file_adds_nothing(tmp_path):
    path = _write(tmp_path / "run.yaml", "# nothing here\n")
    assert read_yaml(path) == {}
    assert build_config(SPEC, recipe="medmnist", file=path) == build_config(SPEC, recipe="medmnist")


def test_yaml_with_an_unknown_key_names_it(tmp_path):
    path = _write(tmp_path / "run.yaml", "optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"optim\.learning_rate"):
        build_config(SPEC, file=path)


def test_yaml_learning_rate_in_exponent_notation(tmp_path):
    path = _write(tmp_path / "run.yaml", "optim:\n  lr: 1e-3\n  weight_decay: 5e-4\n")
    cfg = build_config(SPEC, file=path)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-3, 5e-4)


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        read_yaml(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_config(SPEC, file=tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_run_config(tmp_path)
    (tmp_path / "config.yaml").mkdir()  # a folder by that name is not a config either
    with pytest.raises(FileNotFoundError):
        load_run_config(tmp_path)
