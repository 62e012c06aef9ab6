"""The HTTP service on a real 1-epoch BreastMNIST model: endpoints, limits, API key, backends, fuzzing."""

from __future__ import annotations

import base64
import gc
import hashlib
import io
import logging
import re
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from medlens.cli import main
from medlens.serve.app import create_app
from medlens.serve.page import PAGE_CSP
from medlens.serve.predictor import InputError, Predictor

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def predictor(breast_run):
    return Predictor.load(breast_run, backend="torch")


def _wait_ready(client: TestClient, timeout: float = 20.0, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, "the service never became ready"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor)) as test_client:
        _wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="module")
def test_pngs(medmnist_root) -> list[bytes]:
    """The first eight BreastMNIST test images as PNG files."""
    images = np.load(medmnist_root / "breastmnist.npz")["test_images"][:8]
    return [_png(image) for image in images]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares ``width`` x ``height`` (no real pixel data)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _files(*items: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in items]


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    return body["error"]


# ----------------------------------------------------------------------------- endpoints


def test_health_ready_and_model_card(client, predictor):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["version"] == predictor.info["version"]
    info = client.get("/v1/model").json()
    assert info["class_names"] == ["malignant", "normal, benign"]
    assert info["task"] == "binary" and info["input_size"] == 28 and info["backend"] == "torch"
    assert info["dataset"]["spec"] == "breastmnist@28"
    assert set(info["test_metrics"]) >= {"acc", "auc"}
    assert info["limits"] == {"max_upload_bytes": 10 * 1024 * 1024, "max_files": 16, "max_pixels": 50_000_000,
                              "formats": [".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".npy"]}


def test_predictions_equal_predictor_on_the_same_files(client, predictor, test_pngs):
    names = [f"case{i}.png" for i in range(len(test_pngs))]
    response = client.post("/v1/predict", files=_files(*zip(names, test_pngs, strict=True)))
    assert response.status_code == 200, response.text
    body = response.json()
    prepared = [predictor.prepare(data, name) for name, data in zip(names, test_pngs, strict=True)]
    expected = predictor.predict(np.stack(prepared))
    assert body["model"] == "cnn_small" and body["version"] == predictor.info["version"]
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}
    timing = body["timing_ms"]
    assert timing["total"] >= timing["decode"] + timing["inference"] - 0.002  # each rounded to 1 µs
    assert [p["file"] for p in body["predictions"]] == names
    for prediction, probs in zip(body["predictions"], expected, strict=True):
        assert list(prediction["probabilities"]) == ["malignant", "normal, benign"]
        np.testing.assert_allclose(list(prediction["probabilities"].values()), probs, rtol=1e-6, atol=1e-7)
        assert prediction["predicted"] == ["malignant", "normal, benign"][int(np.argmax(probs))]
        assert prediction["probability"] == pytest.approx(float(probs.max()), abs=1e-7)
        assert "overlay_png" not in prediction


def test_explain_returns_a_decodable_overlay_png(client, predictor, test_pngs):
    response = client.post("/v1/predict", params={"explain": "true"}, files=_files(("a.png", test_pngs[0])))
    assert response.status_code == 200, response.text
    body = response.json()
    png = base64.b64decode(body["predictions"][0]["overlay_png"], validate=True)
    assert png.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(png)) as overlay:
        overlay.load()
        assert overlay.mode == "RGB" and overlay.size == (28, 28)
        # A blend with a colour map: not the grey input any more.
        rgb = np.asarray(overlay).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 0
    assert "explain" in body["timing_ms"]


def test_page_is_self_contained_with_stable_ids(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    for element_id in ("file", "drop", "api-key", "status", "error", "model", "result", "predicted", "probability",
                       "bars", "heatmap", "preview", "timing"):
        assert f'id="{element_id}"' in html, element_id
    # No external assets: nothing loads from another origin.
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "http://" not in html and "https://" not in html
    # The CSP admits exactly the inline script and style, by hash.
    csp = response.headers["content-security-policy"]
    assert csp == PAGE_CSP
    script = re.search(r"<script>(.*)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp


def test_openapi_docs_describe_the_upload(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    upload = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["files"]["items"]["format"] == "binary"
    assert {"/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])
    # The schema is public where no key is set: it names the model, never its classes (issue 20).
    assert "malignant" not in client.get("/openapi.json").text and "2 classes" in schema["info"]["description"]


def test_host_header_must_name_an_allowed_host(predictor):
    with TestClient(create_app(predictor, allowed_hosts=["127.0.0.1", "localhost"]),
                    base_url="http://127.0.0.1:8000") as local:
        assert local.get("/healthz").status_code == 200
        assert local.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200
        assert local.get("/healthz", headers={"host": "rebound.attacker.example"}).status_code == 400
    from medlens.commands.serve import allowed_hosts

    assert allowed_hosts("127.0.0.1", None) == ["127.0.0.1", "localhost", "::1"]
    assert allowed_hosts("0.0.0.0", None) is None and allowed_hosts("0.0.0.0", ["a.org"]) == ["a.org"]
    assert allowed_hosts("10.0.0.5", ["*.example.org"]) == ["10.0.0.5", "*.example.org"]


def test_non_finite_probabilities_are_never_an_answer(predictor, test_pngs, caplog):
    """NaN weights answered 200 with "probability": null (issue 20): now the warm-up refuses to be ready."""
    from medlens.serve.predictor import NonFiniteOutput

    def nan_predict(images):  # the model thread's call: probabilities and OOD scores in one pass
        out, ood = predictor.predict_with_ood(images)
        out[:] = np.nan
        if not np.isfinite(out).all():  # what Predictor.predict_with_ood does with such an output
            raise NonFiniteOutput("the torch model gave NaN or infinite probabilities for 1 of 1 image(s)")
        return out, ood

    with TestClient(create_app(_Wrapped(predictor, predict_with_ood=nan_predict))) as broken, \
            caplog.at_level(logging.ERROR, "medlens.serve"):
        deadline = time.monotonic() + 20
        while "warm-up failed" not in (reason := _error(broken.get("/readyz"), 503)):
            assert time.monotonic() < deadline, reason
            time.sleep(0.02)
        assert "NaN or infinite probabilities" in reason
        response = broken.post("/v1/predict", files=_files(("a.png", test_pngs[0])))
        assert "no usable answer" in _error(response, 500) and "null" not in response.text
    assert not any(r.exc_info for r in caplog.records)  # one line each, no traceback


def test_unknown_paths_and_methods_answer_json(client):
    assert _error(client.get("/v1/nothing"), 404)
    assert _error(client.get("/v1/predict"), 405)


# ----------------------------------------------------------------------------- limits


def test_declared_body_over_the_limit_is_refused_before_reading(predictor, test_pngs):
    with TestClient(create_app(predictor, max_upload_bytes=2_000)) as small:
        message = _error(small.post("/v1/predict", files=_files(*(("a.png", test_pngs[0]),) * 4)), 413)
        assert "exceeds the upload limit of 2,000 bytes" in message
        assert small.post("/v1/predict", files=_files(("a.png", test_pngs[0]))).status_code == 200


def test_streamed_body_is_counted_when_no_length_is_declared(predictor, test_pngs):
    boundary = "b0undary"
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a{i}.png\"\r\n"
                    f"Content-Type: image/png\r\n\r\n".encode() + test_pngs[0] + b"\r\n" for i in range(6))
    body += f"--{boundary}--\r\n".encode()

    def chunks():  # a generator: httpx sends it chunked, without Content-Length
        for start in range(0, len(body), 500):
            yield body[start:start + 500]

    with TestClient(create_app(predictor, max_upload_bytes=2_000)) as small:
        response = small.post("/v1/predict", content=chunks(),
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert "bytes received so far" in _error(response, 413)
        # The same body within the limit parses (so the 413 above is the limit, not the framing).
    with TestClient(create_app(predictor)) as large:
        response = large.post("/v1/predict", content=chunks(),
                              headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 200 and len(response.json()["predictions"]) == 6


def test_too_many_files(client, predictor, test_pngs):
    message = _error(client.post("/v1/predict", files=_files(*((f"{i}.png", test_pngs[0]) for i in range(17)))), 413)
    assert "more than 16" in message and "limit of 16 files" in message
    assert client.post("/v1/predict", files=_files(*((f"{i}.png", test_pngs[0]) for i in range(16)))).status_code == 200
    with TestClient(create_app(predictor, max_files=2)) as two:
        assert "limit of 2 files" in _error(two.post("/v1/predict", files=_files(*(("a.png", test_pngs[0]),) * 3)), 413)


def test_pixel_limit_stops_decompression_bombs(client, predictor):
    # A 60-byte PNG declaring 8000 x 8000 pixels: refused from its header.
    message = _error(client.post("/v1/predict", files=_files(("bomb.png", _png_declaring(8000, 8000)))), 422)
    assert "64,000,000 pixels" in message and "limit of 50,000,000" in message
    # Far larger declarations, which Pillow itself refuses to open, get the same message.
    message = _error(client.post("/v1/predict", files=_files(("bomb.png", _png_declaring(100_000, 100_000)))), 422)
    assert "10,000,000,000 pixels" in message and "limit of 50,000,000" in message
    # A real image over a lower limit.
    real = _png(np.random.default_rng(0).integers(0, 256, (300, 200), dtype=np.uint8))
    with TestClient(create_app(predictor, max_pixels=50_000)) as strict:
        message = _error(strict.post("/v1/predict", files=_files(("big.png", real))), 422)
        assert "60,000 pixels" in message and "limit of 50,000" in message
    assert client.post("/v1/predict", files=_files(("big.png", real))).status_code == 200


def test_formats_by_suffix_and_content(client, test_pngs, medmnist_root):
    message = _error(client.post("/v1/predict", files=_files(("notes.txt", b"hello"))), 415)
    assert "'.txt'" in message and ".png" in message
    assert "'(no suffix)'" in _error(client.post("/v1/predict", files=_files(("scan", test_pngs[0]))), 415)
    message = _error(client.post("/v1/predict", files=_files(("fake.png", b"GIF89a" + bytes(64)))), 415)
    assert "does not contain a .png image" in message
    # A 3D volume for this 2D model: refused by suffix.
    assert "2D model" in _error(client.post("/v1/predict", files=_files(("v.nii.gz", b"\x1f\x8b" + bytes(40)))), 415)
    # A NumPy array is accepted too (checked by its magic, loaded without pickle).
    array = io.BytesIO()
    np.save(array, np.load(medmnist_root / "breastmnist.npz")["test_images"][0])
    assert client.post("/v1/predict", files=_files(("scan.npy", array.getvalue()))).status_code == 200
    # Pillow formats are decoded by content, so a JPEG named .png is still an image.
    image = np.load(medmnist_root / "breastmnist.npz")["test_images"][0]
    assert client.post("/v1/predict", files=_files(("photo.png", _jpeg(image)))).status_code == 200
    assert client.post("/v1/predict", files=_files(("photo.JPG", _jpeg(image)))).status_code == 200
    # A signature followed by garbage: accepted by the sniffing, refused by the decoder.
    assert "broken.png" in _error(client.post("/v1/predict", files=_files(("broken.png", test_pngs[0][:60]))), 422)


def test_empty_uploads(client):
    assert "is empty (0 bytes)" in _error(client.post("/v1/predict", files=_files(("a.png", b""))), 400)
    empty_form = b"--xyz--\r\n"
    response = client.post("/v1/predict", content=empty_form,
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert "no file uploaded" in _error(response, 400)


def test_wrong_content_types_and_fields(client, test_pngs):
    assert "application/json" in _error(client.post("/v1/predict", json={"files": []}), 415)
    assert "x-www-form-urlencoded" in _error(client.post("/v1/predict", data={"files": "a"}), 415)
    assert "(none)" in _error(client.post("/v1/predict", content=test_pngs[0]), 415)
    response = client.post("/v1/predict", content=b"x", headers={"content-type": "multipart/form-data"})
    assert "boundary" in _error(response, 400)
    assert "'image'" in _error(client.post("/v1/predict", files=[("image", ("a.png", test_pngs[0], "image/png"))]), 400)
    message = _error(client.post("/v1/predict", files={"files": (None, b"text")}), 400)
    assert "must hold files" in message
    assert "explain" in _error(client.post("/v1/predict?explain=perhaps", files=_files(("a.png", test_pngs[0]))), 422)


def test_api_key(predictor, test_pngs):
    with TestClient(create_app(predictor, api_key="s3cret-key")) as keyed:
        assert "missing API key" in _error(keyed.post("/v1/predict", files=_files(("a.png", test_pngs[0]))), 401)
        assert "missing API key" in _error(keyed.get("/v1/model"), 401)
        wrong = keyed.get("/v1/model", headers={"X-API-Key": "s3cret-kez"})
        assert "wrong API key" in _error(wrong, 401)
        assert wrong.headers["www-authenticate"] == "X-API-Key"
        assert _error(keyed.get("/v1/model", headers={"X-API-Key": "s3cret-key-longer"}), 401)
        # The key is checked before the body is read: an oversized upload without a key is a 401.
        assert _error(keyed.post("/v1/predict", content=b"x" * 100, headers={
            "content-type": "multipart/form-data; boundary=a", "content-length": str(10**9)}), 401)
        ok = keyed.post("/v1/predict", files=_files(("a.png", test_pngs[0])), headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code == 200
        # The page and the liveness probe stay open (the page asks for the key) ...
        assert keyed.get("/").status_code == 200 and keyed.get("/healthz").status_code == 200
        # ... while readiness and the docs, which describe the model, need the key too (issue 20).
        for path in ("/readyz", "/docs", "/openapi.json", "/redoc", "/docs/oauth2-redirect"):
            assert "missing API key" in _error(keyed.get(path), 401), path
        key = {"X-API-Key": "s3cret-key"}
        assert keyed.get("/readyz", headers=key).status_code == 200
        assert keyed.get("/openapi.json", headers=key).status_code == 200
    with pytest.raises(ValueError, match="api_key"):
        create_app(predictor, api_key="")
    with pytest.raises(ValueError, match="max_files must be a positive integer, got 0"):
        create_app(predictor, max_files=0)


# ----------------------------------------------------------------------------- failures


class _Wrapped:
    """The real predictor with one method replaced."""

    def __init__(self, predictor, **methods):
        self._predictor = predictor
        self.__dict__.update(methods)

    def __getattr__(self, name):
        return getattr(self._predictor, name)


def test_failures_that_are_not_the_inputs_fault_are_logged_500s(predictor, test_pngs, caplog):
    def broken_prepare(data, name, *, max_pixels=None):
        raise RuntimeError("decoder exploded")

    app = create_app(_Wrapped(predictor, prepare=broken_prepare))
    with TestClient(app, raise_server_exceptions=False) as broken, caplog.at_level(logging.ERROR, "medlens.serve"):
        response = broken.post("/v1/predict", files=_files(("a.png", test_pngs[0])))
        assert "internal server error" in _error(response, 500)
        assert "decoder exploded" not in response.text  # no internals in the answer ...
        assert any("decoder exploded" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)  # ... but logged
        assert broken.get("/healthz").status_code == 200
        # The warm-up went through the same prepare: the service says why it is not ready.
        deadline = time.monotonic() + 20
        while "warm-up failed" not in (reason := _error(broken.get("/readyz"), 503)):
            assert time.monotonic() < deadline, reason
            time.sleep(0.02)
        assert "RuntimeError: decoder exploded" in reason


def test_input_errors_from_the_predictor_are_422(predictor, test_pngs):
    def refusing_prepare(data, name, *, max_pixels=None):
        raise InputError(f"{name}: not a chest X-ray")

    with TestClient(create_app(_Wrapped(predictor, prepare=refusing_prepare))) as refusing:
        response = refusing.post("/v1/predict", files=_files(("a.png", test_pngs[0])))
        assert _error(response, 422) == "a.png: not a chest X-ray"


def test_healthz_answers_while_the_model_is_busy_and_readyz_waits_for_warm_up(predictor, test_pngs):
    release = threading.Event()
    entered = threading.Event()

    def slow_predict(images):
        entered.set()
        assert release.wait(20), "the test never released the model"
        return predictor.predict_with_ood(images)

    # the model thread calls predict_with_ood (probabilities and out-of-distribution scores in one pass)
    with TestClient(create_app(_Wrapped(predictor, predict_with_ood=slow_predict))) as slow:
        assert entered.wait(20)  # the warm-up prediction is now blocked on the model thread
        assert slow.get("/healthz").status_code == 200
        assert "warming up" in _error(slow.get("/readyz"), 503)
        answers = {}

        def upload():
            answers["predict"] = slow.post("/v1/predict", files=_files(("a.png", test_pngs[0])))

        caller = threading.Thread(target=upload)
        caller.start()
        time.sleep(0.2)
        assert slow.get("/healthz").status_code == 200 and caller.is_alive()
        release.set()
        caller.join(20)
        assert answers["predict"].status_code == 200
        _wait_ready(slow)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(predictor, test_pngs):
    batch_sizes = []

    def counting_predict(images):
        batch_sizes.append(len(images))
        time.sleep(0.05)  # a slow model, so requests queue up behind it
        return predictor.predict_with_ood(images)

    expected = predictor.predict(np.stack([predictor.prepare(data, "x.png") for data in test_pngs]))
    with TestClient(create_app(_Wrapped(predictor, predict_with_ood=counting_predict))) as client:
        _wait_ready(client)
        results = [None] * len(test_pngs)

        def upload(i):
            results[i] = client.post("/v1/predict", files=_files((f"{i}.png", test_pngs[i]))).json()

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(test_pngs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    for i, body in enumerate(results):
        assert body["predictions"][0]["file"] == f"{i}.png"
        np.testing.assert_allclose(list(body["predictions"][0]["probabilities"].values()), expected[i], rtol=1e-6,
                                   atol=1e-7)
    assert sum(batch_sizes[1:]) == len(test_pngs)  # [0] is the warm-up
    assert max(batch_sizes[1:]) > 1, batch_sizes


def test_model_thread_ends_with_the_app(predictor, test_pngs):
    def model_threads() -> int:
        return sum(thread.name == "medlens-model" for thread in threading.enumerate())

    before = model_threads()
    with TestClient(create_app(predictor)) as client:
        _wait_ready(client)
        assert client.post("/v1/predict", files=_files(("a.png", test_pngs[0]))).status_code == 200
        assert model_threads() == before + 1
    assert model_threads() == before  # the lifespan's end stopped (and joined) it


def test_random_input_never_causes_a_500(client, test_pngs, medmnist_root):
    """About 200 hostile or broken requests: each answers 4xx (or 200 when valid), never 5xx."""
    rng = np.random.default_rng(20261122)
    image = np.load(medmnist_root / "breastmnist.npz")["test_images"][3]
    jpeg = _jpeg(image)
    names = ["a.png", "b.jpg", "c.jpeg", "d.bmp", "e.tiff", "f.dcm", "g.npy", "h.nii.gz", "i.txt", "noext",
             "../../etc/passwd.png", "ünïcødé.png", "x" * 300 + ".png", ".png", "a.png\x00.txt"]

    def random_bytes() -> bytes:
        return rng.bytes(int(rng.integers(0, 3000)))

    def request(kind: int):
        name = str(rng.choice(names))
        if kind == 0:  # random bytes under a random name
            return {"files": _files((name, random_bytes()))}
        if kind == 1:  # truncated PNG or JPEG
            data = test_pngs[int(rng.integers(len(test_pngs)))] if rng.random() < 0.5 else jpeg
            return {"files": _files((name if rng.random() < 0.3 else "t.png", data[: int(rng.integers(1, len(data)))]))}
        if kind == 2:  # huge or odd declared dimensions
            width, height = (int(v) for v in rng.integers(0, 2**31, 2))
            return {"files": _files(("huge.png", _png_declaring(width, height)))}
        if kind == 3:  # a wrong content type with a random body
            content_type = str(rng.choice(["application/json", "text/plain", "image/png", "multipart/mixed",
                                           "multipart/form-data; boundary=", "multipart/form-data; boundary=zz",
                                           "", "application/x-www-form-urlencoded"]))
            return {"content": random_bytes(), "headers": {"content-type": content_type}}
        if kind == 4:  # random multipart field names
            field = "".join(rng.choice(list("abcdefgh_-[]. files"), int(rng.integers(1, 12))))
            return {"files": [(field, (name, test_pngs[0], "image/png"))]}
        if kind == 5:  # bit flips in a valid PNG (the CRC or the zlib stream breaks)
            data = bytearray(test_pngs[int(rng.integers(len(test_pngs)))])
            for position in rng.integers(8, len(data), int(rng.integers(1, 6))):
                data[position] ^= 1 << int(rng.integers(8))
            return {"files": _files(("flipped.png", bytes(data)))}
        if kind == 6:  # a malformed multipart body
            body = b"--zz\r\n" + random_bytes() + (b"\r\n--zz--\r\n" if rng.random() < 0.5 else b"")
            return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=zz"}}
        if kind == 7:  # a mix of good and bad files
            return {"files": _files(("good.png", test_pngs[0]), (name, random_bytes()))}
        return {"files": _files(("good.png", test_pngs[int(rng.integers(len(test_pngs)))]))}  # valid

    statuses = []
    for i in range(200):
        kwargs = request(i % 9)
        explain = "true" if rng.random() < 0.2 else "false"
        response = client.post("/v1/predict", params={"explain": explain}, **kwargs)
        statuses.append(response.status_code)
        assert response.status_code < 500, (i, kwargs.get("headers"), response.text)
        if response.status_code != 200:
            assert 400 <= response.status_code < 500 and response.json()["error"], response.text
    assert statuses.count(200) >= 22  # the valid requests (every ninth), at least
    assert {400, 415, 422} <= set(statuses)  # each kind of refusal really exercised
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/predict", files=_files(("a.png", test_pngs[0]))).status_code == 200


@pytest.fixture()
def unfreeze_gc():
    """Give the test process its garbage collector back after a test that froze it."""
    yield
    gc.unfreeze()


def test_freeze_gc_after_warm_up(predictor, unfreeze_gc):
    gc.unfreeze()
    with TestClient(create_app(predictor)) as plain:
        _wait_ready(plain)
        assert gc.get_freeze_count() == 0  # the default leaves the process alone
    with TestClient(create_app(predictor, freeze_gc=True)) as frozen:
        _wait_ready(frozen)
        # Everything alive after the warm-up (torch, the app, the model) is out of the collector's walk.
        assert gc.get_freeze_count() > 10_000


# ----------------------------------------------------------------------------- backends and CLI


def test_onnx_backend_serves_the_same_predictions(breast_run, predictor, test_pngs):
    from medlens.serve.onnx_export import export_onnx

    export_onnx(breast_run)
    onnx = Predictor.load(breast_run, backend="onnx")
    names = [f"{i}.png" for i in range(len(test_pngs))]
    with TestClient(create_app(onnx)) as onnx_client:
        _wait_ready(onnx_client)
        assert onnx_client.get("/v1/model").json()["backend"] == "onnx"
        body = onnx_client.post("/v1/predict", params={"explain": "true"},
                                files=_files(*zip(names, test_pngs, strict=True))).json()
    served = np.array([list(p["probabilities"].values()) for p in body["predictions"]])
    images = np.stack([onnx.prepare(data, name) for name, data in zip(names, test_pngs, strict=True)])
    np.testing.assert_allclose(served, onnx.predict(images), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(served, predictor.predict(images), atol=1e-4)  # torch and ONNX agree
    assert all(base64.b64decode(p["overlay_png"]).startswith(PNG_MAGIC) for p in body["predictions"])


def test_serve_command_exports_onnx_when_missing_and_binds_loopback(breast_run, tmp_path, monkeypatch, capsys,
                                                                    unfreeze_gc):
    import uvicorn

    copy = tmp_path / "run"
    shutil.copytree(breast_run / "checkpoints", copy / "checkpoints")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    monkeypatch.setenv("MEDLENS_API_KEY", "from-env")
    assert main(["serve", str(copy), "--port", "8123", "--max-files", "3"]) == 0
    assert "exporting it now" in capsys.readouterr().err
    assert (copy / "export" / "model.onnx").is_file()
    app, kwargs = calls[0]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8123
    # uvicorn gets the connection limits and the header timeout (issue 20).
    assert kwargs["limit_concurrency"] == 102 and kwargs["timeout_keep_alive"] == 5
    assert kwargs["h11_max_incomplete_event_size"] == 16 * 1024 and kwargs["http"].header_timeout == 10.0
    with TestClient(app, base_url="http://localhost:8123") as served:
        _wait_ready(served, headers={"X-API-Key": "from-env"})
        # Bound to loopback: a Host header naming another site (DNS rebinding) is refused.
        assert served.get("/healthz", headers={"host": "attacker.example:8123"}).status_code == 400
        assert gc.get_freeze_count() > 0  # the command serves with a frozen collector
        assert served.get("/v1/model").status_code == 401  # the key came from $MEDLENS_API_KEY
        info = served.get("/v1/model", headers={"X-API-Key": "from-env"}).json()
        assert info["backend"] == "onnx" and info["limits"]["max_files"] == 3
    # Second start: the export is there and is not redone.
    assert main(["serve", str(copy), "--backend", "torch", "--api-key", "k"]) == 0
    assert "exporting" not in capsys.readouterr().err


def test_serve_start_hashes_the_weights_once(breast_run, tmp_path, monkeypatch, unfreeze_gc):
    """Export, the export's check at load and the model version all need the weights' SHA-256: one read."""
    import uvicorn

    from medlens import _io

    copy = tmp_path / "run"
    shutil.copytree(breast_run / "checkpoints", copy / "checkpoints")
    hashed = []
    real = _io._hash_contents
    monkeypatch.setattr(_io, "_SHA256_CACHE", {})
    monkeypatch.setattr(_io, "_hash_contents", lambda path: hashed.append(Path(path).resolve()) or real(path))
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(app))
    assert main(["serve", str(copy)]) == 0  # exports ONNX (it is missing), loads it, builds the app
    assert (copy / "export" / "model.onnx").is_file() and len(calls) == 1
    # Each file once: the weights (export, its check at load) and model.onnx (recorded, checked at load).
    assert hashed == [(copy / "checkpoints" / "best.safetensors").resolve(), (copy / "export" / "model.onnx").resolve()]
    onnx, torch_backend = Predictor.load(copy, backend="onnx"), Predictor.load(copy)
    # The version is the hash of what answers: the graph for ONNX, the weights for torch.
    assert onnx.version != torch_backend.version and len(hashed) == 2  # still cached


def test_serve_command_errors(breast_run, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert "is not a run folder with checkpoints/best.safetensors" in capsys.readouterr().err
    assert main(["serve", str(breast_run), "--api-key", ""]) == 1
    assert "--api-key must not be empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(tmp_path), "--port", "70000"])
    assert "expected a port number 0-65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", str(tmp_path), "--max-upload-mb", "inf"])
    assert "expected a positive number, got 'inf'" in capsys.readouterr().err
