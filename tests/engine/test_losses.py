"""Unit tests for medlens.engine.losses: every loss on every task it fits, and the errors."""

from __future__ import annotations

import monai.losses
import pytest
import torch
import torch.nn.functional as F

from medlens.data.registry import Task
from medlens.engine.loss_names import LOSS_NAMES
from medlens.engine.losses import (
    LOSSES,
    AUCMarginLoss,
    ClassificationLoss,
    compatible_losses,
    create_loss,
    default_loss,
    register_loss,
)
from helpers import single_line

BATCH = 8
NUM_CLASSES = {Task.BINARY: 2, Task.MULTICLASS: 4, Task.ORDINAL: 5, Task.MULTILABEL: 3}
PAIRS = [(name, task) for name in LOSSES for task in Task if name in compatible_losses(task)]
MISFITS = [(name, task) for name in LOSSES for task in Task if name not in compatible_losses(task)]
WEIGHTED_PAIRS = [(name, task) for name, task in PAIRS if name != "aucm"]
SINGLE_LABEL = [Task.BINARY, Task.MULTICLASS, Task.ORDINAL]
SOFT_SINGLE_LABEL_PAIRS = [(name, task) for name, task in WEIGHTED_PAIRS if task in SINGLE_LABEL]


def _ids(pairs):
    return [f"{name}-{task.value}" for name, task in pairs]


def _logits(task: Task, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, NUM_CLASSES[task], generator=generator).requires_grad_()


def _hard_target(task: Task, seed: int = 1) -> torch.Tensor:
    """Class ids (B,) int64, or 0/1 (B, K) float32 for multi-label; every class/label present."""
    k = NUM_CLASSES[task]
    if task.is_multilabel:
        target = (torch.rand(BATCH, k, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
        target[0], target[1] = 1.0, 0.0  # both values in every label, so AUCM sees both classes
        return target
    return torch.arange(BATCH, dtype=torch.int64) % k


def _soft_target(task: Task, seed: int = 2) -> torch.Tensor:
    """Mixup-style targets: rows summing to 1 (single-label) or values in [0, 1] (multi-label)."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.rand(BATCH, NUM_CLASSES[task], generator=generator)
    return raw if task.is_multilabel else raw / raw.sum(dim=1, keepdim=True)


def _weights(task: Task) -> torch.Tensor:
    return torch.linspace(0.5, 3.0, NUM_CLASSES[task])


def _build(name: str, task: Task, **kwargs) -> ClassificationLoss:
    return create_loss(name, task=task, num_classes=NUM_CLASSES[task], **kwargs)


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_names_and_defaults():
    assert list(LOSSES) == ["ce", "bce", "focal", "aucm"]
    assert compatible_losses(Task.BINARY) == ["ce", "focal", "aucm"]
    assert compatible_losses(Task.MULTICLASS) == ["ce", "focal"]
    assert compatible_losses(Task.ORDINAL) == ["ce", "focal"]
    assert compatible_losses(Task.MULTILABEL) == ["bce", "focal", "aucm"]
    for task in Task:
        assert default_loss(task) == ("bce" if task.is_multilabel else "ce")
        assert default_loss(task) in compatible_losses(task)


def test_the_torch_free_names_list_is_the_registry():
    """The CLI's --loss choices and the config read LOSS_NAMES; it must name what is registered."""
    assert LOSS_NAMES == tuple(LOSSES)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="'ce' is already registered"):
        register_loss("ce", tasks=[Task.BINARY])(type("Other", (ClassificationLoss,), {}))
    assert LOSSES["ce"].__name__ == "CrossEntropyLoss"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        create_loss("hinge", task=Task.BINARY, num_classes=2)
    assert single_line(info.value) == "unknown loss 'hinge'; valid names: ce, bce, focal, aucm"


@pytest.mark.parametrize(("name", "task"), MISFITS, ids=_ids(MISFITS))
def test_incompatible_task_raises_one_clear_line(name, task):
    with pytest.raises(ValueError) as info:
        _build(name, task)
    valid = ", ".join(compatible_losses(task))
    assert single_line(info.value) == f"loss {name!r} does not fit task {task.value}; use one of: {valid}"


def test_ce_on_multilabel_message():
    with pytest.raises(ValueError) as info:
        create_loss("ce", task=Task.MULTILABEL, num_classes=3)
    assert str(info.value) == "loss 'ce' does not fit task multilabel; use one of: bce, focal, aucm"


@pytest.mark.parametrize(
    ("name", "kwargs", "pattern"),
    [
        ("ce", {"gamma": 2.0}, r"loss 'ce' takes no option 'gamma'; its options: none"),
        ("focal", {"margin": 1.0}, r"loss 'focal' takes no option 'margin'; its options: gamma"),
        ("focal", {"gamma": -1.0}, r"gamma must be a finite number >= 0, got -1.0"),
        ("aucm", {"margin": 0.0}, r"margin must be a finite number > 0, got 0.0"),
        ("aucm", {"version": "v3"}, r"version must be one of: v1, v2; got 'v3'"),
        ("aucm", {"imratio": 1.5}, r"imratio \(fraction of positives\) must be in \(0, 1\), got 1.5"),
        ("aucm", {"imratio": 0.0}, r"must be in \(0, 1\), got 0.0"),
        ("aucm", {"class_weights": torch.ones(2)}, r"'aucm' takes no class_weights"),
        ("ce", {"class_weights": torch.ones(3)}, r"class_weights must have shape \(2,\), got \(3,\)"),
        ("ce", {"class_weights": torch.tensor([-1.0, 1.0])}, r"class_weights must be finite, >= 0"),
    ],
)
def test_bad_options_raise(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        create_loss(name, task=Task.BINARY, num_classes=2, **kwargs)
    single_line(info.value)


def test_bad_num_classes_and_task_raise():
    with pytest.raises(ValueError, match="num_classes must be 2, got 3"):
        create_loss("ce", task=Task.BINARY, num_classes=3)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2 for task multiclass, got 1"):
        create_loss("ce", task=Task.MULTICLASS, num_classes=1)
    with pytest.raises(ValueError, match="task must be a medlens Task .* got 'binary'"):
        create_loss("ce", task="binary", num_classes=2)
    with pytest.raises(ValueError, match=r"imratio must be one number or 3 numbers \(one per label\), got 2"):
        create_loss("aucm", task=Task.MULTILABEL, num_classes=3, imratio=[0.1, 0.2])


@pytest.mark.parametrize(("name", "task"), PAIRS, ids=_ids(PAIRS))
def test_wrong_shapes_raise(name, task):
    loss = _build(name, task)
    with pytest.raises(ValueError, match=rf"expects logits of shape \(B, {NUM_CLASSES[task]}\), got \(8, 7\)"):
        loss(torch.zeros(BATCH, 7), _hard_target(task))
    with pytest.raises(ValueError, match=f"loss '{name}'"):
        loss(_logits(task), _hard_target(task)[:3])


# --------------------------------------------------------------------------------------------
# Every loss on every task it fits


@pytest.mark.parametrize(("name", "task"), PAIRS, ids=_ids(PAIRS))
def test_hard_targets_give_finite_scalar_and_gradients(name, task):
    loss = _build(name, task)
    logits = _logits(task)
    value = loss(logits, _hard_target(task))
    assert value.shape == () and torch.isfinite(value)
    value.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "task"), PAIRS, ids=_ids(PAIRS))
def test_soft_targets_work_or_are_refused(name, task):
    loss = _build(name, task)
    logits = _logits(task)
    if not loss.supports_soft_targets:
        with pytest.raises(ValueError, match="does not support mixup") as info:
            loss(logits, _soft_target(task))
        single_line(info.value)
        return
    value = loss(logits, _soft_target(task))
    assert value.shape == () and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_only_aucm_refuses_soft_targets():
    assert {name for name, cls in LOSSES.items() if not cls.supports_soft_targets} == {"aucm"}


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize(("name", "task"), SOFT_SINGLE_LABEL_PAIRS, ids=_ids(SOFT_SINGLE_LABEL_PAIRS))
def test_one_hot_soft_targets_equal_class_ids(name, task, weighted):
    loss = _build(name, task, class_weights=_weights(task) if weighted else None)
    logits, ids = _logits(task), _hard_target(task)
    one_hot = F.one_hot(ids, NUM_CLASSES[task]).float()
    torch.testing.assert_close(loss(logits, one_hot), loss(logits, ids), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("name", "task"), WEIGHTED_PAIRS, ids=_ids(WEIGHTED_PAIRS))
def test_class_weights_change_the_value(name, task):
    logits, target = _logits(task), _hard_target(task)
    plain = _build(name, task)(logits, target)
    weighted = _build(name, task, class_weights=_weights(task))(logits, target)
    assert torch.isfinite(weighted) and not torch.allclose(plain, weighted)


# --------------------------------------------------------------------------------------------
# Values against reference formulas


@pytest.mark.parametrize("task", SINGLE_LABEL, ids=lambda t: t.value)
def test_ce_matches_torch(task):
    logits, ids = _logits(task), _hard_target(task)
    weights = _weights(task)
    torch.testing.assert_close(_build("ce", task)(logits, ids), F.cross_entropy(logits, ids))
    torch.testing.assert_close(
        _build("ce", task, class_weights=weights)(logits, ids), F.cross_entropy(logits, ids, weight=weights)
    )
    soft = _soft_target(task)
    torch.testing.assert_close(_build("ce", task)(logits, soft), F.cross_entropy(logits, soft))


def test_bce_matches_torch_with_pos_weight():
    task = Task.MULTILABEL
    logits, labels, weights = _logits(task), _hard_target(task), _weights(task)
    torch.testing.assert_close(
        _build("bce", task, class_weights=weights)(logits, labels),
        F.binary_cross_entropy_with_logits(logits, labels, pos_weight=weights),
    )


@pytest.mark.parametrize("soft", [False, True], ids=["ids", "soft"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_focal_with_gamma_zero_equals_ce_or_bce(task, weighted, soft):
    weights = _weights(task) if weighted else None
    reference = "bce" if task.is_multilabel else "ce"
    logits = _logits(task)
    target = _soft_target(task) if soft else _hard_target(task)
    focal = _build("focal", task, class_weights=weights, gamma=0.0)(logits, target)
    torch.testing.assert_close(focal, _build(reference, task, class_weights=weights)(logits, target))


@pytest.mark.parametrize("task", list(Task), ids=lambda t: t.value)
def test_focal_matches_lin_et_al_formula(task):
    gamma = 2.0
    logits, target = _logits(task), _hard_target(task)
    value = _build("focal", task, gamma=gamma)(logits, target)
    if task.is_multilabel:
        p = torch.sigmoid(logits)
        p_t = torch.where(target == 1, p, 1 - p)  # (B, K)
        expected = (-((1 - p_t) ** gamma) * torch.log(p_t)).mean()
    else:
        p_t = logits.softmax(dim=1).gather(1, target[:, None]).squeeze(1)  # (B,)
        expected = (-((1 - p_t) ** gamma) * torch.log(p_t)).mean()
    torch.testing.assert_close(value, expected)
    # Focusing: easy examples lose more than hard ones, so the focal value is below CE/BCE.
    assert value < _build("focal", task, gamma=0.0)(logits, target)


# --------------------------------------------------------------------------------------------
# AUC-margin


@pytest.mark.parametrize(("task", "n_heads"), [(Task.BINARY, 1), (Task.MULTILABEL, 3)], ids=["binary", "multilabel"])
def test_aucm_exposes_a_b_alpha_as_parameters(task, n_heads):
    loss = _build("aucm", task, imratio=0.25)
    assert isinstance(loss, AUCMarginLoss)
    primal, dual = list(loss.primal_parameters()), list(loss.dual_parameters())
    assert len(primal) == 2 * n_heads and len(dual) == n_heads
    assert all(isinstance(p, torch.nn.Parameter) and p.shape == () for p in primal + dual)
    # Together they are exactly the module's parameters: an optimizer given both sees them all.
    assert {id(p) for p in primal + dual} == {id(p) for p in loss.parameters()}
    assert {id(h.alpha) for h in loss.heads} == {id(p) for p in dual}
    loss(_logits(task), _hard_target(task)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) for p in primal + dual)
    # alpha starts at 0 and the margin term pushes it up: its gradient is positive.
    assert all(p.grad > 0 for p in dual)


def test_aucm_binary_scores_positive_class_probability():
    logits, ids = _logits(Task.BINARY), _hard_target(Task.BINARY)
    loss = _build("aucm", Task.BINARY, imratio=0.3, margin=0.8)
    reference = monai.losses.AUCMLoss(margin=0.8, imratio=0.3)
    scores = torch.sigmoid(logits[:, 1] - logits[:, 0])[:, None]  # == softmax(logits)[:, 1]
    torch.testing.assert_close(loss(logits, ids), reference(scores, ids[:, None].float()))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_aucm_multilabel_averages_one_aucm_per_label(version):
    task = Task.MULTILABEL
    logits, labels = _logits(task), _hard_target(task)
    imratios = [0.1, 0.2, 0.3]
    loss = _build("aucm", task, imratio=imratios, version=version)
    with torch.no_grad():  # distinct a, b, alpha per label, so a mix-up of heads would show
        for k, head in enumerate(loss.heads):
            head.a.fill_(0.1 * k)
            head.b.fill_(0.2 * k)
            head.alpha.fill_(0.3 * k)
    expected = []
    for k in range(3):
        reference = monai.losses.AUCMLoss(imratio=imratios[k], version=version)
        with torch.no_grad():
            reference.a.fill_(0.1 * k)
            reference.b.fill_(0.2 * k)
            reference.alpha.fill_(0.3 * k)
        expected.append(reference(torch.sigmoid(logits[:, k : k + 1]), labels[:, k : k + 1]))
    torch.testing.assert_close(loss(logits, labels), torch.stack(expected).mean())
    assert [head.imratio for head in loss.heads] == pytest.approx(imratios)


def test_losses_follow_the_module_to_another_dtype():
    loss = _build("ce", Task.MULTICLASS, class_weights=_weights(Task.MULTICLASS)).to(torch.float64)
    value = loss(_logits(Task.MULTICLASS).double(), _hard_target(Task.MULTICLASS))
    assert value.dtype == torch.float64
