"""The upload page in a real headless Chromium against the real server (uvicorn on 127.0.0.1).

Chromium is the Debian package at /usr/bin/chromium, driven by the ``playwright`` package. Without
it the tests skip, except under ``CI=true``, where a missing browser is a failure.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{CHROMIUM} is missing and CI=true: CI must install the chromium package", pytrace=False)
        pytest.skip(f"{CHROMIUM} not found (install the Debian package 'chromium')")
    return CHROMIUM


def _serve(app):
    """Run ``app`` with uvicorn in a thread on a free 127.0.0.1 port; returns (base URL, server, thread)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; uvicorn serves on this very socket
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


@pytest.fixture(scope="module")
def server(chromium, breast_run):
    from medlens.serve.app import create_app
    from medlens.serve.predictor import Predictor

    app = create_app(Predictor.load(breast_run, backend="torch"), api_key="browser-key")
    base, uvicorn_server, thread = _serve(app)
    deadline = time.monotonic() + 30
    # With a key, /readyz needs it too (only / and /healthz are open).
    while httpx.get(f"{base}/readyz", headers={"X-API-Key": "browser-key"}).status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.05)
    yield base
    uvicorn_server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context()
    page = context.new_page()
    problems = []  # console errors (a CSP violation shows here) and uncaught exceptions
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server)
    yield page, problems
    context.close()


@pytest.fixture(scope="module")
def test_png(medmnist_root, tmp_path_factory) -> Path:
    """A real BreastMNIST test image, written as a PNG."""
    image = np.load(medmnist_root / "breastmnist.npz")["test_images"][5]
    path = tmp_path_factory.mktemp("upload") / "breast_test_5.png"
    Image.fromarray(image).save(path)
    return path


def test_upload_shows_the_same_prediction_as_the_api(page, server, test_png):
    from playwright.sync_api import expect

    page, problems = page
    # This server wants a key: the page says so and opens the key field.
    expect(page.locator("#model")).to_contain_text("missing API key")
    expect(page.locator("#key-box")).to_have_attribute("open", "")
    page.fill("#api-key", "browser-key")
    page.dispatch_event("#api-key", "change")  # reloads the model line with the key
    expect(page.locator("#model")).to_contain_text("cnn_small")
    page.set_input_files("#file", str(test_png))
    page.wait_for_selector("body[data-state='done']", timeout=30_000)
    shown = page.text_content("#predicted")

    response = httpx.post(f"{server}/v1/predict", headers={"X-API-Key": "browser-key"},
                          files=[("files", (test_png.name, test_png.read_bytes(), "image/png"))])
    expected = response.json()["predictions"][0]
    assert shown == expected["predicted"]
    assert page.text_content("#probability") == f"{100 * expected['probability']:.1f} %"
    bars = page.locator("#bars .bar")
    assert bars.count() == 2
    assert [bars.nth(i).get_attribute("data-class") for i in range(2)] == ["malignant", "normal, benign"]
    assert page.get_attribute("#bars .bar.top", "data-class") == expected["predicted"]
    # The Grad-CAM overlay is a PNG the browser decoded; the page's own script ran under its CSP
    # (which also forbids eval: waits below use functions and locators, never strings).
    assert page.get_attribute("#heatmap", "src").startswith("data:image/png;base64,")
    expect(page.locator("#heatmap")).to_have_js_property("naturalWidth", 28)
    assert page.is_visible("#result") and not page.is_visible("#error")
    assert all("status of 401" in text for text in problems), problems  # only the keyless /v1/model


def test_errors_are_shown_on_the_page(page, tmp_path):
    from playwright.sync_api import expect

    page, problems = page
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file", str(notes))  # no API key entered yet: the server answers 401
    page.wait_for_selector("body[data-state='error']", timeout=30_000)
    assert "missing API key" in page.text_content("#error")
    assert page.get_attribute("#key-box", "open") is not None  # the key field is opened for the user
    page.fill("#api-key", "browser-key")
    page.set_input_files("#file", [])
    page.set_input_files("#file", str(notes))
    expect(page.locator("#error")).to_contain_text("'.txt' is not accepted")
    assert page.is_visible("#error") and not page.is_visible("#result")
    # Failed requests log console errors by design; nothing else may fail.
    assert all("status of 4" in text for text in problems), problems


def test_docs_render_with_the_network_off(browser, server):
    """``/docs`` loads Swagger UI from the server itself: with every other host unreachable (a
    hospital network, an air-gapped machine) the operations are still listed."""
    from playwright.sync_api import expect

    # This server has a key, which /docs and its assets need too (issue 20): a client that has it.
    context = browser.new_context(extra_http_headers={"X-API-Key": "browser-key"})
    outside = []

    def only_the_server(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:  # the network is off for every other host
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_the_server)
    page = context.new_page()
    problems = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{server}/docs")
    expect(page.locator(".swagger-ui .opblock-summary-path").first).to_be_visible(timeout=30_000)
    paths = page.locator(".swagger-ui .opblock-summary-path").all_text_contents()
    assert any("/v1/predict" in path for path in paths), paths
    assert not outside and not problems, (outside, problems)
    context.close()


@pytest.fixture(scope="module")
def test_pngs(medmnist_root, tmp_path_factory) -> list[Path]:
    """Three real BreastMNIST test images, written as PNGs."""
    images = np.load(medmnist_root / "breastmnist.npz")["test_images"][10:13]
    folder = tmp_path_factory.mktemp("uploads")
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"breast_test_{10 + i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_several_files_go_in_one_request_and_each_can_be_shown(page, server, test_pngs):
    from playwright.sync_api import expect

    page, problems = page
    page.fill("#api-key", "browser-key")
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model")).to_contain_text("cnn_small")
    page.set_input_files("#file", [str(p) for p in test_pngs])
    page.wait_for_selector("body[data-state='done']", timeout=30_000)
    response = httpx.post(f"{server}/v1/predict", headers={"X-API-Key": "browser-key"},
                          files=[("files", (p.name, p.read_bytes(), "image/png")) for p in test_pngs])
    expected = response.json()["predictions"]
    items = page.locator("#list .item")
    assert items.count() == 3
    assert [items.nth(i).get_attribute("data-file") for i in range(3)] == [p.name for p in test_pngs]
    for i in range(3):
        assert items.nth(i).text_content().startswith(f"{test_pngs[i].name}: {expected[i]['predicted']} (")
    items.nth(2).click()
    expect(page.locator("#list .item.selected")).to_have_attribute("data-file", test_pngs[2].name)
    assert page.text_content("#probability") == f"{100 * expected[2]['probability']:.1f} %"
    assert all("status of 401" in text for text in problems), problems


def test_the_page_warns_when_an_image_is_flagged_out_of_distribution(page, server, medmnist_root, tmp_path):
    from playwright.sync_api import expect

    page, problems = page
    page.fill("#api-key", "browser-key")
    page.dispatch_event("#api-key", "change")
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(noise)
    # an own test image the API does not flag (the threshold flags 5% of val, so most are not)
    headers = {"X-API-Key": "browser-key"}
    for index in range(20):
        own = tmp_path / f"own_{index}.png"
        Image.fromarray(np.load(medmnist_root / "breastmnist.npz")["test_images"][index]).save(own)
        answer = httpx.post(f"{server}/v1/predict", headers=headers,
                            files=[("files", (own.name, own.read_bytes(), "image/png"))]).json()["predictions"][0]
        if answer["ood"] is False:
            break
    assert answer["ood"] is False
    for path, flagged in ((noise, True), (own, False), (noise, True)):
        page.set_input_files("#file", str(path))
        page.wait_for_selector("body[data-state='done']", timeout=30_000)
        (expect(page.locator("#ood-warning")).to_be_visible() if flagged
         else expect(page.locator("#ood-warning")).to_be_hidden())
        page.evaluate("() => document.body.dataset.state = 'idle'")  # wait for the next answer, not this one
    expect(page.locator("#ood-warning")).to_contain_text("unlike the images the model was trained on")
    assert all("status of 401" in text for text in problems), problems
