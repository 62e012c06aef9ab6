"""Optimizers and schedules built from the config: the MedMNIST multi-step, cosine warm-up, plateau."""

from __future__ import annotations

import pytest
import torch

from medlens.data.registry import Task
from medlens.engine.config import build_config
from medlens.engine.losses import create_loss
from medlens.engine.optim import WarmupCosine, build_optimizer, build_scheduler, milestone_epochs
from medlens.engine.pesg import PESG


def _config(**optim):
    return build_config({"data": {"spec": "breastmnist"}, "optim": optim, "train": {"epochs": 100}})


def _lrs(config, epochs: int, metric=None) -> list[float]:
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model, torch.nn.Module(), config.optim)
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for epoch in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metric(epoch))
        else:
            scheduler.step()
    return lrs


def test_medmnist_recipe_decays_tenfold_at_half_and_three_quarters():
    config = build_config({"data": {"spec": "breastmnist"}}, recipe="medmnist")
    assert milestone_epochs(config) == [50, 75]
    lrs = _lrs(config, 100)
    assert lrs[0] == lrs[49] == pytest.approx(1e-3)
    assert lrs[50] == lrs[74] == pytest.approx(1e-4)
    assert lrs[75] == lrs[99] == pytest.approx(1e-5)


def test_cosine_warms_up_then_decays_to_zero():
    lrs = _lrs(_config(schedule="cosine", warmup_epochs=5, lr=0.01), 100)
    assert lrs[:5] == sorted(lrs[:5]) and lrs[0] < lrs[4] < 0.01
    assert lrs[5] == pytest.approx(0.01)
    assert lrs[5:] == sorted(lrs[5:], reverse=True)
    assert lrs[-1] < 0.01 * 0.01
    assert WarmupCosine(0, 10)(10) == pytest.approx(0.0)


def test_plateau_decays_after_patience_epochs_without_improvement():
    config = _config(schedule="plateau", plateau_patience=2, gamma=0.5)
    lrs = _lrs(config, 8, metric=lambda epoch: 0.9)  # val AUC stuck at 0.9 (mode max)
    assert lrs[:4] == [1e-3] * 4
    assert lrs[4] == pytest.approx(5e-4)


def test_no_schedule_keeps_the_rate():
    config = _config(schedule="none")
    model = torch.nn.Linear(2, 2)
    assert build_scheduler(build_optimizer(model, torch.nn.Module(), config.optim), config) is None


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizers_include_loss_parameters(name, cls):
    config = _config(optimizer=name, lr=0.1, weight_decay=0.01)
    model = torch.nn.Linear(3, 2)
    loss = torch.nn.Linear(1, 1)  # stands in for a loss with parameters
    optimizer = build_optimizer(model, loss, config.optim)
    assert type(optimizer) is cls
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert params == {id(p) for p in [*model.parameters(), *loss.parameters()]}
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


def test_pesg_gets_primal_and_dual_groups_for_aucm():
    config = _config(optimizer="pesg", loss="aucm", lr=0.1)
    model = torch.nn.Linear(3, 2)
    loss = create_loss("aucm", task=Task.BINARY, num_classes=2, imratio=0.3)
    optimizer = build_optimizer(model, loss, config.optim)
    assert isinstance(optimizer, PESG)
    dual = [g for g in optimizer.param_groups if g["dual"]]
    assert len(dual) == 1 and {id(p) for p in dual[0]["params"]} == {id(p) for p in loss.dual_parameters()}
