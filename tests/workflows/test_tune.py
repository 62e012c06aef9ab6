"""`medlens tune`: the space file's checks, a small search on BreastMNIST (28 px, cnn_small, 2-3
epochs), resuming, kill -9, the budget, refusals, best.yaml, the report section and MLflow nesting."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import quick_config, single_line
from medlens.cli import main
from medlens.engine.run_folder import RunFolder
from medlens.workflows.tune import tune
from medlens.workflows.tune_space import check_space, load_space, parse_space

REPO = Path(__file__).resolve().parents[2]
SPACE = {"optim.lr": {"log": [1.0e-3, 1.0e-2]}, "model.kwargs.dropout": [0.2, 0.5]}


def _base(root, **train):
    return quick_config(data={"spec": "breastmnist", "root": str(root), "batch_size": 64},
                        train={"epochs": 2, **train})


def _write_space(path: Path, space: dict = SPACE) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


# ----------------------------------------------------------------------------- the space file


def test_space_file_reads_ranges_choices_and_fixed_values(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {log: [1.0e-4, 1.0e-2]}\naugment.rotate: {uniform: [0, 20], step: 5}\n"
                    "train.epochs: {int: [2, 8], log: true}\nmodel.name: [resnet_compact, cnn_small]\n"
                    "data.class_weights: balanced\n")
    space = load_space(path)
    assert [(p.name, p.kind) for p in space.params] == [("optim.lr", "log"), ("augment.rotate", "uniform"),
                                                         ("train.epochs", "int"), ("model.name", "choice")]
    assert space.fixed == {"data.class_weights": "balanced"}
    assert space.params[2].log and space.params[1].step == 5
    assert space.overrides({"optim.lr": 0.01})["data"] == {"class_weights": "balanced"}
    assert load_space("default").params  # the built-in space parses and searches something


@pytest.mark.parametrize("space, expected", [
    ({"optim.learning_rate": [0.1]}, "unknown field 'optim.learning_rate'; valid keys of optim: loss"),
    ({"optimizer.lr": [0.1]}, "'optimizer.lr' is not a config field"),
    ({"lr": [0.1]}, "'lr' is not a config field"),
    ({"train.seed": [0, 1]}, "train.seed cannot be searched: tuning the seed fits the validation noise"),
    ({"data.spec": ["breastmnist", "pneumoniamnist"]}, "data.spec cannot be searched"),
    ({"optim.lr": {"log": [1e-2, 1e-4]}}, "optim.lr: low must be below high; got [0.01, 0.0001]"),
    ({"optim.lr": {"log": [0, 1e-2]}}, "optim.lr: a log range needs low > 0"),
    ({"optim.lr": {"between": [0, 1]}}, "optim.lr must be one of {log: [low, high]}"),
    ({"optim.lr": {"uniform": [0.1]}}, "optim.lr: uniform needs [low, high], two finite numbers"),
    ({"train.epochs": {"int": [1.5, 4]}}, "train.epochs: int needs integer ends"),
    ({"model.kwargs": [{"width": 16}]}, "search model.kwargs one keyword at a time"),
    ({"model.name": []}, "model.name lists no values"),
    ({"data.class_weights": "balanced"}, "searches nothing"),
    ({}, "must be a non-empty mapping"),
])
def test_bad_space_gives_one_clear_line(space, expected):
    with pytest.raises(ValueError) as err:
        parse_space(space)
    assert expected in single_line(err.value)


@pytest.mark.parametrize("space, expected", [
    ({"optim.lr": {"uniform": [-0.1, 0.1]}}, "optim.lr = -0.1 is not valid: optim.lr must be a number > 0.0"),
    ({"model.name": ["cnn_small", "no_such_net"]}, "model.name = 'no_such_net' is not valid: unknown model"),
    ({"data.class_weights": ["none", "inverse"]}, "data.class_weights = 'inverse' is not valid"),
])
def test_space_values_are_checked_against_the_config_before_any_trial(space, expected):
    base = quick_config(data={"spec": "breastmnist"}).to_dict()
    with pytest.raises(ValueError) as err:
        check_space(parse_space(space, source="s.yaml"), base)
    assert expected in single_line(err.value) and single_line(err.value).startswith("space file s.yaml: ")


def test_bad_space_file_on_the_command_line_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim.lr: {log: [1.0e-2, 1.0e-4]}\n")
    out = tmp_path / "tune"
    assert main(["tune", "breastmnist", "--space", str(bad), "--trials", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("medlens: error: space file") and "low must be below high" in err and "\n" not in err
    assert not out.exists()
    (tmp_path / "broken.yaml").write_text("optim.lr: [0.1\n")
    assert main(["tune", "breastmnist", "--space", str(tmp_path / "broken.yaml"), "--trials", "2",
                 "--out", str(out)]) == 1
    assert "is not valid YAML" in capsys.readouterr().err and not out.exists()


@pytest.mark.integration
def test_model_keyword_of_the_space_is_checked_on_the_model(medmnist_root):
    from medlens.engine.config import resolve_data

    base = _base(medmnist_root)
    with pytest.raises(ValueError) as err:
        check_space(parse_space({"model.kwargs.width": [16, 32]}), base.to_dict(), source=resolve_data(base.data))
    assert "model.kwargs.width = 16 is not valid: model 'cnn_small' has no option width" in single_line(err.value)


# ----------------------------------------------------------------------------- a search


@pytest.fixture(scope="module")
def searched(medmnist_root, tmp_path_factory):
    """Three trials of 2 epochs with MLflow in the folder holding the tune."""
    runs = tmp_path_factory.mktemp("tune-runs")
    out = runs / "breast-tune"
    base = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root), "batch_size": 64},
                        train={"epochs": 3, "tracking_uri": None})
    summary = tune(base, out, space=parse_space(SPACE), trials=3, say=lambda m: None)
    return out, base, summary


@pytest.mark.integration
@pytest.mark.slow
def test_tune_writes_trials_summary_and_best_config(searched):
    out, _, summary = searched
    folder = RunFolder(out)
    finished = [r for r in summary["trials"] if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3 and summary["counts"]["complete"] + summary["counts"]["pruned"] == 3
    assert json.loads(folder.tune_summary.read_text())["best"]["number"] == summary["best"]["number"]
    for row in finished:
        run = folder.trial(row["number"])
        assert run.is_finished and Path(row["run_dir"]) == run.path.resolve()
        assert row["duration_s"] > 0 and set(row["params"]) == set(SPACE)
        history = [json.loads(json.dumps(v)) for v in row["curve"].values()]
        assert history == sorted(history), "the pruner is fed the best value so far"
    complete = [r for r in finished if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: r["value"])
    assert summary["best"]["number"] == best["number"]
    # The objective is the best validation AUC of the trial's epochs, never a test score.
    history = (folder.trial(best["number"]).history).read_text().splitlines()
    aucs = [float(line.split(",")[6]) for line in history[1:]]
    assert abs(summary["best"]["value"] - max(aucs)) < 1e-4
    config = yaml.safe_load(folder.best_config.read_text())
    assert config["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])
    assert config["model"]["kwargs"] == {"dropout": best["params"]["model.kwargs.dropout"]}
    assert config["train"]["max_seconds"] is None and config["train"]["tracking_uri"] is None


@pytest.mark.integration
@pytest.mark.slow
def test_best_yaml_is_what_medlens_train_reuses(searched, tmp_path, capsys):
    out, _, summary = searched
    run = tmp_path / "again"
    assert main(["train", "--config", str(RunFolder(out).best_config), "--out", str(run), "--tracking-uri", "none",
                 "--no-report", "--no-progress", "--epochs", "1"]) == 0
    trained = yaml.safe_load(RunFolder(run).config.read_text())
    assert trained["optim"]["lr"] == pytest.approx(summary["best"]["params"]["optim.lr"])
    assert trained["model"] == {**summary["best"]["config"]["model"]}


@pytest.mark.integration
@pytest.mark.slow
def test_each_trial_is_an_mlflow_run_nested_under_the_tune(searched):
    out, _, summary = searched
    with sqlite3.connect(RunFolder(out).tracking_db) as db:
        runs = dict(db.execute("select name, run_uuid from runs").fetchall())
        parents = dict(db.execute("select r.name, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
                                  "where t.key = 'mlflow.parentRunId'").fetchall())
    trials = {f"{r['number']:03d}" for r in summary["trials"]}
    assert trials <= set(parents) and set(parents.values()) == {runs[out.name]}


@pytest.mark.integration
@pytest.mark.slow
def test_report_of_a_tune_has_the_search_section(searched):
    from medlens.report.html import build_report

    out, _, summary = searched
    page = build_report(out).read_text()
    assert "Hyperparameter search (Optuna)" in page and f"Best trial: {summary['best']['number']}" in page
    assert "Optimization History Plot" in page and "Parallel Coordinate Plot" in page
    assert "<script src=" not in page  # Plotly stays inlined: the page works offline


@pytest.mark.integration
@pytest.mark.slow
def test_report_of_a_tune_renders_offline_in_chromium(searched, tmp_path):
    from medlens.report.html import build_report

    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("/usr/bin/chromium is missing under CI=true: `make test` installs it", pytrace=False)
        pytest.skip("/usr/bin/chromium not installed (Debian package chromium; `make test` installs it as root)")
    from playwright.sync_api import sync_playwright

    report = build_report(searched[0], out=tmp_path / "report.html")
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox",
                                                                          "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            def block(route):
                requests.append(route.request.url)
                route.continue_() if route.request.url.startswith("file://") else route.abort()

            page.route("**/*", block)
            page.goto(report.as_uri())
            page.wait_for_selector(".plot .main-svg", timeout=30_000)
            plots, drawn = page.locator(".plot").count(), page.locator(".plot:has(.main-svg)").count()
        finally:
            browser.close()
    assert errors == [] and [u for u in requests if not u.startswith("file://")] == []
    assert plots >= 3 and drawn == plots  # history, intermediate values, parallel coordinates (+ importances)


@pytest.mark.integration
@pytest.mark.slow
def test_rerun_continues_the_study_and_refits(searched):
    out, base, first = searched
    folder = RunFolder(out)
    kept = {p: p.stat().st_mtime_ns for p in folder.trials_dir.rglob("*") if p.is_file()}
    again = tune(base, out, space=parse_space(SPACE), trials=3, say=print)
    assert [r["number"] for r in again["trials"]] == [r["number"] for r in first["trials"]], "nothing retrained"
    more = tune(base, out, space=parse_space(SPACE), trials=4, refit=True, say=print)
    assert len(more["trials"]) == 4 and {p: p.stat().st_mtime_ns for p in kept} == kept
    refit = more["refit"]
    assert folder.refit.is_finished and refit["test"]["n"] == 156
    assert 0 <= refit["test"]["auc"] <= 1
    metrics = folder.refit.read_metrics()
    assert metrics["test"] == refit["test"] and metrics["epochs_run"] == refit["epochs"]
    splits = json.loads(folder.refit.splits.read_text())
    assert len(splits["splits"]["train"]) == 546 + 78 and splits["method"] == "official+train+val"
    assert not set(splits["splits"]["test"]) & set(splits["splits"]["train"])
    best = next(r for r in more["trials"] if r["number"] == more["best"]["number"])
    assert refit["epochs"] == best["best_epoch"] + 1 and refit["trial"] == best["number"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_study_of_other_data_or_objective_is_refused_and_kept(searched):
    out, base, _ = searched
    before = RunFolder(out).tune_summary.read_text()
    other_monitor = quick_config(data={"spec": "breastmnist", "root": base.data.root, "batch_size": 64},
                                 train={"epochs": 3, "tracking_uri": None, "monitor": "val_loss"})
    with pytest.raises(ValueError) as err:
        tune(other_monitor, out, space=parse_space(SPACE), trials=5)
    assert "was made for another objective ('val_auc', not 'val_loss')" in single_line(err.value)
    other_data = quick_config(data={"spec": "retinamnist", "root": base.data.root, "batch_size": 64},
                              train={"epochs": 3, "tracking_uri": None})
    with pytest.raises(ValueError) as err:
        tune(other_data, out, space=parse_space(SPACE), trials=5)
    assert "was made for other data (data.spec 'breastmnist', not 'retinamnist')" in single_line(err.value)
    with pytest.raises(ValueError) as err:
        tune(base, out, space=parse_space({"optim.lr": {"log": [1e-4, 1e-3]}}), trials=5)
    assert "another search space" in single_line(err.value)
    assert RunFolder(out).tune_summary.read_text() == before


@pytest.mark.integration
def test_unreachable_storage_is_one_line_and_creates_nothing(medmnist_root, tmp_path):
    out = tmp_path / "tune"
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url, expected in ((f"postgresql://medlens@127.0.0.1:{port}/medlens", "cannot open the study storage"),
                          ("nosuchdb://x/y", "cannot open the study storage nosuchdb://x/y")):
        with pytest.raises(ValueError) as err:
            tune(_base(medmnist_root), out, space=parse_space(SPACE), trials=2, storage=url)
        assert expected in single_line(err.value)
        assert not out.exists()


@pytest.mark.integration
@pytest.mark.slow
def test_budget_is_kept(medmnist_root, tmp_path):
    budget = 30.0
    start = time.monotonic()
    summary = tune(_base(medmnist_root, epochs=200), tmp_path / "tune", space=parse_space(SPACE), budget_s=budget,
                   trials=2, say=print)
    wall = time.monotonic() - start
    assert wall <= budget * 1.10, f"{wall:.1f} s for a budget of {budget:.0f} s"
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] >= 1
    assert all(r["epochs_run"] < 200 for r in summary["trials"] if r["epochs_run"] is not None)


# ----------------------------------------------------------------------------- kill -9


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_loses_no_finished_trial_and_counts_none_twice(medmnist_root, tmp_path):
    space = _write_space(tmp_path / "space.yaml")
    out = tmp_path / "tune"
    args = [sys.executable, "-m", "medlens", "tune", "breastmnist", "--root", str(medmnist_root), "--recipe",
            "default", "--model", "cnn_small", "--batch-size", "64", "--epochs", "3", "--space", str(space),
            "--trials", "3", "--pruner", "none", "--tracking-uri", "none", "--no-progress", "--no-report",
            "--out", str(out)]
    victim = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ})
    second = RunFolder(out).trial(1)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not second.history.is_file():
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert RunFolder(out).trial(0).is_finished, "trial 0 must have finished before the kill"
    assert not second.is_finished, "the kill must land inside trial 1"
    with sqlite3.connect(RunFolder(out).study_db) as db:
        states = dict(db.execute("select number, state from trials").fetchall())
    assert states == {0: "COMPLETE", 1: "RUNNING"}
    kept = {p: p.stat().st_mtime_ns for p in RunFolder(out).trial(0).path.rglob("*") if p.is_file()}

    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert again.returncode == 0, again.stderr[-2000:]
    assert "trial 1: its worker" in again.stderr and "marked failed, its values queued again" in again.stderr
    summary = json.loads(RunFolder(out).tune_summary.read_text())
    states = {r["number"]: r["state"] for r in summary["trials"]}
    assert states[0] == "COMPLETE" and states[1] == "FAIL"
    finished = [r for r in summary["trials"] if r["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3 and 1 not in [r["number"] for r in finished]
    retry = [r for r in summary["trials"] if r["retry_of"] == 1]
    assert len(retry) == 1 and retry[0]["params"] == summary["trials"][1]["params"]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "a finished trial was touched"


@pytest.mark.integration
def test_space_data_sizes_are_loaded_before_any_trial(medmnist_root, tmp_path):
    missing = tmp_path / "no-data"
    missing.mkdir()
    base = quick_config(data={"spec": "breastmnist", "root": str(medmnist_root)})
    loaded = []

    def sources(data):
        loaded.append(data.size)
        if data.size == 64:
            raise FileNotFoundError("breastmnist_64.npz is not in the data folder")

    with pytest.raises(ValueError) as err:
        check_space(parse_space({"data.size": [28, 64]}), base.to_dict(), sources=sources)
    assert loaded == [28, 64]
    assert "data.size = 64 is not valid: breastmnist_64.npz is not in the data folder" in single_line(err.value)


@pytest.mark.integration
def test_model_keywords_must_suit_every_model_the_space_draws(medmnist_root):
    from medlens.engine.config import resolve_data

    base = _base(medmnist_root)
    space = parse_space({"model.name": ["resnet_compact", "cnn_small"], "model.kwargs.width": [16, 24]})
    with pytest.raises(ValueError) as err:
        check_space(space, base.to_dict(), source=resolve_data(base.data))
    assert ("model.kwargs.width = 16 (with model.name 'cnn_small') is not valid: model 'cnn_small' has no option "
            "width") in single_line(err.value)
    check_space(parse_space({"model.name": ["resnet_compact"], "model.kwargs.width": [16, 24]}),
                base.to_dict(), source=resolve_data(base.data))
