"""Transfer learning in a run: --init-from, the frozen first epochs, discriminative rates, --recipe finetune."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import quick_config, single_line

from medlens.engine.checkpoint import load_card, load_state
from medlens.engine.config import build_config
from medlens.engine.train import train
from medlens.engine.transfer import apply_freeze, parameter_groups
from medlens.models import create_model

MODEL = {"name": "resnet_compact", "kwargs": {"width": 8}}


def _npz(path, *, classes: int = 2, channels: int = 1, n: int = 48, seed: int = 0, depth: int | None = None):
    """A MedMNIST-layout file of random images whose mean brightness follows the label (learnable)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n), ("val", n // 2), ("test", n // 2)):
        labels = np.arange(count) % classes
        shape = (count, *(() if depth is None else (depth,)), 28, 28, *((channels,) if channels == 3 else ()))
        noise = rng.integers(0, 120, size=shape)
        bright = (labels * (120 // max(classes - 1, 1))).reshape(-1, *([1] * (len(shape) - 1)))
        arrays[f"{split}_images"] = (noise + bright).clip(0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    np.savez(path, **arrays)
    return f"npz:{path}"


def _config(spec, **sections):
    model = {**MODEL, **sections.pop("model", {})}
    return quick_config(data={"spec": spec, "batch_size": 16}, model=model, **sections)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A trained 2-class run to start others from."""
    tmp = tmp_path_factory.mktemp("source")
    spec = _npz(tmp / "two.npz", classes=2)
    return train(_config(spec, train={"epochs": 1}), tmp / "run").run_dir


def _backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_init_from_another_run_with_other_classes(source_run, tmp_path):
    """The backbone starts as the source's best (frozen, it stays so); a fresh 3-class head; the source's norm."""
    spec = _npz(tmp_path / "three.npz", classes=3, seed=1)
    cfg = _config(spec, model={"init_from": str(source_run)}, optim={"freeze_epochs": 1}, train={"epochs": 1})
    run = train(cfg, tmp_path / "run").run_dir
    source, started = load_state(source_run / "checkpoints" / "best.safetensors"), \
        load_state(run / "checkpoints" / "last.safetensors")
    for key, value in _backbone(source).items():  # the frozen epoch left every backbone tensor as loaded
        torch.testing.assert_close(started[key], value, msg=key)
    assert started["fc.weight"].shape[0] == 3 and source["fc.weight"].shape[0] == 2
    card = load_card(run / "checkpoints" / "best.json")
    assert card.normalisation == load_card(source_run / "checkpoints" / "best.json").normalisation
    assert "initialised from" in (run / "train.log").read_text() and "re-initialised (2 classes there, 3 here)" in \
        (run / "train.log").read_text()


def test_init_from_with_the_same_classes_keeps_the_head(source_run, tmp_path):
    spec = _npz(tmp_path / "two_more.npz", classes=2, seed=2)
    cfg = _config(spec, model={"init_from": str(source_run / "checkpoints" / "best.safetensors")},
                  optim={"freeze_epochs": 1, "lr": 1e-12}, train={"epochs": 1})
    run = train(cfg, tmp_path / "run").run_dir
    source, started = load_state(source_run / "checkpoints" / "best.safetensors"), \
        load_state(run / "checkpoints" / "last.safetensors")
    torch.testing.assert_close(started["fc.weight"], source["fc.weight"], atol=1e-6, rtol=0)
    assert "classifier kept (same classes)" in (run / "train.log").read_text()


@pytest.mark.parametrize(("kind", "message"), [
    ("channels", r"takes 1-channel images; this data has 3"),
    ("dims", r"was trained on 2D data; this data is 3D"),
    ("model", r"is a resnet_compact model; this run trains cnn_small: use --model resnet_compact"),
    ("options", r"does not fit this resnet_compact \(other model options\?"),
    ("missing", r"is neither a medlens run folder nor a checkpoint file"),
])
def test_init_from_mismatches_are_one_clear_line(source_run, tmp_path, kind, message):
    if kind == "channels":
        spec, model = _npz(tmp_path / "rgb.npz", channels=3), {}
    elif kind == "dims":
        spec, model = _npz(tmp_path / "vol.npz", depth=28, n=8), {}
    elif kind == "model":
        spec, model = _npz(tmp_path / "d.npz"), {"name": "cnn_small", "kwargs": {}}
    elif kind == "options":
        spec, model = _npz(tmp_path / "d.npz"), {"kwargs": {"width": 16}}
    else:
        spec, model = _npz(tmp_path / "d.npz"), {}
    init = str(tmp_path / "nowhere") if kind == "missing" else str(source_run)
    cfg = _config(spec, model={**model, "init_from": init}, train={"epochs": 1})
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        train(cfg, tmp_path / "run")
    assert __import__("re").search(message, single_line(err.value)), str(err.value)
    assert not (tmp_path / "run").exists()  # a refused start leaves nothing behind


def test_freeze_then_unfreeze_and_batchnorm_modes():
    model = create_model("resnet_compact", in_channels=1, num_classes=2, width=8).train()
    optim = build_config({"data": {"spec": "x"}, "optim": {"freeze_epochs": 2, "batchnorm": "train"}}).optim
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert apply_freeze(model, optim, 1) is True
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert not any(bn.training for bn in bns)
    model.train()
    assert apply_freeze(model, optim, 2) is False
    assert all(p.requires_grad for p in model.parameters()) and all(bn.training for bn in bns)
    frozen_bn = build_config({"data": {"spec": "x"}, "optim": {"batchnorm": "frozen"}}).optim
    apply_freeze(model, frozen_bn, 5)
    assert all(p.requires_grad for p in model.parameters()) and not any(bn.training for bn in bns)


def test_discriminative_learning_rates():
    model = create_model("resnet_compact", in_channels=1, num_classes=2, width=8)
    optim = build_config({"data": {"spec": "x"}, "optim": {"lr": 0.01, "backbone_lr_scale": 0.1,
                                                           "optimizer": "adamw"}}).optim
    groups = parameter_groups(model, torch.nn.Module(), optim)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    assert groups[0]["params"] == [model.fc.weight, model.fc.bias]
    assert len(groups[1]["params"]) == len(list(model.parameters())) - 2
    from medlens.engine.optim import build_optimizer

    built = build_optimizer(model, torch.nn.Module(), optim)
    assert [g["lr"] for g in built.param_groups] == [0.01, pytest.approx(0.001)]
    assert parameter_groups(model, torch.nn.Module(), build_config({"data": {"spec": "x"}}).optim) == \
        list(model.parameters())


def test_config_checks_the_transfer_options():
    with pytest.raises(ValueError, match="model.pretrained must be none, imagenet, hf:REPO"):
        build_config({"data": {"spec": "x"}, "model": {"pretrained": "hf:"}})
    with pytest.raises(ValueError, match="model.init_from and model.pretrained both choose"):
        build_config({"data": {"spec": "x"}, "model": {"pretrained": "imagenet", "init_from": "runs/a"}})
    with pytest.raises(ValueError, match="optim.batchnorm must be one of train, frozen"):
        build_config({"data": {"spec": "x"}, "optim": {"batchnorm": "eval"}})
    finetune = build_config({"data": {"spec": "x"}}, recipe="finetune")
    assert (finetune.model.name, finetune.model.pretrained) == ("efficientnet_lite0", "imagenet")
    assert (finetune.optim.freeze_epochs, finetune.optim.backbone_lr_scale) == (1, 0.1)


def test_cli_flags_reach_the_config(source_run, tmp_path):
    from medlens.cli import build_parser
    from medlens.commands.train import train_config

    args = build_parser().parse_args(["train", "breastmnist", "--out", str(tmp_path / "r"), "--recipe", "finetune",
                                      "--pretrained", "file:w.safetensors", "--freeze-epochs", "2",
                                      "--backbone-lr-scale", "0.2", "--batchnorm", "frozen"])
    cfg, _ = train_config(args)
    assert cfg.model.pretrained == "file:w.safetensors"
    assert (cfg.optim.freeze_epochs, cfg.optim.backbone_lr_scale, cfg.optim.batchnorm) == (2, 0.2, "frozen")
    args = build_parser().parse_args(["train", "breastmnist", "--out", str(tmp_path / "r"), "--init-from",
                                      str(source_run), "--model", "resnet_compact"])
    assert train_config(args)[0].model.init_from == str(source_run)


# --- the acceptance check: ImageNet weights pay off on BreastMNIST at once ----------------------


@pytest.mark.slow
def test_pretrained_finetune_beats_scratch_in_the_first_epoch(medmnist_root, tmp_path):
    """``--model efficientnet_lite0 --pretrained imagenet --recipe finetune``, 1 epoch, vs the same model from scratch.

    The pretrained run's first epoch trains the head on frozen ImageNet features; the scratch run
    trains every layer for the same epoch (same seed, data, batch, optimizer and rate). Then the
    pretrained run exports to ONNX and explains with Grad-CAM through its card.
    """
    common = {"data": {"spec": "breastmnist", "root": str(medmnist_root)}, "train": {"epochs": 1}}
    pretrained = build_config({**common, "model": {"name": "efficientnet_lite0", "pretrained": "imagenet"},
                               "train": {"epochs": 1, "tracking_uri": "none", "progress": False}}, recipe="finetune")
    scratch = build_config({**common, "model": {"name": "efficientnet_lite0", "pretrained": "none"},
                            "optim": {"freeze_epochs": 0, "backbone_lr_scale": 1.0},
                            "train": {"epochs": 1, "tracking_uri": "none", "progress": False}}, recipe="finetune")
    runs = {name: train(cfg, tmp_path / name) for name, cfg in (("imagenet", pretrained), ("scratch", scratch))}
    auc = {name: json.loads((r.run_dir / "metrics.json").read_text())["val"]["auc"] for name, r in runs.items()}
    assert auc["imagenet"] > auc["scratch"] + 0.1, auc
    card = load_card(runs["imagenet"].best_checkpoint)
    assert card.model_kwargs["min_size"] == 64
    assert card.normalisation["mean"] == [pytest.approx(0.449)]

    from medlens.serve.onnx_export import export_onnx

    onnx_file = export_onnx(runs["imagenet"].run_dir, n_verify=16, root=medmnist_root)
    assert onnx_file.is_file()

    from medlens.engine.checkpoint import load_model
    from medlens.explain.gradcam import gradcam
    from medlens.inference import InferenceModel

    model, card = load_model(runs["imagenet"].best_checkpoint)
    images = torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8)
    heat = gradcam(model, InferenceModel.from_card(model, card).normalise(images))
    assert heat.shape == (2, 28, 28) and np.isfinite(heat).all() and model.gradcam_layer == "_blocks.4.10._project_conv"


def test_cli_refuses_a_bad_pretrained_source_in_one_line(tmp_path, capsys):
    from medlens.cli import main

    code = main(["train", "breastmnist", "--out", str(tmp_path / "r"), "--pretrained", "imagenet21k"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "model.pretrained must be none, imagenet, hf:REPO[:FILE] or file:PATH; got 'imagenet21k'" in err
    assert not (tmp_path / "r").exists()
