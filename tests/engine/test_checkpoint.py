"""Unit tests for medlens.engine.checkpoint: pickle-free state round trips, model cards, Lightning IO."""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medlens.engine.checkpoint import (
    ModelCard,
    classifier_bias_name,
    load_card,
    load_model,
    load_state,
    read_sidecar,
    safetensors_checkpoint_io,
    save_model,
    save_state,
)
from medlens.engine.optim import WarmupCosine
from medlens.engine.run_folder import sidecar
from helpers import single_line


def assert_same(actual, expected, where: str = "") -> None:
    """Deep equality that also checks types (tuple stays tuple, Counter stays Counter) and dtypes."""
    assert type(actual) is type(expected), f"{where}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert torch.equal(actual, expected), where
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, where
        assert np.array_equal(actual, expected, equal_nan=expected.dtype.kind in "fc"), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}/{key!r}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}/{i}")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(actual), where
    else:
        assert actual == expected, where


def round_trip(state, tmp_path: Path, name: str = "state"):
    path = tmp_path / f"{name}.safetensors"
    save_state(state, path)
    return load_state(path)


# --- plain structures ------------------------------------------------------------------------

STATES = {
    "nested": {"a": {"b": [1, 2.5, "x", {"c": [None, True, False]}]}, "empty": {}, "empty_list": [], "s": ""},
    "tuples": {"betas": (0.9, 0.999), "nested": ((1, 2), [3, (4,)]), "empty": ()},
    "counter": {"milestones": Counter({50: 1, 75: 2}), "empty": Counter(), "words": Counter("abca")},
    "int_keys": {"state": {0: {"step": 3}, 1: {"step": 4}, 10: {}}, "mixed": {1: "int", "1": "str"}},
    "odd_keys": {"d": {(1, 2): "tuple", 0.5: "float", None: "none", True: "bool"},
                 "tag": {"__medlens_type__": "tensor", "key": "/nowhere"}},
    "floats": {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan"), "tiny": 5e-324, "neg0": -0.0,
               "third": 1 / 3, "big": 2**70},
    "none_bools": {"none": None, "yes": True, "no": False, "list": [None, False, 0, ""]},
    "tensors": {"f32": torch.randn(3, 4), "f64": torch.randn(2, dtype=torch.float64), "i64": torch.arange(5),
                "u8": torch.arange(256, dtype=torch.uint8), "bool": torch.tensor([True, False]),
                "bf16": torch.randn(3).to(torch.bfloat16), "f16": torch.randn(3).half(),
                "scalar": torch.tensor(7.0), "empty": torch.zeros(0, 3), "in_list": [torch.ones(2), (torch.zeros(1),)]},
    "numpy": {"u32": np.arange(10, dtype=np.uint32) * 400_000_000, "f32": np.linspace(0, 1, 6, dtype=np.float32),
              "f64_2d": np.array([[1.0, np.inf], [np.nan, -0.0]]), "i8": np.array([-128, 127], dtype=np.int8),
              "bool": np.array([True, False]), "c128": np.array([1 + 2j]), "big_endian": np.arange(4, dtype=">i4"),
              "empty": np.zeros((0, 2), dtype=np.int16),
              "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))},
    "dtype_device": {"dtype": torch.float16, "device": torch.device("cpu")},
}


@pytest.mark.parametrize("name", list(STATES))
def test_state_round_trips_with_types(tmp_path, name):
    state = STATES[name]
    assert_same(round_trip(state, tmp_path), state)


@pytest.mark.parametrize("value", [np.array(3.5), np.array(7, dtype=np.uint32)], ids=["f64", "u32"])
def test_zero_dimensional_array_keeps_its_shape(tmp_path, value):
    assert_same(round_trip({"scalar": value}, tmp_path), {"scalar": value})


def test_numpy_scalars_become_python_numbers(tmp_path):
    loaded = round_trip({"i": np.int64(3), "f": np.float64(0.25), "b": np.bool_(True)}, tmp_path)
    assert_same(loaded, {"i": 3, "f": 0.25, "b": True})


def test_loaded_tensors_do_not_alias_the_saved_ones(tmp_path):
    weight = torch.ones(3, requires_grad=True)
    view = torch.arange(10.0)[::2]  # non-contiguous
    loaded = round_trip({"w": weight, "v": view, "again": view}, tmp_path)
    assert not loaded["w"].requires_grad
    assert torch.equal(loaded["v"], view) and torch.equal(loaded["again"], view)
    loaded["w"].add_(1)
    assert torch.equal(weight.detach(), torch.ones(3))


def test_rng_states_round_trip_and_replay(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = ([random.random() for _ in range(3)], np.random.rand(3), torch.rand(3))
    loaded = round_trip(state, tmp_path)
    assert_same(loaded, state)
    assert loaded["numpy"][1].dtype == np.uint32

    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    random.setstate(loaded["python"])
    np.random.set_state(loaded["numpy"])
    torch.set_rng_state(loaded["torch"])
    assert [random.random() for _ in range(3)] == expected[0]
    assert np.array_equal(np.random.rand(3), expected[1])
    assert torch.equal(torch.rand(3), expected[2])


def test_files_are_safetensors_and_json_not_pickle(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state({"w": torch.ones(2, 3), "opt": {"state": {0: {"buf": torch.zeros(4)}}}, "arr": np.arange(3),
                "betas": (0.9, 0.99), "inf": float("inf")}, path)
    tensors = load_file(str(path))  # raises on anything that is not safetensors
    assert torch.equal(tensors["/w"], torch.ones(2, 3))
    assert len(tensors) == 3 and all(isinstance(t, torch.Tensor) for t in tensors.values())
    document = json.loads(sidecar(path).read_text())
    assert document["state"]["betas"]["items"] == [0.9, 0.99]
    assert isinstance(document["token"], str) and document["token"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]  # no temporary files left


def test_state_without_tensors_round_trips(tmp_path):
    assert_same(round_trip({"epoch": 3, "names": ["a", "b"]}, tmp_path), {"epoch": 3, "names": ["a", "b"]})


def test_save_overwrites_and_each_save_has_a_new_token(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state({"x": torch.zeros(1)}, path)
    first = read_sidecar(path)["token"]
    save_state({"x": torch.ones(1)}, path)
    assert read_sidecar(path)["token"] != first
    assert torch.equal(load_state(path)["x"], torch.ones(1))


def test_sidecar_is_found_from_either_file(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state({"x": 1}, path, extra_json={"card": {"architecture": "cnn_small"}})
    assert read_sidecar(path)["card"] == {"architecture": "cnn_small"}
    assert read_sidecar(sidecar(path)) == read_sidecar(path)


# --- unsupported types and damaged files -----------------------------------------------------


@pytest.mark.parametrize(
    "state, where",
    [
        ({"a": {"b": {1, 2}}}, "/a/b"),
        ({"list": [1, object()]}, "/list/1"),
        ({"t": (1, frozenset())}, "/t/1"),
        ({"fn": print}, "/fn"),
        ({"bytes": b"raw"}, "/bytes"),
    ],
    ids=["set", "object", "frozenset", "function", "bytes"],
)
def test_unsupported_type_raises_type_error_naming_the_path(tmp_path, state, where):
    path = tmp_path / "s.safetensors"
    with pytest.raises(TypeError) as info:
        save_state(state, path)
    assert repr(where) in single_line(info.value)
    assert not path.exists() and not sidecar(path).exists()


def test_two_tensors_on_one_key_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="share the key"):
        save_state({"a/b": torch.zeros(1), "a": {"b": torch.ones(1)}}, tmp_path / "s.safetensors")


def test_two_arrays_on_one_key_is_an_error_not_silent_corruption(tmp_path):
    state = {"a/b": np.arange(3, dtype=np.int64), "a": {"b": np.arange(3, dtype=np.int64) + 10}}
    path = tmp_path / "s.safetensors"
    try:
        save_state(state, path)
    except ValueError:
        return  # refusing is fine
    assert_same(load_state(path), state)  # else it must round-trip


def test_sidecar_from_another_save_is_refused(tmp_path):
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_state({"x": torch.zeros(2)}, first)
    save_state({"x": torch.ones(2)}, second)
    shutil.copy(sidecar(first), sidecar(second))
    for call in (load_state, read_sidecar, load_card):
        with pytest.raises(ValueError) as info:
            call(second)
        assert "different saves" in single_line(info.value)
    assert torch.equal(load_state(first)["x"], torch.zeros(2))  # the intact checkpoint still loads


@pytest.mark.parametrize("damage", ["garbage", "truncated_header", "truncated_data", "empty"])
def test_damaged_safetensors_raises_value_error(tmp_path, damage):
    path = tmp_path / "s.safetensors"
    save_state({"x": torch.arange(1000, dtype=torch.float32)}, path)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x00not a safetensors file" * 10, "truncated_header": data[:20],
                      "truncated_data": data[: len(data) - 100], "empty": b""}[damage])
    with pytest.raises(ValueError) as info:
        load_state(path)
    assert str(path) in single_line(info.value)


def test_damaged_json_raises_value_error(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state({"x": 1}, path)
    sidecar(path).write_text('{"state": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_state(path)


@pytest.mark.parametrize("missing", ["safetensors", "json", "both"])
def test_missing_files_raise_file_not_found(tmp_path, missing):
    path = tmp_path / "s.safetensors"
    save_state({"x": torch.zeros(1)}, path)
    if missing in ("safetensors", "both"):
        path.unlink()
    if missing in ("json", "both"):
        sidecar(path).unlink()
    for call in (load_state, read_sidecar, load_card, load_model):
        with pytest.raises(FileNotFoundError):
            call(path)


def test_load_model_on_a_folder_without_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="best.safetensors"):
        load_model(tmp_path)


# --- optimizer and scheduler states ----------------------------------------------------------


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))


def _train_step(model, optimizer, step: int) -> float:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=generator)
    y = torch.randn(8, 2, generator=generator)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=0.01, betas=(0.8, 0.95), weight_decay=1e-4),
    "adam_amsgrad": lambda params: torch.optim.Adam(params, lr=0.01, amsgrad=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.05),
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "sgd_plain": lambda params: torch.optim.SGD(params, lr=0.05),
}

SCHEDULERS = {
    "none": None,
    "multistep": lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4, 4], gamma=0.1),
    "warmup_cosine": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(2, 8)),
    "plateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=0),
}


def _step_scheduler(scheduler, epoch: int) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step([0.5, 0.7, 0.6, 0.6, 0.8, 0.1][epoch])  # stalls, so the LR drops
    elif scheduler is not None:
        scheduler.step()


def _run(model, optimizer, scheduler, epochs: range) -> list[float]:
    losses = []
    for epoch in epochs:
        losses.append(_train_step(model, optimizer, epoch))
        _step_scheduler(scheduler, epoch)
    return losses


@pytest.mark.parametrize("scheduler_name", list(SCHEDULERS))
@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_optimizer_and_scheduler_resume_identically(tmp_path, optimizer_name, scheduler_name):
    make_optimizer, make_scheduler = OPTIMIZERS[optimizer_name], SCHEDULERS[scheduler_name]
    model = _net()
    optimizer = make_optimizer(model.parameters())
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    _run(model, optimizer, scheduler, range(3))

    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler else None}
    loaded = round_trip(state, tmp_path)
    assert_same(loaded["optimizer"], optimizer.state_dict())
    if scheduler is not None:
        assert_same(loaded["scheduler"], scheduler.state_dict())

    # A fresh model, optimizer and scheduler, built as a resumed run builds them, then loaded.
    torch.manual_seed(123)
    resumed = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    resumed.load_state_dict(loaded["model"])
    resumed_optimizer = make_optimizer(resumed.parameters())
    resumed_scheduler = make_scheduler(resumed_optimizer) if make_scheduler else None
    resumed_optimizer.load_state_dict(loaded["optimizer"])
    if resumed_scheduler is not None:
        resumed_scheduler.load_state_dict(loaded["scheduler"])
    if scheduler_name == "warmup_cosine":
        assert vars(resumed_scheduler.lr_lambdas[0]) == {"warmup": 2, "epochs": 8}
    if scheduler_name == "multistep":
        assert resumed_scheduler.milestones == Counter({2: 1, 4: 2})

    assert _run(resumed, resumed_optimizer, resumed_scheduler, range(3, 6)) == _run(model, optimizer, scheduler,
                                                                                  range(3, 6))
    for mine, theirs in zip(resumed.parameters(), model.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]
    if scheduler is not None:
        assert resumed_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_resume_without_the_state_would_diverge(tmp_path):
    """The resume test above can fail: a fresh optimizer (no moments, no decayed LR) drifts apart."""
    model = _net()
    optimizer = OPTIMIZERS["adam"](model.parameters())
    scheduler = SCHEDULERS["multistep"](optimizer)
    _run(model, optimizer, scheduler, range(3))
    fresh = _net()
    fresh.load_state_dict(round_trip(model.state_dict(), tmp_path))
    fresh_optimizer = OPTIMIZERS["adam"](fresh.parameters())
    fresh_scheduler = SCHEDULERS["multistep"](fresh_optimizer)
    _run(fresh, fresh_optimizer, fresh_scheduler, range(3, 6))
    _run(model, optimizer, scheduler, range(3, 6))
    assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True))


# --- model checkpoints -----------------------------------------------------------------------

MODELS = [
    ("cnn_small", 2, 1, 28, ["benign", "malignant"], {"dropout": 0.25}),
    ("resnet_compact", 2, 3, 28, ["a", "b", "c", "d"], {"width": 8, "depth": [1, 1, 1, 1]}),
    ("resnet_compact", 3, 1, 16, ["x", "y", "z"], {"width": 4, "depth": [1, 1, 1, 1], "stem": "small"}),
]


def _card(architecture, dims, channels, size, names, kwargs, **extra) -> ModelCard:
    return ModelCard(
        architecture=architecture, model_kwargs=kwargs, task="multiclass" if len(names) > 2 else "binary",
        class_names=names, in_channels=channels, spatial_dims=dims, input_size=size,
        normalisation={"mean": [0.5] * channels, "std": [0.25] * channels}, **extra)


def _trained_looking(card: ModelCard, seed: int) -> torch.nn.Module:
    """A model whose parameters and BatchNorm buffers all differ from a fresh one."""
    torch.manual_seed(seed)
    model = card.build()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if buffer.is_floating_point():
                buffer.copy_(torch.rand_like(buffer) + (0.5 if "var" in name else -0.5))
            else:
                buffer.fill_(seed + 3)
    return model.eval()


def _input(card: ModelCard) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(3, card.in_channels, *[card.input_size] * card.spatial_dims, generator=generator)


@pytest.mark.parametrize("spec", MODELS, ids=[f"{m[0]}-{m[1]}d" for m in MODELS])
def test_load_model_rebuilds_the_model_from_the_files_alone(tmp_path, spec):
    card = _card(*spec, dataset={"spec": "breastmnist"}, config={"optim": {"lr": 0.001}},
                 metrics={"epoch": 4, "val_auc": 0.9}, versions={"torch": torch.__version__})
    model = _trained_looking(card, seed=7)
    x = _input(card)
    with torch.no_grad():
        expected = model(x)
    save_model(model, card, tmp_path / "run" / "best.safetensors")

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("best.safetensors", "best.json"):
        shutil.copy(tmp_path / "run" / name, moved / name)
    shutil.rmtree(tmp_path / "run")

    torch.manual_seed(1)  # a different fresh initialisation than the saved model's
    with torch.no_grad():
        assert not torch.equal(_trained_looking(card, seed=1)(x), expected)
    loaded, loaded_card = load_model(moved / "best.safetensors")
    assert not loaded.training
    assert loaded_card == card
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_model_accepts_the_json_or_the_bare_name(tmp_path):
    card = _card(*MODELS[0])
    model = _trained_looking(card, seed=2)
    save_model(model, card, tmp_path / "best.safetensors")
    x = _input(card)
    with torch.no_grad():
        expected = model(x)
        for path in (tmp_path / "best.json", tmp_path / "best"):
            assert torch.equal(load_model(path)[0](x), expected)


def test_model_checkpoint_is_safetensors_under_the_state_dict_keys(tmp_path):
    card = _card(*MODELS[1])
    model = _trained_looking(card, seed=3)
    path = tmp_path / "best.safetensors"
    save_model(model, card, path)
    tensors = load_file(str(path))
    assert sorted(tensors) == sorted(f"/{key}" for key in model.state_dict())
    document = json.loads(sidecar(path).read_text())
    assert document["card"] == json.loads(json.dumps(asdict(card)))


class _OwnHead(torch.nn.Module):
    """A model of the contract whose classifier is not called ``fc``: pooling, then ``head``."""

    def __init__(self, in_channels: int, num_classes: int, *, bias: bool = True):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(in_channels, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1))  # (B, K)

    def get_classifier(self) -> torch.nn.Linear:
        return self.head


def test_classifier_bias_name_is_the_bias_of_get_classifier():
    assert classifier_bias_name(_card(*MODELS[0]).build(), "cnn_small") == "fc.bias"
    assert classifier_bias_name(_OwnHead(1, 2), "own_head") == "head.bias"


def test_the_logit_shift_goes_into_the_bias_get_classifier_names(tmp_path):
    from medlens.models import create_model, register_model
    from medlens.models.registry import unregister_model

    register_model("own_head", spatial_dims=(2,), description="classifier named head (test)")(
        lambda *, in_channels, num_classes, spatial_dims, input_size: _OwnHead(in_channels, num_classes))
    try:
        card = _card("own_head", 2, 1, 28, ["a", "b", "c"], {})
        model = create_model("own_head", in_channels=1, num_classes=3)
        shift = torch.tensor([0.5, -1.0, 2.0])
        save_model(model, card, tmp_path / "best.safetensors", logit_shift=shift)
        saved = load_file(str(tmp_path / "best.safetensors"))
        torch.testing.assert_close(saved["/head.bias"], model.head.bias.detach() + shift)
        torch.testing.assert_close(saved["/head.weight"], model.head.weight.detach())
        loaded = load_model(tmp_path / "best.safetensors")[0]
        x = _input(card)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x) + shift)
    finally:
        unregister_model("own_head")


@pytest.mark.parametrize("model", [_OwnHead(1, 2, bias=False), torch.nn.Linear(4, 2)],
                         ids=["bias-free head", "no get_classifier"])
def test_a_model_without_a_classifier_bias_gives_the_clear_error(model, tmp_path):
    message = r"data.correct_priors shifts the classifier bias \(get_classifier\(\).bias\), which model 'toy' lacks"
    with pytest.raises(ValueError, match=message):
        classifier_bias_name(model, "toy")
    with pytest.raises(ValueError, match=message):
        save_model(model, _card("toy", 2, 1, 28, ["a", "b"], {}), tmp_path / "best.safetensors",
                   logit_shift=torch.zeros(2))
    assert not (tmp_path / "best.safetensors").exists()


def test_an_ensemble_has_no_single_classifier_bias():
    from medlens.models import create_model

    ensemble = create_model("ensemble", in_channels=1, num_classes=2, member="cnn_small", members=2)
    with pytest.raises(ValueError, match="model 'ensemble' has no single classifier"):
        classifier_bias_name(ensemble, "ensemble")
    assert [classifier_bias_name(member, "cnn_small") for member in ensemble.members] == ["fc.bias", "fc.bias"]


def test_load_model_on_a_run_folder_picks_best(tmp_path):
    card = _card(*MODELS[0])
    best, last = _trained_looking(card, seed=4), _trained_looking(card, seed=5)
    checkpoints = tmp_path / "checkpoints"
    save_model(best, replace(card, metrics={"epoch": 1}), checkpoints / "best.safetensors")
    save_model(last, replace(card, metrics={"epoch": 2}), checkpoints / "last.safetensors")
    x = _input(card)
    loaded, loaded_card = load_model(tmp_path)
    assert loaded_card.metrics == {"epoch": 1}
    with torch.no_grad():
        assert torch.equal(loaded(x), best(x))
        assert not torch.equal(loaded(x), last(x))


def test_load_model_reads_and_parses_the_card_once(tmp_path, monkeypatch):
    card = _card(*MODELS[0])
    model = _trained_looking(card, seed=6)
    save_model(model, card, tmp_path / "best.safetensors")
    reads, parses = [], []
    real_read_text, real_loads = Path.read_text, json.loads

    def counting_read_text(self, *args, **kwargs):
        if self == sidecar(tmp_path / "best.safetensors"):
            reads.append(self)
        return real_read_text(self, *args, **kwargs)

    def counting_loads(text, *args, **kwargs):
        document = real_loads(text, *args, **kwargs)
        if isinstance(document, dict) and "card" in document:
            parses.append(document)
        return document

    monkeypatch.setattr(Path, "read_text", counting_read_text)
    monkeypatch.setattr(json, "loads", counting_loads)
    loaded, loaded_card = load_model(tmp_path / "best.json")
    assert loaded_card == card
    assert (len(reads), len(parses)) == (1, 1)  # one read serves both the card and the state
    x = _input(card)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_card_reads_the_card_without_the_weights(tmp_path):
    card = _card(*MODELS[2], metrics={"test_auc": 0.75})
    save_model(_trained_looking(card, seed=0), card, tmp_path / "last.safetensors")
    assert load_card(tmp_path / "last.safetensors") == card
    assert load_card(tmp_path / "last.json") == card


def test_training_state_is_not_a_model(tmp_path):
    path = tmp_path / "resume.safetensors"
    save_state({"epoch": 1, "state_dict": _net().state_dict()}, path)
    for call in (load_card, load_model):
        with pytest.raises(ValueError) as info:
            call(path)
        assert "training state" in single_line(info.value)


def test_card_missing_fields_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        ModelCard.from_dict({k: v for k, v in asdict(_card(*MODELS[0])).items() if k != "input_size"})


def test_card_ignores_unknown_fields():
    raw = {**asdict(_card(*MODELS[0])), "added_in_a_later_version": 1}
    assert ModelCard.from_dict(raw) == _card(*MODELS[0])


# --- the Lightning plugin --------------------------------------------------------------------


def _lightning_checkpoint() -> dict:
    model = _net()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 4], gamma=0.1)
    _run(model, optimizer, scheduler, range(3))
    return {
        "epoch": 2,
        "global_step": 30,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {
            "fit_loop": {
                "state_dict": {},
                "epoch_loop.state_dict": {"_batches_that_stepped": 30},
                "epoch_progress": {"total": {"ready": 3, "started": 3, "processed": 3, "completed": 2},
                                   "current": {"ready": 3, "started": 3, "processed": 3, "completed": 2}},
            },
            "validate_loop": {"state_dict": {}, "batch_progress": {"is_last_batch": True}},
        },
        "callbacks": {
            "ModelCheckpoint{'monitor': 'val_auc', 'mode': 'max', 'every_n_train_steps': 0}": {
                "best_model_score": torch.tensor(0.875),
                "best_model_path": "/runs/x/checkpoints/epoch=1.ckpt",
                "best_k_models": {"/runs/x/checkpoints/epoch=1.ckpt": torch.tensor(0.875)},
                "kth_value": torch.tensor(float("-inf")),
                "dirpath": "/runs/x/checkpoints",
            },
            "EarlyStopping{'monitor': 'val_auc', 'mode': 'max'}": {
                "wait_count": 1, "stopped_epoch": 0, "best_score": torch.tensor(0.875), "patience": 5},
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "torch_rng": torch.get_rng_state(),
    }


def test_lightning_plugin_saves_loads_and_removes(tmp_path):
    plugin = safetensors_checkpoint_io()
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

    assert isinstance(plugin, CheckpointIO)
    checkpoint = _lightning_checkpoint()
    path = tmp_path / "checkpoints" / "resume.ckpt"
    plugin.save_checkpoint(checkpoint, path)
    stored = tmp_path / "checkpoints" / "resume.safetensors"
    assert sorted(p.name for p in stored.parent.iterdir()) == ["resume.json", "resume.safetensors"]
    load_file(str(stored))
    json.loads(sidecar(stored).read_text())

    loaded = plugin.load_checkpoint(path)
    assert_same(loaded, checkpoint)
    assert_same(plugin.load_checkpoint(stored), checkpoint)  # either name finds it

    plugin.remove_checkpoint(path)
    assert list(stored.parent.iterdir()) == []
    plugin.remove_checkpoint(path)  # removing twice is harmless


def test_lightning_plugin_load_of_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        safetensors_checkpoint_io().load_checkpoint(tmp_path / "nothing.ckpt")


# ----------------------------------------------------------------------------- integrity (issue 20)


def test_a_swapped_or_edited_safetensors_file_is_refused(tmp_path):
    """The sidecar records the SHA-256 of the weights: another file under the name is refused at load."""
    card = _card(*MODELS[0])
    path = tmp_path / "best.safetensors"
    save_model(_trained_looking(card, seed=2), card, path)
    assert len(read_sidecar(path)["sha256"]) == 64
    other = tmp_path / "other.safetensors"
    save_model(_trained_looking(card, seed=3), card, other)
    # The other file's tensors under this file's token: only the hash can tell them apart.
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(other)), str(path), metadata={"token": read_sidecar(path)["token"]})
    for call in (load_state, load_card, load_model):
        with pytest.raises(ValueError) as info:
            call(path)
        assert "is not the file that was saved (its SHA-256 differs" in single_line(info.value)


def test_nan_weights_are_refused_at_load(tmp_path):
    card = _card(*MODELS[0])
    model = _trained_looking(card, seed=2)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    save_model(model, card, tmp_path / "best.safetensors")
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "best.safetensors")
    assert "holds NaN or infinite weights in 1 tensor(s)" in single_line(info.value)


def test_a_checkpoint_that_does_not_fit_its_card_is_one_line(tmp_path):
    card = _card(*MODELS[0])
    save_model(_trained_looking(card, seed=2), card, tmp_path / "best.safetensors")
    document = json.loads(sidecar(tmp_path / "best.safetensors").read_text())
    document["card"]["class_names"] = ["a", "b", "c", "d"]  # an edited card: four outputs, weights for two
    sidecar(tmp_path / "best.safetensors").write_text(json.dumps(document))
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "best.safetensors")
    assert "does not fit model" in single_line(info.value) and "size mismatch" in str(info.value)
    document["card"]["class_names"] = ["a", "b"]
    document["card"]["model_kwargs"] = {"no_such_option": 1}
    sidecar(tmp_path / "best.safetensors").write_text(json.dumps(document))
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "best.safetensors")
    assert "has no option no_such_option" in single_line(info.value)


def test_a_full_disk_while_saving_is_an_os_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    """safetensors' own writer reported ENOSPC as a SafetensorError (a traceback in the CLI); now Python writes."""
    import errno

    path = tmp_path / "best.safetensors"
    save_state({"x": torch.zeros(3)}, path)
    before = path.read_bytes()
    real = Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".best.safetensors.tmp"):
            real(self, data[: len(data) // 2])  # part of it reaches the disk, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError) as info:
        save_state({"x": torch.ones(3)}, path)
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]  # no temporary file left
    assert path.read_bytes() == before and torch.equal(load_state(path)["x"], torch.zeros(3))
