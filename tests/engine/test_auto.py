"""The auto recipe's rules on synthetic dataset descriptions (rules checked, not numbers)."""

from __future__ import annotations

import pytest

from medlens.data.registry import Task
from medlens.engine.auto import (
    LADDER_2D,
    LADDER_3D,
    MAX_MEMBERS,
    MEMBER_MAX_EPOCHS,
    DatasetProfile,
    candidate_label,
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
