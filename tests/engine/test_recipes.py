"""Every recipe trains every registered 2D model: a recipe's model options are its own model's.

``--recipe fast`` sets ``width: 24`` for its ResNet-10; with ``--model cnn_small`` that option
used to be passed to a model without it ("model 'cnn_small' has no option width").
"""

from __future__ import annotations

import pytest

from medlens.engine.config import RECIPES, build_config
from medlens.models import list_models
from helpers import write_tiny_npz

# The ensemble is assembled from trained members (``--members K``), never trained itself.
MODELS_2D = [name for name in list_models(spatial_dims=2) if name != "ensemble"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A MedMNIST-layout file of 28 px images, 2 classes, 8 training images (one batch)."""
    return write_tiny_npz(tmp_path_factory.mktemp("recipes") / "tiny.npz", sizes=(8, 4, 4), edge=28)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS_2D)
@pytest.mark.parametrize("recipe", sorted(set(RECIPES)))
def test_every_recipe_trains_every_2d_model(recipe, model, tiny_npz, tmp_path):
    from medlens.engine.train import train

    config = build_config({"data": {"spec": f"npz:{tiny_npz}"}, "model": {"name": model},
                           "train": {"epochs": 1, "tracking_uri": "none", "progress": False}}, recipe=recipe)
    recipe_model = RECIPES[recipe].get("model", {})
    if recipe_model.get("name") == model:
        assert config.model.kwargs == recipe_model.get("kwargs", {})
    result = train(config, tmp_path / "run")
    assert result.metrics["epochs_run"] == 1


def test_a_recipes_model_options_apply_to_its_model_only():
    spec = {"data": {"spec": "breastmnist"}}
    assert build_config(spec, recipe="fast").model.kwargs == {"width": 24}
    assert build_config({**spec, "model": {"name": "cnn_small"}}, recipe="fast").model.kwargs == {}
    # The user's own options for another model are kept; options given without a model name
    # are the final model's.
    cfg = build_config({**spec, "model": {"name": "resnet18", "kwargs": {"stem": "standard"}}}, recipe="fast")
    assert cfg.model.kwargs == {"stem": "standard"}
    cfg = build_config({**spec, "model": {"kwargs": {"width": 8}}}, recipe="fast")
    assert (cfg.model.name, cfg.model.kwargs) == ("resnet_compact", {"width": 8})
    # Weights are a model's own too: finetune's ImageNet weights are efficientnet_lite0's.
    assert build_config(spec, recipe="finetune").model.pretrained == "imagenet"
    assert build_config({**spec, "model": {"name": "cnn_small"}}, recipe="finetune").model.pretrained == "none"
    # The same for --recipe auto's plan: its ladder rung's options go with its model.
    plan = {"model": {"name": "resnet_compact", "kwargs": {"width": 16}}}
    assert build_config({**spec, "model": {"name": "cnn_small"}}, plan=plan).model.kwargs == {}
    assert build_config(spec, plan=plan).model.kwargs == {"width": 16}
