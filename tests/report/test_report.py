"""The HTML report: contents, size, figures, groups, and a headless-Chromium check with the network blocked."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from medlens.cli import main
from medlens.engine.config import build_config
from medlens.engine.train import train
from medlens.report.html import _gallery_indices, build_report

CHROMIUM = Path("/usr/bin/chromium")


def _quick(spec: str, root=None, epochs: int = 2, **data):
    data = {"spec": spec, **({"root": str(root)} if root else {}), **data}
    return build_config({"data": data, "model": {"name": "cnn_small"},
                         "train": {"epochs": epochs, "tracking_uri": "none", "progress": False}})


@pytest.fixture(scope="module")
def breast_run(medmnist_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "breast"
    train(_quick("breastmnist", medmnist_root, class_weights="balanced"), run)
    return run


@pytest.fixture(scope="module")
def covid_run(shared_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "covid"
    train(_quick(f"folder:{shared_data / 'covid19'}", size=28), run)
    return run


def _figures_in(page: str) -> int:
    return page.count("class=plot data-figure=")


@pytest.mark.integration
def test_breast_report_holds_every_section(breast_run):
    path = build_report(breast_run)
    page = path.read_text()
    assert path == breast_run / "report.html"
    for text in ("Data and config", "Training curves", "Test metrics", "Confusion matrix", "ROC", "Reliability",
                 "Published MedMNIST v2 results", "ResNet-18 (28)", "Gallery", "malignant", "config.yaml",
                 "Imbalanced training data"):
        assert text in page, text
    # curves (loss, ACC, AUC, LR), confusion x2, ROC + PR + reliability, OOD scores of val and test
    assert _figures_in(page) == 4 + 2 + 3 + 1 and "Out-of-distribution scores" in page
    metrics = json.loads((breast_run / "eval" / "test" / "metrics.json").read_text())
    assert f"{metrics['acc']:.3f}" in page and f"{metrics['auc']:.3f}" in page
    items = json.loads(re.search(r"id=gallery-data>(.*?)</script>", page, re.S).group(1))
    assert len(items) == 156  # the whole test set fits under the default limit of 240
    assert all(i["img"].startswith("data:image/png;base64,") and i["cam"].startswith("data:image/png") for i in items)
    wrong = [i for i in items if not i["correct"]]
    assert items[:len(wrong)] == wrong, "errors come first"
    # Self-contained: no script, stylesheet or image is fetched from anywhere.
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?(https?:)?//", page)
    for name in ("curves.png", "confusion.png", "roc_pr_reliability.png"):
        assert (breast_run / "figures" / name).stat().st_size > 10_000, name


def test_gallery_takes_errors_first_then_a_stratified_sample():
    import numpy as np

    y_true = np.array([0] * 80 + [1] * 20)
    predicted = y_true.copy()
    predicted[[3, 50, 90]] = 1 - predicted[[3, 50, 90]]
    confidence = np.linspace(0.5, 1.0, 100)
    index = _gallery_indices(y_true, predicted, confidence, limit=23)
    assert index[:3].tolist() == [90, 50, 3]  # errors, most confident first
    rest = index[3:]
    assert len(rest) == 20 and len(set(rest)) == 20 and all(predicted[rest] == y_true[rest])
    # 78 and 19 correct images: 20 * 78/97 = 16.08 and 20 * 19/97 = 3.92 -> 16 and 4 (largest remainder)
    assert (y_true[rest] == 1).sum() == 4
    assert _gallery_indices(y_true, predicted, confidence, limit=2).tolist() == [90, 50]


@pytest.mark.integration
@pytest.mark.slow
def test_pneumonia_report_with_every_test_image_stays_small(medmnist_root, tmp_path):
    run = tmp_path / "pneumonia"
    train(_quick("pneumoniamnist", medmnist_root, epochs=1), run)
    path = build_report(run, gallery=624, figures=False)
    items = json.loads(re.search(r"id=gallery-data>(.*?)</script>", path.read_text(), re.S).group(1))
    assert len(items) == 624
    assert path.stat().st_size < 15e6, f"{path.stat().st_size / 1e6:.1f} MB"


@pytest.mark.integration
def test_cv_group_report_and_train_writes_a_report(medmnist_root, tmp_path, capsys):
    quick = ["--model", "cnn_small", "--epochs", "1", "--tracking-uri", "none", "--no-progress",
             "--root", str(medmnist_root)]
    assert main(["cv", "breastmnist", "--folds", "2", *quick, "--out", str(tmp_path / "cv")]) == 0
    page = (tmp_path / "cv" / "report.html").read_text()
    assert "fold0" in page and "fold1" in page and "mean ± std" in page and "Published MedMNIST v2" in page
    assert main(["train", "breastmnist", *quick, "--out", str(tmp_path / "one")]) == 0
    assert (tmp_path / "one" / "report.html").is_file()
    assert main(["train", "breastmnist", *quick, "--no-report", "--out", str(tmp_path / "two")]) == 0
    assert not (tmp_path / "two" / "report.html").exists()
    assert "report:" in capsys.readouterr().err


def _chromium_or_skip():
    if CHROMIUM.is_file() and shutil.which(str(CHROMIUM)):
        return str(CHROMIUM)
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail("/usr/bin/chromium is missing under CI=true: `make test` installs it with apt-get", pytrace=False)
    pytest.skip("/usr/bin/chromium not installed (Debian package chromium; `make test` installs it as root)")


def _open_offline(report: Path, shot: Path) -> dict:
    """Open the report with every network request blocked; return what the page did."""
    from playwright.sync_api import sync_playwright

    executable = _chromium_or_skip()
    seen, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def block(route):
                seen.append(route.request.url)
                if route.request.url.startswith("file://"):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", block)
            page.goto(report.as_uri())
            page.wait_for_selector(".plot .main-svg", timeout=30_000)
            result = {"plots": page.locator(".plot").count(), "rendered": page.locator(".plot .main-svg").count()}
            # Tick labels (class names) drawn outside their chart's SVG are clipped ("alignant").
            result["clipped_labels"] = page.locator(".plot").evaluate_all("""plots => plots.flatMap(plot => {
                const svg = plot.querySelector('.main-svg');
                if (!svg) return [];
                const box = svg.getBoundingClientRect();
                return [...plot.querySelectorAll('.xtick text, .ytick text')].filter(t => {
                    const r = t.getBoundingClientRect();
                    return r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.bottom > box.bottom + 0.5;
                }).map(t => t.textContent);
            })""")
            result["cards"] = page.locator("#gallery .card").count()
            page.select_option("#f-outcome", "wrong")
            result["wrong_cards"] = page.locator("#gallery .card").count()
            result["wrong_all_red"] = page.locator("#gallery .card.correct").count() == 0
            page.select_option("#f-outcome", "")
            first_class = page.locator("#f-class option").nth(1).get_attribute("value")
            page.select_option("#f-class", first_class)
            result["class_cards"] = page.locator("#gallery .card").count()
            card = page.locator("#gallery .card").first
            before = card.locator("img").get_attribute("src")
            card.click()
            result["overlay_changed"] = card.locator("img").get_attribute("src") != before
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    result["requests"] = [u for u in seen if not u.startswith(("file://", "data:"))]
    result["errors"] = errors
    return result


@pytest.mark.integration
@pytest.mark.parametrize("which", ["breast_run", "covid_run"])
def test_report_renders_offline_in_chromium(which, request, tmp_path):
    run = request.getfixturevalue(which)
    report = build_report(run, out=tmp_path / "report.html", figures=False)
    seen = _open_offline(report, tmp_path / "report.png")
    assert seen["errors"] == [] and seen["requests"] == []
    assert seen["clipped_labels"] == []
    assert seen["plots"] >= 9 and seen["rendered"] >= seen["plots"]  # every chart drew its SVG
    assert 0 < seen["wrong_cards"] < seen["cards"] and seen["wrong_all_red"]
    assert 0 < seen["class_cards"] < seen["cards"]
    assert seen["overlay_changed"]
    assert (tmp_path / "report.png").stat().st_size > 20_000
