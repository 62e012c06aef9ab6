"""Unit tests for medlens.engine.pesg: update rules, AUC on a toy problem, resuming, validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medlens.data.registry import Task
from medlens.engine.losses import create_loss
from medlens.engine.pesg import PESG, pesg_param_groups
from helpers import single_line

N_TRAIN = N_TEST = 2000
POSITIVE_FRACTION = 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    """Train on one thread: these tensors are tiny, and two threads on a busy 2-core machine
    spin against other processes (measured: 0.3 s per toy run alone, up to 20 s under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _blobs(n: int, generator: torch.Generator, n_labels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D Gaussian blobs, ~10% positives shifted by (1.5, 1.5): ``x (n, 2)``, labels ``(n, n_labels)``.

    Label ``k`` shifts along a direction of its own, so each label is learnable on its own. The
    best achievable AUC of one label is Phi(1.5) ~ 0.93.
    """
    labels = (torch.rand(n, n_labels, generator=generator) < POSITIVE_FRACTION).float()
    angles = torch.linspace(0.25, 1.25, n_labels) * torch.pi / 2  # one direction per label
    directions = torch.stack([angles.cos(), angles.sin()], dim=1) * 1.5 * 2**0.5  # (n_labels, 2)
    x = torch.randn(n, 2, generator=generator) + labels @ directions
    return x, labels


def _mlp(n_outputs: int) -> torch.nn.Sequential:
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, n_outputs))
    # A zero head: every score ties, so the untrained model's AUC is exactly 0.5 on any seed.
    torch.nn.init.zeros_(model[2].weight)
    torch.nn.init.zeros_(model[2].bias)
    return model


def _binary_scores(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).softmax(dim=1)[:, 1].numpy()


def _train_binary_aucm(seed: int, steps: int = 300):
    """AUCM + PESG on imbalanced blobs; returns (initial AUC, final AUC, alpha after every step)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = _blobs(N_TRAIN, generator)
    x_test, y_test = _blobs(N_TEST, generator)
    y_train, y_test = y_train[:, 0].long(), y_test[:, 0].long()  # class ids (N,)
    model = _mlp(2)
    loss_fn = create_loss("aucm", task=Task.BINARY, num_classes=2, imratio=float(y_train.float().mean()))
    optimizer = PESG(pesg_param_groups(model, loss_fn), lr=0.1)
    initial_auc = roc_auc_score(y_test.numpy(), _binary_scores(model, x_test))
    alphas = []
    for step in range(steps):
        batch = torch.randint(0, N_TRAIN, (128,), generator=generator)
        loss = loss_fn(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        alphas.append(loss_fn.heads[0].alpha.item())
        if step == steps // 2:
            optimizer.update_regularizer(decay_factor=3)
    final_auc = roc_auc_score(y_test.numpy(), _binary_scores(model, x_test))
    return initial_auc, final_auc, alphas


# --------------------------------------------------------------------------------------------
# Training behaviour


@pytest.mark.parametrize("seed", [0, 1])
def test_aucm_with_pesg_raises_held_out_auc(seed):
    # Measured: 0.5 -> 0.918 (seed 0), 0.944 (seed 1); Bayes-optimal ~0.93. Doing nothing leaves
    # 0.5; ascending the primal (or descending the dual) instead leaves 0.5 too.
    initial_auc, final_auc, _ = _train_binary_aucm(seed)
    assert initial_auc == 0.5
    assert final_auc > 0.85


def test_dual_ascends_and_stays_non_negative():
    _, _, alphas = _train_binary_aucm(seed=0, steps=100)
    assert min(alphas) >= 0.0
    # alpha starts at 0 and the margin term is positive while scores overlap, so it grows.
    assert alphas[0] > 0.0
    assert alphas[-1] > 0.1


def test_multilabel_aucm_with_pesg_raises_every_label_auc():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x_train, y_train = _blobs(N_TRAIN, generator, n_labels=3)
    x_test, y_test = _blobs(N_TEST, generator, n_labels=3)
    model = _mlp(3)
    loss_fn = create_loss("aucm", task=Task.MULTILABEL, num_classes=3, imratio=y_train.mean(dim=0))
    optimizer = PESG(pesg_param_groups(model, loss_fn), lr=0.1)
    for _ in range(300):
        batch = torch.randint(0, N_TRAIN, (128,), generator=generator)
        loss = loss_fn(model(x_train[batch]), y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = torch.sigmoid(model(x_test)).numpy()
    aucs = [roc_auc_score(y_test[:, k].numpy(), scores[:, k]) for k in range(3)]
    # Measured: 0.903-0.912 per label (seed 0); 0.89-0.92 over seeds 0-3.
    assert min(aucs) > 0.8, aucs
    assert all(head.alpha.item() > 0 for head in loss_fn.heads)


# --------------------------------------------------------------------------------------------
# Update rules, one step at a time


def _one_parameter_problem():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    alpha = torch.nn.Parameter(torch.tensor(0.5))
    return weight, alpha


def test_primal_and_dual_updates_follow_the_paper():
    weight, alpha = _one_parameter_problem()
    lr, epoch_decay, weight_decay, momentum = 0.1, 0.5, 0.01, 0.9
    optimizer = PESG(
        [{"params": [weight]}, {"params": [alpha], "dual": True}],
        lr=lr,
        epoch_decay=epoch_decay,
        weight_decay=weight_decay,
        momentum=momentum,
    )
    reference = weight.detach().clone()
    w, a, buffer = weight.detach().clone(), alpha.item(), None
    for grad_w, grad_a in [(torch.tensor([0.3, -0.4]), 0.2), (torch.tensor([-0.1, 0.7]), 0.6)]:
        weight.grad, alpha.grad = grad_w.clone(), torch.tensor(grad_a)
        optimizer.step()
        direction = grad_w + epoch_decay * (w - reference) + weight_decay * w
        buffer = direction if buffer is None else momentum * buffer + direction
        w = w - lr * buffer  # descent
        a = max(0.0, a + lr * grad_a)  # ascent, projected
        torch.testing.assert_close(weight.detach(), w)
        assert alpha.item() == pytest.approx(a)


def test_dual_is_projected_onto_non_negative():
    weight, alpha = _one_parameter_problem()
    optimizer = PESG([{"params": [weight]}, {"params": [alpha], "dual": True}], lr=0.1)
    alpha.grad = torch.tensor(-100.0)
    optimizer.step()
    assert alpha.item() == 0.0


def test_parameters_without_gradient_are_left_alone():
    weight, alpha = _one_parameter_problem()
    optimizer = PESG([{"params": [weight]}, {"params": [alpha], "dual": True}], lr=0.1)
    before = weight.detach().clone(), alpha.detach().clone()
    optimizer.step()
    assert torch.equal(weight.detach(), before[0]) and torch.equal(alpha.detach(), before[1])


def test_update_regularizer_moves_reference_and_decays_lr():
    weight, alpha = _one_parameter_problem()
    optimizer = PESG([{"params": [weight]}, {"params": [alpha], "dual": True}], lr=0.1, momentum=0.0)
    weight.grad = torch.tensor([1.0, 1.0])
    optimizer.step()
    assert not torch.equal(optimizer.state[weight]["reference"], weight.detach())
    optimizer.update_regularizer(decay_factor=4)
    assert torch.equal(optimizer.state[weight]["reference"], weight.detach())
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.025, 0.025])
    optimizer.update_regularizer()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.025, 0.025])
    # With the reference at the weights and a zero gradient, only weight decay moves them.
    weight.grad = torch.zeros(2)
    before = weight.detach().clone()
    optimizer.step()
    torch.testing.assert_close(weight.detach(), before * (1 - 0.025 * 1e-5))


def test_epoch_decay_pulls_towards_the_reference():
    weight, alpha = _one_parameter_problem()
    optimizer = PESG([weight], lr=0.5, epoch_decay=1.0, weight_decay=0.0, momentum=0.0)
    with torch.no_grad():
        weight.add_(torch.tensor([2.0, 2.0]))  # 2 away from the reference in each coordinate
    weight.grad = torch.zeros(2)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.tensor([2.0, -1.0]))  # half-way back


# --------------------------------------------------------------------------------------------
# Resuming


def _resume_fixture(seed: int):
    torch.manual_seed(seed)
    model = _mlp(2)
    torch.nn.init.normal_(model[2].weight)  # a non-zero head, so every weight moves from step 1
    loss_fn = create_loss("aucm", task=Task.BINARY, num_classes=2, imratio=0.2)
    optimizer = PESG(pesg_param_groups(model, loss_fn), lr=0.1)
    return model, loss_fn, optimizer


def _train_steps(model, loss_fn, optimizer, batches, steps):
    for step in steps:
        x, y = batches[step]
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 6:
            optimizer.update_regularizer(decay_factor=10)


def test_state_dict_round_trip_resumes_bitwise():
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(12):
        x, y = _blobs(64, generator)
        batches.append((x, y[:, 0].long()))
    model, loss_fn, optimizer = _resume_fixture(seed=0)
    _train_steps(model, loss_fn, optimizer, batches, range(0, 4))
    checkpoint = io.BytesIO()
    torch.save({"model": model.state_dict(), "loss": loss_fn.state_dict(), "optim": optimizer.state_dict()}, checkpoint)
    _train_steps(model, loss_fn, optimizer, batches, range(4, 12))

    resumed_model, resumed_loss, resumed_optimizer = _resume_fixture(seed=1)  # other weights
    checkpoint.seek(0)
    saved = torch.load(checkpoint, weights_only=True)
    resumed_model.load_state_dict(saved["model"])
    resumed_loss.load_state_dict(saved["loss"])
    resumed_optimizer.load_state_dict(saved["optim"])
    _train_steps(resumed_model, resumed_loss, resumed_optimizer, batches, range(4, 12))

    for original, resumed in zip(
        [*model.parameters(), *loss_fn.parameters()], [*resumed_model.parameters(), *resumed_loss.parameters()],
        strict=True,
    ):
        assert torch.equal(original, resumed)
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert [g["dual"] for g in resumed_optimizer.param_groups] == [False, True]
    assert loss_fn.heads[0].alpha.item() > 0


# --------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -0.1}, "PESG lr must be a finite number > 0, got -0.1"),
        ({"lr": 0.0}, "PESG lr must be a finite number > 0, got 0.0"),
        ({"lr": float("nan")}, "PESG lr must be a finite number > 0, got nan"),
        ({"epoch_decay": -1e-3}, "PESG epoch_decay must be a finite number >= 0, got -0.001"),
        ({"weight_decay": -1.0}, "PESG weight_decay must be a finite number >= 0, got -1.0"),
        ({"momentum": 1.0}, "PESG momentum must be a finite number in [0, 1), got 1.0"),
        ({"momentum": -0.5}, "PESG momentum must be a finite number in [0, 1), got -0.5"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, message):
    weight, _ = _one_parameter_problem()
    with pytest.raises(ValueError) as info:
        PESG([weight], **kwargs)
    assert single_line(info.value) == message


def test_bad_param_groups_raise():
    weight, alpha = _one_parameter_problem()
    with pytest.raises(ValueError, match="'dual' must be True or False, got 'yes'"):
        PESG([{"params": [weight]}, {"params": [alpha], "dual": "yes"}])
    with pytest.raises(ValueError, match="unknown key 'epoch_deacy'; valid keys: dual, epoch_decay"):
        PESG([{"params": [weight], "epoch_deacy": 0.1}])
    with pytest.raises(ValueError, match="PESG lr must be a finite number > 0, got -1"):
        PESG([{"params": [weight]}, {"params": [alpha], "dual": True, "lr": -1}])
    optimizer = PESG([weight])
    with pytest.raises(ValueError, match="momentum must be"):
        optimizer.add_param_group({"params": [alpha], "momentum": 2.0})
    assert len(optimizer.param_groups) == 1  # the bad group was not kept
    with pytest.raises(ValueError, match="decay_factor must be a finite number > 0 \\(or None\\), got 0"):
        optimizer.update_regularizer(decay_factor=0)


def test_param_groups_need_a_min_max_loss():
    model = _mlp(2)
    with pytest.raises(ValueError, match="PESG needs a min-max loss .* got CrossEntropyLoss") as info:
        pesg_param_groups(model, create_loss("ce", task=Task.BINARY, num_classes=2))
    single_line(info.value)
    loss_fn = create_loss("aucm", task=Task.MULTILABEL, num_classes=3)
    primal, dual = pesg_param_groups(model, loss_fn)
    assert len(primal["params"]) == len(list(model.parameters())) + 6
    assert dual == {"params": list(loss_fn.dual_parameters()), "dual": True}
