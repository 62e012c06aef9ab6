"""The auto recipe's rules on synthetic dataset descriptions (rules checked, not numbers)."""

from __future__ import annotations

import pytest

from medlens.data.registry import Task
from medlens.engine.auto import (
    LADDER_2D,
    LADDER_3D,
    MAX_MEMBERS,
    MEMBER_MAX_EPOCHS,
    MEMBER_OVERHEAD_S,
    DatasetProfile,
    candidate_label,
    choose_augmentation,
    choose_batch_size,
    choose_class_weights,
    choose_epochs,
    choose_hard_stop,
    choose_loss,
    choose_members,
    choose_model,
    choose_optimizer,
    choose_prior_correction,
    member_seconds,
    needed_epochs,
    parse_budget,
    plan_auto,
)
from medlens.engine.config import build_config

# A stand-in machine: each rung of a ladder is twice as slow as the one before.
SPEEDS = {candidate_label(n, k): 4000 / 2 ** i for ladder in (LADDER_2D, LADDER_3D) for i, (n, k) in enumerate(ladder)}


def _speed(name, kwargs, batch):
    return SPEEDS[candidate_label(name, kwargs)]


def _profile(**changes) -> DatasetProfile:
    base = dict(n_train=5000, n_eval=1000, size=28, channels=1, spatial_dims=2, n_classes=2, task=Task.BINARY,
                imbalance=1.0)
    return DatasetProfile(**{**base, **changes})


def test_a_3d_dataset_gets_a_3d_model():
    plan = plan_auto(_profile(spatial_dims=3), 600, _speed)
    assert (plan.overrides["model"]["name"], plan.overrides["model"]["kwargs"]) in \
        [(n, k) for n, k in LADDER_3D]
    two_d = plan_auto(_profile(), 600, _speed)
    assert (two_d.overrides["model"]["name"], two_d.overrides["model"]["kwargs"]) in [(n, k) for n, k in LADDER_2D]
    config = build_config({"data": {"spec": "adrenalmnist3d"}}, plan=plan.overrides)  # a valid config
    assert config.model.name == "resnet_compact"


def test_a_tiny_dataset_gets_stronger_augmentation():
    tiny, mid, big = (plan_auto(_profile(n_train=n), 300, _speed).overrides["augment"] for n in (500, 8000, 60000))
    assert tiny["rotate"] > mid["rotate"] > big["rotate"] == 0
    assert tiny["zoom"] >= mid["zoom"] >= big["zoom"]


def test_multilabel_gets_bce_and_imbalance_gets_class_weights():
    multi = plan_auto(_profile(task=Task.MULTILABEL, n_classes=14, imbalance=9.0), 300, _speed)
    assert multi.overrides["optim"]["loss"] == "bce" and multi.overrides["data"]["class_weights"] == "none"
    skewed = plan_auto(_profile(imbalance=3.0), 300, _speed)
    assert skewed.overrides["optim"]["loss"] == "ce" and skewed.overrides["data"]["class_weights"] == "balanced"
    # ... trained balanced, then the saved model's logits get the priors back (accuracy-optimal argmax).
    assert skewed.overrides["data"]["correct_priors"] is True
    assert any("prior correction" in r for r in skewed.reasons)
    even = plan_auto(_profile(imbalance=1.2), 300, _speed)
    assert even.overrides["data"]["class_weights"] == "none" and even.overrides["data"]["correct_priors"] is False
    assert multi.overrides["data"]["correct_priors"] is False
    config = build_config({"data": {"spec": "breastmnist"}}, plan=skewed.overrides)  # a valid config
    assert config.data.correct_priors and config.data.class_weights == "balanced"


def test_a_short_budget_gets_a_smaller_model_and_fewer_epochs():
    ladder = [candidate_label(n, k) for n, k in LADDER_2D]

    def rung(plan):
        return ladder.index(candidate_label(plan.overrides["model"]["name"], plan.overrides["model"]["kwargs"]))

    short, long = plan_auto(_profile(), 30, _speed), plan_auto(_profile(), 1200, _speed)
    assert rung(short) < rung(long)
    starved = plan_auto(_profile(n_train=200_000), 30, _speed)
    assert rung(starved) == 0 and starved.overrides["train"]["epochs"] < 8  # the cheapest, fewer epochs than needed
    assert "only" in " ".join(starved.reasons)


def test_the_plan_keeps_inside_the_budget_and_says_why():
    plan = plan_auto(_profile(), 300, _speed, spent_s=20)
    train = plan.overrides["train"]
    assert train["max_seconds"] <= 0.8 * (300 - 20) + 1e-9
    assert plan.estimate_s <= 300
    assert len(plan.reasons) >= 5 and any(r.startswith("model ") for r in plan.reasons)
    assert set(plan.throughput) <= set(SPEEDS)


def test_spare_budget_buys_ensemble_members_not_endless_epochs():
    small = _profile(n_train=500)
    short, roomy, huge = (plan_auto(small, budget, _speed).overrides["train"] for budget in (20, 300, 36_000))
    assert short["members"] == 1
    assert 1 < roomy["members"] <= MAX_MEMBERS and huge["members"] == MAX_MEMBERS
    for train in (roomy, huge):  # every member trains twice what the data needs, at most MEMBER_MAX_EPOCHS
        assert min(2 * needed_epochs(500), MEMBER_MAX_EPOCHS) <= train["epochs"] <= 100
    plan = plan_auto(small, 300, _speed)
    assert plan.estimate_s <= 300 and any(r.startswith(f"members {roomy['members']}:") for r in plan.reasons)
    # A big dataset whose epochs use up the budget stays a single model.
    assert plan_auto(_profile(n_train=200_000), 300, _speed).overrides["train"]["members"] == 1
    config = build_config({"data": {"spec": "breastmnist"}}, plan=plan.overrides)  # a valid config
    assert config.train.members == roomy["members"]
    # --members (or a multi-device run, planned with members=1) fixes the count; the epochs follow it.
    one = plan_auto(small, 300, _speed, members=1)
    assert one.overrides["train"]["members"] == 1 and one.overrides["train"]["epochs"] >= roomy["epochs"]
    assert any(r.startswith("members 1: as asked") for r in one.reasons)
    assert plan_auto(small, 300, _speed, members=4).overrides["train"]["members"] == 4


def test_members_given_choose_the_model_on_each_members_share():
    ladder = [candidate_label(n, k) for n, k in LADDER_2D]
    small = _profile(n_train=500)
    alone = plan_auto(small, 300, _speed, members=1)
    shared = plan_auto(small, 300, _speed, members=5)
    rung = [ladder.index(candidate_label(p.overrides["model"]["name"], p.overrides["model"]["kwargs"]))
            for p in (alone, shared)]
    assert rung[1] < rung[0]  # a fifth of the time each: a cheaper model still gets the epochs it needs
    assert shared.fits and shared.overrides["train"]["epochs"] >= needed_epochs(500)


def test_a_member_is_capped_so_a_budget_past_the_cap_buys_a_second_member():
    # 500 images need 100 epochs; the chosen model (500 img/s here) affords about 110 of them:
    # not two members of 100 epochs, but two of MEMBER_MAX_EPOCHS (50) plus set-up.
    small = _profile(n_train=500)
    plan = plan_auto(small, 110 / 0.8, _speed)
    assert candidate_label(plan.overrides["model"]["name"], plan.overrides["model"]["kwargs"]) == \
        candidate_label(*LADDER_2D[-1])
    assert plan.overrides["train"]["members"] == 2
    assert MEMBER_MAX_EPOCHS <= plan.overrides["train"]["epochs"] < needed_epochs(500)
    assert plan.fits  # the model choice still counts what one model affords, not one member
    assert any(r.startswith("members 2:") and f"capped at {MEMBER_MAX_EPOCHS}" in r for r in plan.reasons)
    assert any(r.startswith("model resnet_compact(width=32): the largest") for r in plan.reasons)



# One test per rule function: each is pure, so a DatasetProfile is all it needs.
@pytest.mark.parametrize("task", [Task.BINARY, Task.MULTICLASS, Task.ORDINAL])
def test_the_loss_rule_is_cross_entropy_for_single_label_tasks(task):
    assert choose_loss(_profile(task=task)) == ("ce", f"loss ce: a {task.value} task")


def test_the_loss_rule_is_bce_for_multilabel():
    assert choose_loss(_profile(task=Task.MULTILABEL, n_classes=14)) == \
        ("bce", "loss bce: a multi-label task (one sigmoid per label)")


def test_the_class_weight_rule_balances_only_past_1_5x_and_never_multilabel():
    assert choose_class_weights(_profile(imbalance=1.5)) == ("none", None)  # more than 1.5x, not 1.5x
    weights, reason = choose_class_weights(_profile(imbalance=2.7))
    assert weights == "balanced"
    assert reason == "class weights balanced: the largest class has 2.7x the images of the smallest (> 1.5)"
    assert choose_class_weights(_profile(task=Task.MULTILABEL, imbalance=9.0)) == ("none", None)


def test_the_prior_correction_rule_follows_balanced_training():
    assert choose_prior_correction("none") == (False, None)
    correct, reason = choose_prior_correction("balanced")
    assert correct is True
    assert reason.startswith("then prior correction: the saved model's logits get the log training priors back")


@pytest.mark.parametrize("n_train, preset", [(1_999, "standard"), (2_000, "light"), (19_999, "light"),
                                             (20_000, "none")])
def test_the_augmentation_rule_weakens_as_the_data_grows(n_train, preset):
    chosen, reason = choose_augmentation(_profile(n_train=n_train))
    assert chosen == preset
    assert reason == (f"augmentation {preset}: {n_train:,} training images (standard below 2,000, light below "
                      f"20,000, none above)")


def test_the_batch_size_rule_doubles_at_5000_images():
    assert choose_batch_size(_profile(n_train=4_999)) == (64, "batch 64: under 5,000 training images")
    assert choose_batch_size(_profile(n_train=5_000)) == (128, "batch 128: at least 5,000 training images")


def test_the_hard_stop_is_the_training_share_of_what_the_probe_left():
    assert choose_hard_stop(300, 20) == (0.8 * 280, "hard stop after 224 s in all")
    assert choose_hard_stop(300) == (240.0, "hard stop after 240 s in all")
    assert choose_hard_stop(30, 45)[0] == 0.8  # a probe past the budget still leaves 1 s to plan with


def test_members_share_the_training_time_less_their_set_up():
    assert member_seconds(240.0, 1) == 240.0
    assert member_seconds(240.0, 4) == 60.0 - MEMBER_OVERHEAD_S


def test_the_model_rule_climbs_the_ladder_until_a_rung_no_longer_fits():
    probed = []

    def speed(name, kwargs, batch):
        probed.append((candidate_label(name, kwargs), batch))
        return _speed(name, kwargs, batch)

    # 8,000 images need 8 epochs: 50 s buy 25 of cnn_small (4,000 img/s), 12.5 at 2,000, 6.25 at 1,000.
    model, reason = choose_model(_profile(n_train=8_000), speed, batch_size=128, train_s=50.0)
    assert (model.name, model.kwargs, model.rate, model.epochs, model.fits) == \
        ("resnet_compact", {"width": 16}, 2000.0, 12.5, True)
    assert probed == [(candidate_label(*rung), 128) for rung in LADDER_2D[:3]]  # not past the first misfit
    assert model.throughput == {candidate_label(*rung): SPEEDS[candidate_label(*rung)] for rung in LADDER_2D[:3]}
    assert reason == ("model resnet_compact(width=16): the largest candidate that trains the 8 epochs 8,000 images "
                      "need in 50 s at the measured 2,000 img/s")
    volume, _ = choose_model(_profile(n_train=8_000, spatial_dims=3), _speed, batch_size=128, train_s=50.0)
    assert (volume.name, volume.kwargs) in LADDER_3D


def test_the_model_rule_falls_back_to_the_cheapest_rung_and_says_so():
    model, reason = choose_model(_profile(n_train=200_000), _speed, batch_size=128, train_s=100.0)
    assert (model.label, model.fits, model.epochs) == ("cnn_small", False, 2.0)
    assert reason == ("model cnn_small: the cheapest candidate; even it affords only 2 of the 8 epochs this data "
                      "needs in 100 s")


def test_the_model_rule_plans_on_each_members_share_when_members_are_given():
    # 500 images need 100 epochs. Alone, 240 s buy them at 500 img/s (the top rung); a fourth of it
    # less set-up (55 s) needs 1,000 img/s, one rung down.
    alone, _ = choose_model(_profile(n_train=500), _speed, batch_size=64, train_s=240.0, members=1)
    shared, reason = choose_model(_profile(n_train=500), _speed, batch_size=64, train_s=240.0, members=4)
    assert alone.label == "resnet_compact(width=32)"
    assert shared.label == "resnet_compact(width=24)" and shared.epochs == 55 * 1000 / 500
    assert "in 55 s at the measured 1,000 img/s" in reason
    # Members chosen by the rules: the model is chosen on all of the time, as for one model.
    assert choose_model(_profile(n_train=500), _speed, batch_size=64, train_s=240.0)[0] == alone


def test_the_members_rule_buys_members_of_twice_the_needed_epochs():
    small = _profile(n_train=500)  # needs 100 epochs: a member trains 50, i.e. 50 s at 500 img/s, plus 5 s set-up
    count, reason = choose_members(small, 240.0, 500.0)
    assert count == 4  # 240 s // 55 s
    assert reason == ("members 4: the 240 s of training buy 240 epochs of this model, room for 4 members of 50 "
                      "epochs each (twice the 100 this data needs, capped at 50) plus 5 s set-up each; an ensemble "
                      "(max 5) averages their probabilities")
    assert choose_members(small, 36_000.0, 500.0)[0] == MAX_MEMBERS
    count, reason = choose_members(small, 100.0, 500.0)
    assert count == 1 and reason.endswith("plus 5 s set-up each: one model gets them all")
    assert reason.startswith("members 1: the 100 s of training buy 100 epochs of this model, less than two members")


def test_the_members_rule_keeps_the_users_count():
    assert choose_members(_profile(n_train=500), 240.0, 500.0, members=3) == \
        (3, "members 3: as asked (--members, or one model for a multi-device run); the budget is shared among them")


def test_the_epochs_rule_fills_each_members_share_within_1_to_100():
    small = _profile(n_train=500)
    assert choose_epochs(small, 240.0, 500.0, 4) == \
        (55, "epochs 55 per member: 55 s of training at 500 img/s (cap 100)")
    assert choose_epochs(small, 240.0, 500.0, 1) == (100, "epochs 100: 240 s of training at 500 img/s (cap 100)")
    assert choose_epochs(_profile(n_train=200_000), 20.0, 4000.0, 1)[0] == 1  # a part of one epoch still trains


def test_the_optimizer_warms_up_only_runs_of_10_epochs_or_more():
    optim, reason = choose_optimizer(10)
    assert optim == {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "schedule": "cosine",
                     "warmup_epochs": 2}
    assert reason == "AdamW 3e-3, cosine with 2 warm-up epochs"
    assert choose_optimizer(9) == ({**optim, "warmup_epochs": 0}, "AdamW 3e-3, cosine with 0 warm-up epochs")


@pytest.mark.parametrize("text, seconds", [("5m", 300), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("45", 45)])
def test_budgets(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["soon", "5x", "3s", ""])
def test_bad_budgets(text):
    with pytest.raises(ValueError, match="--budget"):
        parse_budget(text)


@pytest.mark.integration
def test_train_recipe_auto_writes_its_choices_and_keeps_the_budget(medmnist_root, tmp_path, capsys):
    import json
    import time

    from medlens.cli import main

    run = tmp_path / "auto"
    start = time.perf_counter()
    assert main(["train", "breastmnist", "--root", str(medmnist_root), "--recipe", "auto", "--budget", "15s",
                 "--tracking-uri", "none", "--no-progress", "--no-report", "--out", str(run)]) == 0
    assert time.perf_counter() - start <= 15 * 1.2
    plan = json.loads((run / "auto.json").read_text())
    assert plan["budget_s"] == 15 and plan["overrides"]["train"]["max_seconds"] <= 12
    err = capsys.readouterr().err
    assert all(f"auto: {reason}" in err for reason in plan["reasons"])
    # BreastMNIST is 2.7x imbalanced: trained balanced, saved prior-corrected; unless the user turns balancing off.
    assert plan["overrides"]["data"]["correct_priors"] is True
    from medlens.cli import build_parser
    from medlens.commands.train import train_config as build_train_config

    args = build_parser().parse_args(["train", "breastmnist", "--root", str(medmnist_root), "--recipe", "auto",
                                      "--budget", "15s", "--class-weights", "none", "--out", str(tmp_path / "z")])
    config, _ = build_train_config(args)
    assert config.data.class_weights == "none" and config.data.correct_priors is False

    def planned(*flags):
        args = build_parser().parse_args(["train", "breastmnist", "--root", str(medmnist_root), "--recipe", "auto",
                                          "--budget", "15s", *flags, "--out", str(tmp_path / "z")])
        return build_train_config(args)

    # Asking for it explicitly works: it is checked against the balancing the plan chose.
    assert planned("--correct-priors")[0].data.correct_priors is True
    # Another loss than ce: the plan's correction steps aside and says why.
    config, plan = planned("--loss", "focal")
    assert config.optim.loss == "focal" and config.data.correct_priors is False
    assert "no prior correction: your options give loss focal" in plan.reasons[-1]
    assert main(["train", "breastmnist", "--budget", "5m", "--out", str(tmp_path / "x")]) == 1
    assert "--budget goes with --recipe auto" in capsys.readouterr().err
    assert main(["train", "breastmnist", "--recipe", "auto", "--out", str(tmp_path / "y")]) == 1
    assert "needs --budget" in capsys.readouterr().err


def test_an_image_folder_drops_to_28_px_when_64_does_not_fit(tmp_path):
    import numpy as np
    from PIL import Image

    from medlens.engine.auto import auto_overrides

    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(600):
            Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    said = []
    plan = auto_overrides({"spec": f"folder:{tmp_path}"}, "10s", say=said.append)
    assert plan.overrides["data"]["size"] == 28 and plan.reasons[0].startswith("size 28 px")
    # A size the user chose is kept, fitting or not.
    fixed = auto_overrides({"spec": f"folder:{tmp_path}", "size": 64}, "10s", say=said.append)
    assert "size" not in fixed.overrides["data"]
    # ... and so is one the spec carries (before, the fallback's size then disagreed with it).
    in_spec = auto_overrides({"spec": f"folder:{tmp_path}@64"}, "10s", say=said.append)
    assert "size" not in in_spec.overrides["data"]


# The composed plan, pinned: plan_auto's output for five varied profiles, captured from the planner
# before it was split into one function per rule. Together they reach every branch of every rule:
# each loss and balancing, the three augmentation presets, both batch sizes, a ladder probed to its
# top, one stopped early and one stopped at its first rung, members chosen (several or one) and given.
AUGMENT_STANDARD = {"hflip": 0.5, "vflip": 0.0, "rotate": 10.0, "shift": 0.05, "zoom": 0.1, "noise": 0.0,
                    "brightness": 0.1, "contrast": 0.1, "mixup": 0.0}
AUGMENT_LIGHT = {"hflip": 0.5, "vflip": 0.0, "rotate": 5.0, "shift": 0.03, "zoom": 0.05, "noise": 0.0,
                 "brightness": 0.0, "contrast": 0.0, "mixup": 0.0}
AUGMENT_NONE = {"hflip": 0.0, "vflip": 0.0, "rotate": 0.0, "shift": 0.0, "zoom": 0.0, "noise": 0.0,
                "brightness": 0.0, "contrast": 0.0, "mixup": 0.0}


def _optim(loss: str, warmup: int) -> dict:
    return {"loss": loss, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0001, "schedule": "cosine",
            "warmup_epochs": warmup}


LADDER_2D_PROBED = [("cnn_small", 4000.0), ("resnet_compact(width=16)", 2000.0), ("resnet_compact(width=24)", 1000.0),
                    ("resnet_compact(width=32)", 500.0)]

PINNED_PLANS = [
    pytest.param(
        DatasetProfile(n_train=500, n_eval=200, size=28, channels=1, spatial_dims=2, n_classes=2, task=Task.BINARY,
                       imbalance=1.0), 300, 0.0, None,
        [(label, 64) for label, _ in LADDER_2D_PROBED],
        {"overrides": {"data": {"class_weights": "none", "correct_priors": False, "batch_size": 64},
                       "model": {"name": "resnet_compact", "kwargs": {"width": 32}},
                       "augment": AUGMENT_STANDARD,
                       "optim": _optim("ce", 2),
                       "train": {"epochs": 55, "max_seconds": 240.0, "monitor": "val_auc", "members": 4}},
         "reasons": ["loss ce: a binary task",
                     ("augmentation standard: 500 training images (standard below 2,000, light below 20,000, none "
                      "above)"),
                     "batch 64: under 5,000 training images",
                     ("model resnet_compact(width=32): the largest candidate that trains the 100 epochs 500 images "
                      "need in 240 s at the measured 500 img/s"),
                     ("members 4: the 240 s of training buy 240 epochs of this model, room for 4 members of 50 epochs "
                      "each (twice the 100 this data needs, capped at 50) plus 5 s set-up each; an ensemble (max 5) "
                      "averages their probabilities"),
                     ("epochs 55 per member: 55 s of training at 500 img/s (cap 100); AdamW 3e-3, cosine with 2 "
                      "warm-up epochs; hard stop after 240 s in all")],
         "budget_s": 300, "estimate_s": 235.5, "throughput": dict(LADDER_2D_PROBED), "fits": True},
        id="small-binary-ensemble"),
    pytest.param(
        DatasetProfile(n_train=8000, n_eval=3000, size=64, channels=3, spatial_dims=2, n_classes=5,
                       task=Task.MULTICLASS, imbalance=3.25), 120, 7.5, None,
        [(label, 128) for label, _ in LADDER_2D_PROBED],
        {"overrides": {"data": {"class_weights": "balanced", "correct_priors": True, "batch_size": 128},
                       "model": {"name": "resnet_compact", "kwargs": {"width": 24}},
                       "augment": AUGMENT_LIGHT,
                       "optim": _optim("ce", 2),
                       "train": {"epochs": 14, "max_seconds": 90.0, "monitor": "val_auc", "members": 1}},
         "reasons": ["loss ce: a multiclass task",
                     ("class weights balanced: the largest class has 3.2x the images of the smallest (> 1.5); then "
                      "prior correction: the saved model's logits get the log training priors back, so its argmax is "
                      "the accuracy-optimal decision for data drawn like the training split"),
                     ("augmentation light: 8,000 training images (standard below 2,000, light below 20,000, none "
                      "above)"),
                     "batch 128: at least 5,000 training images",
                     ("model resnet_compact(width=24): the largest candidate that trains the 8 epochs 8,000 images "
                      "need in 90 s at the measured 1,250 img/s"),
                     ("members 1: the 90 s of training buy 14 epochs of this model, less than two members of 16 epochs "
                      "(twice the 8 this data needs, capped at 50) plus 5 s set-up each: one model gets them all"),
                     ("epochs 14: 90 s of training at 1,250 img/s (cap 100); AdamW 3e-3, cosine with 2 warm-up epochs; "
                      "hard stop after 90 s in all")],
         "budget_s": 120, "estimate_s": 97.9,
         "throughput": {label: rate * 1.25 for label, rate in LADDER_2D_PROBED}, "fits": True},
        id="skewed-multiclass-light"),
    pytest.param(
        DatasetProfile(n_train=200_000, n_eval=40_000, size=28, channels=1, spatial_dims=2, n_classes=14,
                       task=Task.MULTILABEL, imbalance=1.0), 30, 2.0, None,
        [("cnn_small", 128)],
        {"overrides": {"data": {"class_weights": "none", "correct_priors": False, "batch_size": 128},
                       "model": {"name": "cnn_small", "kwargs": {}},
                       "augment": AUGMENT_NONE,
                       "optim": _optim("bce", 0),
                       "train": {"epochs": 1, "max_seconds": 22.4, "monitor": "val_auc", "members": 1}},
         "reasons": ["loss bce: a multi-label task (one sigmoid per label)",
                     ("augmentation none: 200,000 training images (standard below 2,000, light below 20,000, none "
                      "above)"),
                     "batch 128: at least 5,000 training images",
                     ("model cnn_small: the cheapest candidate; even it affords only 1 of the 8 epochs this data needs "
                      "in 22 s"),
                     ("members 1: the 22 s of training buy 1 epochs of this model, less than two members of 16 epochs "
                      "(twice the 8 this data needs, capped at 50) plus 5 s set-up each: one model gets them all"),
                     ("epochs 1: 22 s of training at 5,000 img/s (cap 100); AdamW 3e-3, cosine with 0 warm-up epochs; "
                      "hard stop after 22 s in all")],
         "budget_s": 30, "estimate_s": 44.7, "throughput": {"cnn_small": 5000.0}, "fits": False},
        id="starved-multilabel"),
    pytest.param(
        DatasetProfile(n_train=1200, n_eval=400, size=28, channels=1, spatial_dims=3, n_classes=2, task=Task.BINARY,
                       imbalance=2.4), 600, 12.0, 3,
        [("resnet_compact(width=8, stem=standard)", 64), ("resnet_compact(width=16, stem=standard)", 64),
         ("resnet_compact(width=24, stem=standard)", 64)],
        {"overrides": {"data": {"class_weights": "balanced", "correct_priors": True, "batch_size": 64},
                       "model": {"name": "resnet_compact", "kwargs": {"width": 24, "stem": "standard"}},
                       "augment": AUGMENT_STANDARD,
                       "optim": _optim("ce", 2),
                       "train": {"epochs": 100, "max_seconds": 470.4, "monitor": "val_auc", "members": 3}},
         "reasons": ["loss ce: a binary task",
                     ("class weights balanced: the largest class has 2.4x the images of the smallest (> 1.5); then "
                      "prior correction: the saved model's logits get the log training priors back, so its argmax is "
                      "the accuracy-optimal decision for data drawn like the training split"),
                     ("augmentation standard: 1,200 training images (standard below 2,000, light below 20,000, none "
                      "above)"),
                     "batch 64: under 5,000 training images",
                     ("model resnet_compact(width=24, stem=standard): the largest candidate that trains the 50 epochs "
                      "1,200 images need in 152 s at the measured 1,000 img/s"),
                     ("members 3: as asked (--members, or one model for a multi-device run); the budget is shared "
                      "among them"),
                     ("epochs 100 per member: 152 s of training at 1,000 img/s (cap 100); AdamW 3e-3, cosine with 2 "
                      "warm-up epochs; hard stop after 470 s in all")],
         "budget_s": 600, "estimate_s": 382.4,
         "throughput": {"resnet_compact(width=8, stem=standard)": 4000.0,
                        "resnet_compact(width=16, stem=standard)": 2000.0,
                        "resnet_compact(width=24, stem=standard)": 1000.0},
         "fits": True},
        id="volume-members-given"),
    pytest.param(
        DatasetProfile(n_train=1080, n_eval=600, size=28, channels=3, spatial_dims=2, n_classes=5, task=Task.ORDINAL,
                       imbalance=1.4), 200, 3.0, 1,
        [(label, 64) for label, _ in LADDER_2D_PROBED],
        {"overrides": {"data": {"class_weights": "none", "correct_priors": False, "batch_size": 64},
                       "model": {"name": "resnet_compact", "kwargs": {"width": 32}},
                       "augment": AUGMENT_STANDARD,
                       "optim": _optim("ce", 2),
                       "train": {"epochs": 72, "max_seconds": 157.6, "monitor": "val_auc", "members": 1}},
         "reasons": ["loss ce: a ordinal task",
                     ("augmentation standard: 1,080 training images (standard below 2,000, light below 20,000, none "
                      "above)"),
                     "batch 64: under 5,000 training images",
                     ("model resnet_compact(width=32): the largest candidate that trains the 56 epochs 1,080 images "
                      "need in 158 s at the measured 500 img/s"),
                     ("members 1: as asked (--members, or one model for a multi-device run); the budget is shared "
                      "among them"),
                     ("epochs 72: 158 s of training at 500 img/s (cap 100); AdamW 3e-3, cosine with 2 warm-up epochs; "
                      "hard stop after 158 s in all")],
         "budget_s": 200, "estimate_s": 158.9, "throughput": dict(LADDER_2D_PROBED), "fits": True},
        id="ordinal-one-model-asked"),
]


@pytest.mark.parametrize("profile, budget_s, spent_s, members, probes, expected", PINNED_PLANS)
def test_the_composed_plan_is_the_pinned_one(profile, budget_s, spent_s, members, probes, expected):
    import json

    probed = []

    def speed(name, kwargs, batch):  # the stand-in machine, a quarter faster at batch 128
        probed.append((candidate_label(name, kwargs), batch))
        return SPEEDS[candidate_label(name, kwargs)] * (1.25 if batch == 128 else 1.0)

    plan = plan_auto(profile, budget_s, speed, spent_s=spent_s, members=members)
    assert probed == probes  # cheapest first, and not past the first rung that no longer fits
    assert plan.to_dict() == expected
    # auto.json is written from to_dict(): its key order (and so the file) stays the same too.
    assert json.dumps(plan.to_dict()) == json.dumps(expected)
