"""Optimizers and schedules built from the config: the MedMNIST multi-step, cosine warm-up, plateau.

Also the two registries: names without torch, duplicates and unknown names, a third-party entry.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medlens.data.registry import Task
from medlens.engine.config import build_config
from medlens.engine.losses import create_loss
from medlens.engine.optim import (
    WarmupCosine,
    build_optimizer,
    build_scheduler,
    get_optimizer_spec,
    get_schedule_spec,
    list_optimizers,
    list_schedules,
    milestone_epochs,
    register_optimizer,
    register_schedule,
    trainable_parameters,
    unregister_optimizer,
    unregister_schedule,
)
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


# --- the registries -------------------------------------------------------------------------


def test_registered_names_in_order_with_a_description_each():
    assert list_optimizers() == ["adam", "adamw", "sgd", "pesg"]
    assert list_schedules() == ["none", "multistep", "cosine", "plateau"]
    for name in list_optimizers():
        assert get_optimizer_spec(name).name == name and get_optimizer_spec(name).description
    for name in list_schedules():
        assert get_schedule_spec(name).name == name and get_schedule_spec(name).description


def test_the_names_are_read_without_torch():
    script = ("import sys\nfrom medlens.engine.optim import list_optimizers, list_schedules\n"
              "from medlens.engine.loss_names import LOSS_NAMES\n"
              "assert list_optimizers() and list_schedules() and LOSS_NAMES\n"
              "print('HEAVY', sorted(m for m in ('torch', 'numpy', 'lightning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


@pytest.mark.parametrize(("register", "name", "kind"), [(register_optimizer, "adam", "optimizer"),
                                                        (register_schedule, "cosine", "schedule")])
def test_duplicate_registration_raises(register, name, kind):
    with pytest.raises(ValueError, match=rf"{kind} '{name}' is already registered \(by medlens.engine.optim\)"):
        register(name, description="again")(lambda *args: None)


@pytest.mark.parametrize("register", [register_optimizer, register_schedule])
@pytest.mark.parametrize("name", ["", "AdamW", "my-opt"])
def test_malformed_names_raise(register, name):
    with pytest.raises(ValueError, match=f"name {name!r} is not valid; use lower case letters"):
        register(name, description="bad")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; valid: adam, adamw, sgd, pesg"):
        get_optimizer_spec("rmsprop")
    with pytest.raises(ValueError, match="unknown schedule 'linear'; valid: none, multistep, cosine, plateau"):
        get_schedule_spec("linear")
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        unregister_optimizer("rmsprop")
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        unregister_schedule("linear")


def test_the_config_checks_names_against_the_registries():
    with pytest.raises(ValueError, match="optim.optimizer must be one of adam, adamw, sgd, pesg; got 'rmsprop'"):
        _config(optimizer="rmsprop")
    with pytest.raises(ValueError, match="optim.schedule must be one of none, multistep, cosine, plateau; got 'step'"):
        _config(schedule="step")


@pytest.fixture
def rmsprop_and_step():
    """A third-party optimizer and schedule, registered for one test."""

    @register_optimizer("rmsprop", description="RMSprop (test)")
    def rmsprop(model, loss, optim):
        return torch.optim.RMSprop(trainable_parameters(model, loss), lr=optim.lr, momentum=optim.momentum)

    @register_schedule("step", description="x gamma every epoch (test)")
    def step(optimizer, config):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config.optim.gamma)

    yield
    unregister_optimizer("rmsprop")
    unregister_schedule("step")


def test_a_registered_optimizer_and_schedule_are_configured_and_built(rmsprop_and_step):
    config = _config(optimizer="rmsprop", schedule="step", lr=0.1, momentum=0.5, gamma=0.5)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, torch.nn.Module(), config.optim)
    assert type(optimizer) is torch.optim.RMSprop and optimizer.param_groups[0]["momentum"] == 0.5
    assert isinstance(build_scheduler(optimizer, config), torch.optim.lr_scheduler.StepLR)
    assert _lrs(config, 3) == pytest.approx([0.1, 0.05, 0.025])
    assert list_optimizers()[-1] == "rmsprop" and list_schedules()[-1] == "step"


def test_an_unregistered_optimizer_is_refused_again(rmsprop_and_step):
    _config(optimizer="rmsprop")
    unregister_optimizer("rmsprop")
    with pytest.raises(ValueError, match="optim.optimizer must be one of adam, adamw, sgd, pesg; got 'rmsprop'"):
        _config(optimizer="rmsprop")
    register_optimizer("rmsprop", description="again, for the fixture's unregister")(lambda *args: None)
