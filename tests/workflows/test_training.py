"""``--recipe auto`` from Python is the CLI's: one ``build_train_config``, one ``workflows.train``."""

from __future__ import annotations

import json

import pytest

from medlens.cli import build_parser
from medlens.commands.train import train_config
from medlens.engine import auto
from medlens.engine.auto import build_train_config
from medlens.workflows import resume, train


def _fixed_probe(name, kwargs, profile, batch_size, **_):
    """A deterministic throughput (images/s): wider models slower, so the plan is the same on every call."""
    return 40_000.0 / (1 + kwargs.get("width", 8))


@pytest.mark.integration
def test_python_and_cli_compose_the_same_auto_config_and_train_writes_the_plan(medmnist_root, tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "probe_throughput", _fixed_probe)
    args = build_parser().parse_args(["train", "breastmnist", "--root", str(medmnist_root), "--recipe", "auto",
                                      "--budget", "20s", "--seed", "3", "--out", str(tmp_path / "cli")])
    cli_config, cli_plan = train_config(args)
    config, plan = build_train_config({"data": {"spec": "breastmnist", "root": str(medmnist_root), "split_seed": 3},
                                       "train": {"seed": 3}}, recipe="auto", budget="20s", say=lambda m: None)
    assert config == cli_config
    assert plan.overrides == cli_plan.overrides and plan.reasons == cli_plan.reasons
    assert config.data.correct_priors is True  # BreastMNIST is 2.7x imbalanced: balanced, then corrected

    from dataclasses import replace

    quick = replace(config, train=replace(config.train, epochs=1, members=1, tracking_uri="none", progress=False))
    result = train(quick, tmp_path / "py", plan=plan)
    written = json.loads((tmp_path / "py" / "auto.json").read_text())
    assert written == json.loads(json.dumps(plan.to_dict()))
    assert result.metrics["epochs_run"] == 1
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(quick, tmp_path / "py", plan=plan)
    assert resume(tmp_path / "py").metrics["test"] == result.metrics["test"]  # finished: nothing left to train


def test_a_budget_needs_the_auto_recipe_and_the_auto_recipe_a_budget():
    with pytest.raises(ValueError, match="--budget goes with --recipe auto"):
        build_train_config({"data": {"spec": "breastmnist"}}, recipe="fast", budget="5m")
    with pytest.raises(ValueError, match="--recipe auto needs --budget"):
        build_train_config({"data": {"spec": "breastmnist"}}, recipe="auto")
    config, plan = build_train_config({"data": {"spec": "breastmnist"}, "optim": {"lr": 0.01}}, recipe="fast")
    assert plan is None and config.optim.lr == 0.01 and config.model.name == "resnet_compact"


def test_engine_train_refuses_an_ensemble_and_names_the_workflow(tmp_path):
    from medlens.engine.config import build_config
    from medlens.engine.train import train as train_one

    config = build_config({"data": {"spec": "breastmnist"}, "train": {"members": 2}})
    with pytest.raises(ValueError, match="medlens.workflows.train"):
        train_one(config, tmp_path / "ens")
    assert not (tmp_path / "ens").exists()


def test_an_ensemble_is_not_started_over_an_existing_run(tmp_path):
    """The same check as a single run's, before any data is read: the folder's run is left as it is."""
    from medlens.engine.config import build_config, write_yaml

    config = build_config({"data": {"spec": "breastmnist"}, "train": {"members": 2}})
    write_yaml(config, tmp_path / "config.yaml")
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(FileExistsError, match="already holds a run; continue it with --resume"):
        train(config, tmp_path)
    assert (tmp_path / "config.yaml").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
