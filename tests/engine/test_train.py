"""End-to-end training runs on the real data: run folder, resume after kill -9, seeds, DDP, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import RUN_FILES, quick_config, single_line
from medlens.cli import main
from medlens.engine.checkpoint import load_card, load_model
from medlens.engine.config import build_config, load_run_config
from medlens.engine.tracking import HISTORY_COLUMNS, read_history
from medlens.engine.train import resume, train

REPO = Path(__file__).resolve().parents[2]
TIMING = ("seconds", "images_per_second")


def _history_without_timing(run: Path) -> list[dict]:
    # NaN (train ACC/AUC under mixup) as a string, so equal histories compare equal.
    return [{k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items() if k not in TIMING}
            for row in read_history(run / "history.csv")]


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "medlens", *args], cwd=REPO, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.integration
def test_breastmnist_run_writes_every_file(medmnist_root, tmp_path):
    run = tmp_path / "runs" / "breast"
    cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root), "class_weights": "balanced"},
                  augment={"hflip": 0.5, "rotate": 10, "noise": 0.02},
                  train={"epochs": 3, "tracking_uri": None})  # the default: SQLite beside the runs
    result = train(cfg, run)
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    history = read_history(run / "history.csv")
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert list(history[0]) == list(HISTORY_COLUMNS)
    assert all(math.isfinite(row[k]) for row in history for k in ("train_loss", "val_loss", "val_auc", "lr"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == result.metrics
    assert metrics["test"]["n"] == 156 and 0.0 <= metrics["test"]["auc"] <= 1.0
    # Best by val AUC; an equal AUC goes to the lower val loss, then the earlier epoch.
    assert metrics["best_epoch"] == max(range(3), key=lambda e: (history[e]["val_auc"], -history[e]["val_loss"], -e))
    assert "class weights (balanced): malignant 1.857, normal, benign 0.684" in (run / "train.log").read_text()
    # config.yaml holds the config as run: the default batch resolved for 2D images (128).
    assert cfg.data.batch_size is None
    assert load_run_config(run) == dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=128))
    # The MLflow store sits beside the run folder and holds this run's metrics.
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run / "tracking.json").read_text())["run_id"]
    logged = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}").get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.metrics["test_auc"] == pytest.approx(metrics["test"]["auc"])
    # The best checkpoint alone rebuilds the model; its card says what it is.
    model, card = load_model(run)
    assert card.architecture == "cnn_small" and card.class_names == ["malignant", "normal, benign"]
    assert card.task == "binary" and card.in_channels == 1 and card.input_size == 28
    assert card.metrics["test"]["auc"] == pytest.approx(metrics["test"]["auc"])
    assert len(card.normalisation["mean"]) == 1 and 0 < card.normalisation["std"][0] < 1
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 2)


@pytest.mark.integration
@pytest.mark.slow
def test_medical_mnist_zip_run(shared_data, tmp_path):
    archive = shared_data / "medical_mnist" / "medical_mnist.zip"
    if not archive.is_file():
        archive = next(shared_data.rglob("*.zip"))
    run = tmp_path / "medical"
    cfg = quick_config(data={"spec": f"folder:{archive}", "size": 28, "batch_size": 256}, train={"epochs": 1})
    result = train(cfg, run)
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    card = load_card(run / "checkpoints" / "best.safetensors")
    assert len(card.class_names) == 6 and card.task == "multiclass"
    assert result.metrics["test"]["acc"] > 0.9  # one epoch of the small CNN already separates the six classes


@pytest.mark.integration
def test_same_seed_same_history(medmnist_root, tmp_path):
    def run(name: str, seed: int) -> Path:
        cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root), "oversample": True},
                      augment={"hflip": 0.5, "rotate": 15, "zoom": 0.1, "noise": 0.05, "mixup": 0.2},
                      train={"seed": seed})
        train(cfg, tmp_path / name)
        return tmp_path / name

    first, second, other = run("a", 3), run("b", 3), run("c", 4)
    assert _history_without_timing(first) == _history_without_timing(second)
    assert _history_without_timing(first) != _history_without_timing(other)
    a, b = load_file(first / "checkpoints/last.safetensors"), load_file(second / "checkpoints/last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.integration
def test_correct_priors_shifts_only_the_saved_classifier_bias(medmnist_root, tmp_path):
    def run(name: str, **data) -> Path:
        cfg = quick_config(
            data={"spec": "breastmnist", "root": str(medmnist_root), "class_weights": "balanced", **data},
            train={"seed": 7},
        )
        train(cfg, tmp_path / name)
        return tmp_path / name

    plain, corrected = run("plain"), run("corrected", correct_priors=True)
    # The same training (the shift never touches the model in training) ...
    assert _history_without_timing(plain) == _history_without_timing(corrected)
    prior = torch.tensor([147 / 546, 399 / 546]).log()  # BreastMNIST's training split: 147 malignant, 399 benign
    for name in ("best", "last"):
        a, b = (load_file(run / f"checkpoints/{name}.safetensors") for run in (plain, corrected))
        bias = "/fc.bias"  # the raw safetensors key of state_dict()["fc.bias"]
        assert bias in a and all(torch.equal(a[k], b[k]) for k in a if k != bias), name
        # ... and the saved classifier bias gets the log training priors added, once.
        torch.testing.assert_close(b[bias] - a[bias], prior)
    assert "prior correction: the saved models' logits get the log training priors added (malignant -1.312" \
        in (corrected / "train.log").read_text()
    # Scored with the shift: the minority class (malignant) is predicted less often.
    from medlens.engine.config import resolve_data
    from medlens.inference.predict import predict

    source = resolve_data(build_config({"data": {"spec": "breastmnist", "root": str(medmnist_root)}}).data)
    rates = []
    for run in (plain, corrected):
        model, card = load_model(run)
        scores = predict(model, source.splits["test"], task=source.info.task, mean=card.normalisation["mean"],
                         std=card.normalisation["std"]).y_score
        rates.append(float((scores.argmax(1) == 0).mean()))
    assert rates[1] < rates[0]


def test_correct_priors_doubles_the_shift_when_weights_and_oversampling_both_balance(medmnist_root):
    from medlens.engine.config import resolve_data
    from medlens.engine.train import model_and_loss

    def shift(**data):
        cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root), "correct_priors": True, **data})
        return model_and_loss(cfg, resolve_data(cfg.data))[4]

    prior = torch.tensor([147 / 546, 399 / 546]).log()
    torch.testing.assert_close(shift(class_weights="balanced"), prior)
    torch.testing.assert_close(shift(oversample=True), prior)
    torch.testing.assert_close(shift(class_weights="balanced", oversample=True), 2 * prior)


def test_correct_priors_refuses_a_model_without_a_classifier_bias_before_training(medmnist_root):
    from medlens.engine.config import resolve_data
    from medlens.engine.train import model_and_loss
    from medlens.models import create_model, register_model
    from medlens.models.registry import unregister_model

    @register_model("cnn_no_bias", spatial_dims=(2,), description="cnn_small, classifier without bias (test)")
    def cnn_no_bias(*, in_channels, num_classes, spatial_dims, input_size):
        model = create_model("cnn_small", in_channels=in_channels, num_classes=num_classes, input_size=input_size)
        model.fc = torch.nn.Linear(model.fc.in_features, num_classes, bias=False)
        return model

    try:
        cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root), "class_weights": "balanced",
                            "correct_priors": True}, model={"name": "cnn_no_bias"})
        with pytest.raises(ValueError) as info:
            model_and_loss(cfg, resolve_data(cfg.data))
        assert single_line(info.value) == ("data.correct_priors shifts the classifier bias (get_classifier().bias), "
                                           "which model 'cnn_no_bias' lacks")
    finally:
        unregister_model("cnn_no_bias")


@pytest.mark.integration
@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted(medmnist_root, tmp_path):
    args = ["train", "pneumoniamnist", "--root", str(medmnist_root), "--model", "cnn_small", "--epochs", "4",
            "--batch-size", "64", "--augment", "light", "--schedule", "multistep", "--seed", "5",
            "--tracking-uri", "none", "--no-progress"]
    whole = _cli(*args, "--out", str(tmp_path / "whole"))
    whole_out = whole.communicate(timeout=600)
    assert whole.returncode == 0, whole_out[1][-2000:]

    killed_dir = tmp_path / "killed"
    victim = _cli(*args, "--out", str(killed_dir))
    history = killed_dir / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for two finished epochs, then kill inside the third
        if history.is_file() and len(history.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    time.sleep(0.4)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    done_before_kill = len(read_history(history))
    assert 2 <= done_before_kill < 4, "the kill must land before the run ended"
    assert not (killed_dir / "metrics.json").exists()

    resumed = _cli("train", "--resume", str(killed_dir))
    resumed_out = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, resumed_out[1][-2000:]
    assert _history_without_timing(killed_dir) == _history_without_timing(tmp_path / "whole")
    for name in ("last", "best"):
        a = load_file(tmp_path / "whole" / "checkpoints" / f"{name}.safetensors")
        b = load_file(killed_dir / "checkpoints" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} weights differ after resume"
    assert json.loads((killed_dir / "metrics.json").read_text())["test"] == \
        json.loads((tmp_path / "whole" / "metrics.json").read_text())["test"]


@pytest.mark.integration
@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one(medmnist_root, tmp_path):
    common = ["train", "breastmnist", "--root", str(medmnist_root), "--model", "cnn_small", "--model-arg",
              "dropout=0", "--epochs", "2", "--seed", "1", "--tracking-uri", "none", "--no-progress"]
    single = _cli(*common, "--batch-size", "64", "--out", str(tmp_path / "single"))
    out = single.communicate(timeout=600)
    assert single.returncode == 0, out[1][-2000:]
    ddp = _cli(*common, "--batch-size", "32", "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path / "ddp"))
    out = ddp.communicate(timeout=600)
    assert ddp.returncode == 0, out[1][-2000:]
    one, two = read_history(tmp_path / "single" / "history.csv"), read_history(tmp_path / "ddp" / "history.csv")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):  # same global batches of 64, gradients averaged over the two processes
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)


@pytest.mark.integration
def test_pretrain_aucm_pesg_and_3d(medmnist_root, tmp_path):
    cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root)},
                  model={"name": "resnet_compact", "pretrain": "autoencoder", "pretrain_epochs": 2},
                  optim={"loss": "aucm", "optimizer": "pesg", "lr": 0.05, "schedule": "multistep"})
    result = train(cfg, tmp_path / "aucm")
    rows = (tmp_path / "aucm" / "pretrain.csv").read_text().splitlines()
    assert len(rows) == 3  # header + two pre-training epochs
    assert math.isfinite(result.metrics["test"]["auc"])

    cfg3d = quick_config(data={"spec": "adrenalmnist3d", "root": str(medmnist_root), "batch_size": 32},
                    model={"name": "resnet_compact", "kwargs": {"width": 8}},
                    augment={"hflip": 0.5, "rotate": 10}, train={"epochs": 1})
    result = train(cfg3d, tmp_path / "three_d")
    card = load_card(tmp_path / "three_d" / "checkpoints" / "best.json")
    assert card.spatial_dims == 3 and result.metrics["test"]["n"] > 0


@pytest.mark.integration
def test_early_stopping_ends_a_stalled_run(medmnist_root, tmp_path):
    cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root), "oversample": True},
                  optim={"lr": 1e-12}, train={"epochs": 10, "early_stop": 2, "monitor": "val_loss"})
    result = train(cfg, tmp_path / "stalled")
    # Weights barely move, so the validation loss never improves after epoch 0: stop after 2 more.
    assert result.metrics["epochs_run"] == 3 and result.metrics["best_epoch"] == 0
    assert "oversampling" in (tmp_path / "stalled" / "train.log").read_text()


def test_metrics_json_writes_nan_as_null_and_reads_it_back_as_nan(tmp_path, monkeypatch):
    """An undefined AUC (a one-class split) and an empty history are NaN: strict JSON null on disk."""
    from types import SimpleNamespace

    from medlens.engine import checkpoint
    from medlens.engine import train as engine
    from medlens.engine.run_folder import RUN_METRICS_SCHEMA_VERSION, RunFolder

    card = checkpoint.ModelCard(architecture="cnn_small", model_kwargs={}, task="binary", class_names=["a", "b"],
                                in_channels=1, spatial_dims=2, input_size=28,
                                normalisation={"mean": [0.5], "std": [0.25]})
    scores = {"val": {"acc": 1.0, "auc": math.nan, "n": 3}, "test": {"acc": 0.5, "auc": 0.75, "n": 4},
              "diverged": None}  # score()'s verdict on the validation scores: these rank images
    monkeypatch.setattr(checkpoint, "load_model", lambda path: (None, card))
    monkeypatch.setattr(checkpoint, "save_model", lambda model, card, path: None)
    monkeypatch.setattr(engine, "score", lambda model, card, source, task: scores)
    recorder = SimpleNamespace(rows=[], best_epoch=-1)
    metrics = engine._final_metrics(tmp_path, SimpleNamespace(spec="breastmnist@28"), None, recorder, 2,
                                    quick_config(data={"spec": "breastmnist"}))
    text = RunFolder(tmp_path).metrics.read_text()
    stored = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.json"))
    assert stored["val"]["auc"] is None and stored["train_images_per_second"] is None
    assert stored["schema_version"] == RUN_METRICS_SCHEMA_VERSION == 1
    back = RunFolder(tmp_path).read_metrics()
    assert math.isnan(back["val"]["auc"]) and math.isnan(back["train_images_per_second"])
    assert back["test"] == metrics["test"] == scores["test"]


@pytest.mark.parametrize("args, expected", [
    (["--model", "no_such_net"], "unknown model 'no_such_net'"),
    (["--model", "cnn_small", "--loss", "bce"], "loss 'bce'"),
    (["--model", "cnn_small", "--loss", "aucm"], "'pesg' goes with optim.loss 'aucm'"),
    (["--model", "cnn_small", "--aug", "rotate=-5"], "augment.rotate"),
    (["--model", "cnn_small", "--schedule", "sometimes"], "invalid choice"),
    (["--model", "cnn_small", "--class-weights", "balanced", "--correct-priors", "--loss", "focal"],
     "data.correct_priors maps softmax probabilities back to the training priors: it needs loss ce; got 'focal'"),
    (["--model", "cnn_small", "--correct-priors"], "data.correct_priors undoes balanced training"),
])
def test_bad_options_are_one_clear_line(medmnist_root, tmp_path, capsys, args, expected):
    out = tmp_path / "run"
    try:
        code = main(["train", "breastmnist", "--root", str(medmnist_root), "--epochs", "1", "--tracking-uri", "none",
                     "--no-progress", "--out", str(out), *args])
    except SystemExit as exit_:  # argparse: usage error
        code = exit_.code
    assert code != 0
    err = capsys.readouterr().err
    assert expected in err
    if code == 1:
        single_line(err.strip())
    assert not out.exists(), "a failed start must leave no run folder behind"


def test_2d_only_model_on_3d_data_is_refused(medmnist_root, tmp_path, capsys):
    code = main(["train", "adrenalmnist3d", "--root", str(medmnist_root), "--model", "cnn_small", "--epochs", "1",
                 "--tracking-uri", "none", "--out", str(tmp_path / "run")])
    assert code == 1
    err = single_line(capsys.readouterr().err.strip())
    assert "cnn_small" in err and "3D" in err


def test_existing_run_is_not_overwritten_and_resume_needs_a_run(medmnist_root, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {spec: breastmnist}\n")
    assert main(["train", "breastmnist", "--out", str(run), "--tracking-uri", "none"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 1
    assert "not a medlens run folder" in capsys.readouterr().err


@pytest.mark.integration
def test_resume_before_the_first_epoch_ended_starts_again(medmnist_root, tmp_path):
    from medlens.engine.config import write_yaml

    run = tmp_path / "run"
    run.mkdir()
    config = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root)}, train={"epochs": 1})
    write_yaml(config, run / "config.yaml")  # what a run killed during its first epoch leaves
    result = resume(run)
    assert result.metrics["epochs_run"] == 1 and (run / "checkpoints" / "best.safetensors").is_file()


@pytest.mark.integration
@pytest.mark.parametrize("precision, compile_", [("bf16-mixed", False), ("32-true", True)])
def test_precision_and_compile_are_passed_through(medmnist_root, tmp_path, precision, compile_):
    if compile_:
        import shutil

        if not (shutil.which("cc") or shutil.which("gcc")):
            pytest.skip("torch.compile needs a C compiler")
    cfg = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root)},
                  model={"name": "cnn_small", "compile": compile_}, train={"epochs": 1, "precision": precision})
    result = train(cfg, tmp_path / "run")
    assert math.isfinite(result.metrics["test"]["auc"])
    # The checkpoint holds the plain model's weights whatever wrapped it during training.
    model, card = load_model(tmp_path / "run")
    assert card.config["train"]["precision"] == precision and card.config["model"]["compile"] is compile_
    stored = {k.lstrip("/") for k in load_file(tmp_path / "run" / "checkpoints" / "best.safetensors")}
    assert stored == set(model.state_dict()), "no '_orig_mod.' or other wrapper prefix in the stored names"
