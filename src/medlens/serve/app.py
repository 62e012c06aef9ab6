"""The HTTP service: a FastAPI app around one :class:`~medlens.serve.predictor.Predictor`.

Endpoints:

- ``POST /v1/predict``: multipart upload, field ``files`` (one or more images); ``?explain=true``
  adds a Grad-CAM overlay (base64 PNG) per image.
- ``GET /v1/model``: the model card summary (classes, task, input size, training data, metrics).
- ``GET /healthz``: the process answers. ``GET /readyz``: the model is loaded and a warm-up
  request (decode, prediction and Grad-CAM of a blank image) has run (503 before that).
- ``GET /``: a self-contained upload page (no external assets). ``GET /docs``: OpenAPI UI.

Every limit (body size, files per request, pixels per image, formats) is checked before the
expensive step it protects, and every violation answers 4xx with ``{"error": "..."}`` naming the
value and the limit. Uploads stay in memory: the body is counted while it streams in and parsed
by python-multipart without temporary files. Failures that are not the input's fault answer a
logged 500.

Model calls run on one dedicated thread (the event loop stays free for ``/healthz`` and for
reading other uploads); requests that arrive while the model is busy are stacked into one batch,
so concurrent requests share model calls without adding latency to a lone request.

Example:
    >>> from medlens.serve.predictor import Predictor          # doctest: +SKIP
    >>> app = create_app(Predictor.load("runs/breast"))         # doctest: +SKIP
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1")       # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hmac
import io
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException

from medlens.data.readers import DICOM_SUFFIXES, IMAGE_2D_SUFFIXES, file_suffix
from medlens.data.registry import Task
from medlens.explain.render import overlay_png
from medlens.inference import decide
from medlens.serve.page import PAGE_CSP, PAGE_HTML
from medlens.serve.predictor import InputError

logger = logging.getLogger("medlens.serve")

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 10 * MiB
DEFAULT_MAX_FILES = 16
DEFAULT_MAX_PIXELS = 50_000_000
UPLOAD_FIELD = "files"
# Images per model call when concurrent requests are stacked (bounds one call's memory and latency).
MAX_BATCH = 64

# File signatures ("magic numbers") per format: the content must agree with the name's suffix.
_PILLOW_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_SUFFIXES_2D = IMAGE_2D_SUFFIXES + DICOM_SUFFIXES + (".npy",)
_SUFFIXES_3D = (".nii", ".nii.gz", ".npy")


class ApiError(Exception):
    """A request the service refuses: answered as ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _looks_like(suffix: str, data: bytes) -> bool:
    """Whether ``data`` starts like a file of type ``suffix`` (cheap, before any decoder runs)."""
    if suffix in IMAGE_2D_SUFFIXES:
        # Pillow decodes by content, so a PNG named .jpg is still an image: any Pillow format passes.
        return data.startswith(_PILLOW_MAGIC)
    if suffix in DICOM_SUFFIXES:
        return data[128:132] == b"DICM"
    if suffix == ".nii":
        return data[344:348] == b"n+1\x00" or data[4:8] == b"n+2\x00"
    if suffix == ".nii.gz":
        return data.startswith(b"\x1f\x8b")
    if suffix == ".npy":
        return data.startswith(b"\x93NUMPY")
    return False


def _format_bytes(n: int) -> str:
    return f"{n / MiB:.1f} MiB ({n:,} bytes)" if n >= MiB else f"{n:,} bytes"


@dataclass
class _Upload:
    """One part of a multipart body, held in memory."""

    field_name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _FormCollector:
    """python-multipart callbacks that keep each part in memory and refuse bad parts at once.

    Only file parts in the field ``files`` are accepted; the ``max_files``-plus-first file
    stops the parse before its bytes are read.
    """

    def __init__(self, max_files: int):
        self.max_files = max_files
        self.uploads: list[_Upload] = []
        self._part = _Upload()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> dict[str, Callable]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
        }

    def _on_part_begin(self) -> None:
        self._part = _Upload()
        self._disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name is None:
            raise ApiError(400, "a multipart part has no field name (Content-Disposition name=...); "
                                f"send images as files in the field {UPLOAD_FIELD!r}")
        field_name = name.decode("utf-8", "replace")
        if field_name != UPLOAD_FIELD:
            raise ApiError(400, f"unexpected form field {field_name[:80]!r}; send images as files in the "
                                f"field {UPLOAD_FIELD!r}")
        if b"filename" not in options:
            raise ApiError(400, f"the field {UPLOAD_FIELD!r} must hold files (with a filename), not text")
        if len(self.uploads) >= self.max_files:
            raise ApiError(413, f"too many files: more than {self.max_files} in one request exceeds the limit "
                                f"of {self.max_files} files per request")
        self._part.field_name = field_name
        self._part.filename = options[b"filename"].decode("utf-8", "replace")
        self.uploads.append(self._part)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._part.data += data[start:end]


async def _read_uploads(request: Request, *, max_bytes: int, max_files: int) -> list[_Upload]:
    """The files of a multipart request, read in memory within the limits.

    Raises:
        ApiError: 415 not multipart; 413 body over ``max_bytes`` (declared or counted) or more
            than ``max_files`` files; 400 malformed multipart, other fields, or no file.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "(none)"
        raise ApiError(415, f"Content-Type {shown!r} is not accepted; upload images as multipart/form-data "
                            f"in the field {UPLOAD_FIELD!r}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "the multipart/form-data Content-Type lacks its boundary parameter")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        # Refuse before reading a byte of the body.
        raise ApiError(413, f"request body of {_format_bytes(int(declared))} exceeds the upload limit of "
                            f"{_format_bytes(max_bytes)}")
    collector = _FormCollector(max_files)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            # Count what really arrives: Content-Length may be absent (chunked) or wrong.
            if received > max_bytes:
                raise ApiError(413, f"request body exceeds the upload limit of {_format_bytes(max_bytes)} "
                                    f"({received:,} bytes received so far)")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise ApiError(400, f"malformed multipart/form-data body: {str(exc).splitlines()[0][:160]}") from None
    if not collector.uploads:
        raise ApiError(400, f"no file uploaded; send one or more images in the multipart field {UPLOAD_FIELD!r}")
    return collector.uploads


_STOP = object()  # put on the model thread's queue to end it


class _ModelThread:
    """Runs every model call on one thread; concurrent predictions are stacked into one batch.

    The predictor is used from this thread only, so its backends need not be thread-safe, and
    the two CPU cores of a small server are not split between competing model calls.
    """

    def __init__(self, predictor, *, max_batch: int = MAX_BATCH):
        self._predictor = predictor
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="medlens-model", daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued jobs, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(_STOP)
            thread.join(timeout)

    async def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities ``(B, K)`` and out-of-distribution scores ``(B,)`` (or None) for uint8 ``images``."""
        return await self._submit(("predict", images))

    async def call(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` on the model thread (for calls that are not batched, such as Grad-CAM)."""
        return await self._submit(("call", fn, args))

    async def _submit(self, job: tuple) -> Any:
        self._ensure_started()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((job, loop, future))
        return await future

    def _run(self) -> None:
        pending = None
        while True:
            item = pending if pending is not None else self._jobs.get()
            pending = None
            if item is _STOP:
                return
            (kind, *payload), _, _ = item
            if kind == "call":
                fn, args = payload
                # _settle calls compute before returning: the default arguments only make the binding explicit.
                self._settle([item], lambda fn=fn, args=args: [fn(*args)])
                continue
            # Stack every prediction already waiting with the same image shape (up to max_batch).
            batch = [item]
            count = len(payload[0])
            while count < self._max_batch:
                try:
                    nxt = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or nxt[0][0] != "predict" or nxt[0][1].shape[1:] != payload[0].shape[1:]:
                    pending = nxt  # handled on the next turn
                    break
                batch.append(nxt)
                count += len(nxt[0][1])
            self._settle(batch, lambda batch=batch: self._predict_batch([job[1] for job, _, _ in batch]))

    def _predict_batch(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        images = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        probabilities, ood = self._predictor.predict_with_ood(images)  # (sum B, K), (sum B,) or None
        cuts = np.cumsum([len(a) for a in arrays])[:-1]
        ood_parts = [None] * len(arrays) if ood is None else np.split(ood, cuts)
        return list(zip(np.split(probabilities, cuts), ood_parts, strict=True))

    @staticmethod
    def _settle(items: list, compute: Callable[[], list]) -> None:
        try:
            results = compute()
        except Exception as exc:  # handed to each waiting request, which answers 4xx or a logged 500
            for _, loop, future in items:
                loop.call_soon_threadsafe(_set_exception, future, exc)
            return
        for (_, loop, future), result in zip(items, results, strict=True):
            loop.call_soon_threadsafe(_set_result, future, result)


def _set_result(future: asyncio.Future, value: Any) -> None:
    if not future.done():  # the client may have gone away and the request been cancelled
        future.set_result(value)


def _set_exception(future: asyncio.Future, exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": message}``; unexpected ones are logged and answer 500."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.message, {"WWW-Authenticate": "X-API-Key"} if exc.status == 401 else None)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(422, f"unusable image: {exc}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return _error(422, f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("internal error answering %s %s", request.method, request.url.path,
                     exc_info=(type(exc), exc, exc.__traceback__))
        return _error(500, "internal server error (logged on the server); the request itself may be fine")


def _api_key_check(api_key: str | None) -> Callable:
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        if given is None:
            raise ApiError(401, "missing API key: send it in the X-API-Key header")
        # Constant-time comparison: the answer time does not reveal how much of the key matched.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            raise ApiError(401, "wrong API key in the X-API-Key header")

    return check


_PREDICT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": [UPLOAD_FIELD],
            "properties": {UPLOAD_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                                          "description": "one or more image files"}},
        }}},
    },
}


def _check_settings(*, max_upload_bytes: int, max_files: int, max_pixels: int, api_key: str | None) -> None:
    """Refuse limits and an API key that the service cannot run with (see :func:`create_app`).

    Raises:
        ValueError: a limit that is not an integer of at least 1, or an empty ``api_key``.
    """
    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_files", max_files), ("max_pixels", max_pixels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if api_key is not None and not api_key:
        raise ValueError("api_key must be a non-empty string, or None for no key")


@dataclass(frozen=True)
class _Limits:
    """What one request may hold; each is checked before the step it protects.

    Attributes:
        max_upload_bytes: largest request body (all files plus multipart framing).
        max_files: most files in one request.
        max_pixels: most pixels (voxels) one image may declare, checked before it is decoded.
        formats: the file suffixes accepted for the model's 2D or 3D input.
    """

    max_upload_bytes: int
    max_files: int
    max_pixels: int
    formats: tuple[str, ...]

    def as_dict(self) -> dict:
        """The limits as ``GET /v1/model`` shows them."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_files": self.max_files, "max_pixels": self.max_pixels,
                "formats": list(self.formats)}


class _Service:
    """What the routes share: the predictor and its card's facts, the limits, the model thread, readiness.

    Attributes:
        predictor: the :class:`~medlens.serve.predictor.Predictor` served.
        card: its model card.
        task: the card's :class:`~medlens.data.registry.Task`.
        class_names: the card's class names, in output order.
        limits: the request :class:`_Limits`.
        version: the weights' hash (``predictor.info["version"]``), fixed for the predictor's life.
        model_thread: the :class:`_ModelThread` every model call runs on.
        ready: whether the warm-up has finished (``/readyz``).
        not_ready_reason: why not, while ``ready`` is False.
    """

    def __init__(self, predictor, *, max_upload_bytes: int, max_files: int, max_pixels: int):
        card = predictor.card
        self.predictor = predictor
        self.card = card
        self.task = Task(card.task)
        self.class_names = list(card.class_names)
        self.limits = _Limits(max_upload_bytes, max_files, max_pixels,
                              formats=_SUFFIXES_3D if card.spatial_dims == 3 else _SUFFIXES_2D)
        self.version = predictor.info.get("version")
        self.model_thread = _ModelThread(predictor)
        self.ready = False
        self.not_ready_reason = "warming up: the first decode, prediction and Grad-CAM have not finished"

    def check_formats(self, uploads: list[_Upload]) -> None:
        """Refuse an upload before it is decoded: empty, a suffix this model does not take, or other content.

        Raises:
            ApiError: 400 an empty file; 415 a suffix not in ``limits.formats``, or first bytes
                that do not match the suffix's format.
        """
        suffixes = self.limits.formats
        for upload in uploads:
            name = upload.filename or ""
            suffix = file_suffix(name)
            if not upload.data:
                raise ApiError(400, f"{name!r} is empty (0 bytes)")
            if suffix not in suffixes:
                raise ApiError(415, f"{name!r}: file type {suffix or '(no suffix)'!r} is not accepted by this "
                                    f"{self.card.spatial_dims}D model; accepted: {', '.join(suffixes)}")
            if not _looks_like(suffix, upload.data):
                raise ApiError(415, f"{name!r} does not contain a {suffix} image (its first bytes do not match "
                                    f"the format); accepted: {', '.join(suffixes)}")

    def prepare_all(self, uploads: list[_Upload]) -> np.ndarray:
        """Decode and preprocess every upload (blocking: run it off the event loop).

        Returns:
            uint8 images ``(B, C, *spatial)``, one per upload, in order.

        Raises:
            ApiError: 422 an image the predictor cannot use (its message names the file).
        """
        images = []
        for upload in uploads:
            name = upload.filename or ""
            try:
                images.append(self.predictor.prepare(bytes(upload.data), name, max_pixels=self.limits.max_pixels))
            except InputError as exc:  # the input's fault: 422; anything else is a logged 500
                raise ApiError(422, str(exc)) from None  # the message names the file
        return np.stack(images)  # (B, C, *spatial)

    async def overlay(self, image: np.ndarray, class_index: int) -> str:
        """The explain part of a prediction: Grad-CAM of ``class_index`` for one image, on the model thread.

        Args:
            image: one prepared uint8 image ``(C, *spatial)``.
            class_index: the class whose evidence is shown (the predicted one).

        Returns:
            Base64 PNG of ``image`` with its heatmap blended on top.
        """
        return await self.model_thread.call(self._overlay_png, image, class_index)

    def _overlay_png(self, image: np.ndarray, class_index: int) -> str:
        heatmap = self.predictor.explain(image, class_index=class_index)
        return base64.b64encode(overlay_png(image, heatmap)).decode("ascii")

    def _warm_up_file(self) -> tuple[bytes, str]:
        """A blank file of the model's input size, so that the warm-up runs the decoder too."""
        blank = np.zeros((self.card.input_size,) * self.card.spatial_dims, dtype=np.uint8)
        buffer = io.BytesIO()
        if self.card.spatial_dims == 2:
            from PIL import Image

            Image.fromarray(blank).save(buffer, "PNG")
            return buffer.getvalue(), "warm-up.png"
        np.save(buffer, blank)
        return buffer.getvalue(), "warm-up.npy"

    async def warm_up(self, *, freeze_gc: bool) -> None:
        """Decode, predict and explain a blank image once, then report ready.

        A failure is logged and kept as the reason ``/readyz`` gives; the service stays up.

        Args:
            freeze_gc: afterwards, :func:`gc.freeze` every object then alive (see :func:`create_app`).
        """
        data, name = self._warm_up_file()
        try:
            image = await anyio.to_thread.run_sync(
                lambda: self.predictor.prepare(data, name, max_pixels=self.limits.max_pixels))
            await self.model_thread.predict(image[None])
            # Grad-CAM loads the torch model (for the ONNX backend) and its imports: seconds that
            # are paid here rather than by the first ?explain=true request (the page always asks).
            await self.overlay(image, 0)
        except Exception as exc:  # the service stays up (healthz) but never reports ready
            logger.error("warm-up failed", exc_info=(type(exc), exc, exc.__traceback__))
            self.not_ready_reason = f"warm-up failed: {type(exc).__name__}: {exc}"
            return
        if freeze_gc:
            # torch and the web stack leave ~400,000 long-lived objects; every full collection
            # would walk them all (~250 ms on a small CPU, stalling every request in flight).
            # Frozen, they are skipped; they are still freed by reference counting.
            gc.collect()
            gc.freeze()
        self.ready = True


def _lifespan(service: _Service, *, freeze_gc: bool) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager]:
    """The app's lifespan: the warm-up runs in the background from start-up; shutdown stops the model thread.

    Args:
        service: the shared state of the app's routes.
        freeze_gc: passed to :meth:`_Service.warm_up`.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warm_up_task = asyncio.create_task(service.warm_up(freeze_gc=freeze_gc))
        try:
            yield
        finally:
            warm_up_task.cancel()
            service.model_thread.stop()

    return lifespan


def _v1_router(api_key: str | None) -> APIRouter:
    """The ``/v1`` router: each of its routes first checks the ``X-API-Key`` header (when a key is set)."""
    return APIRouter(prefix="/v1", dependencies=[Depends(_api_key_check(api_key))])


def _add_predict_route(v1: APIRouter, service: _Service) -> None:
    """``POST /v1/predict``: read the body within the limits, check formats, decode, predict, explain if asked.

    Decoding runs on a worker thread and the model on the model thread, so the event loop stays
    free; the answer gives each image's prediction and the time each step took.
    """
    card, task, class_names, version = service.card, service.task, service.class_names, service.version
    limits, model_thread = service.limits, service.model_thread

    @v1.post("/predict", openapi_extra=_PREDICT_OPENAPI,
             summary="Classify one or more uploaded images (multipart field 'files')")
    async def predict(
        request: Request,
        explain: bool = Query(False, description="add a Grad-CAM overlay PNG (base64) per image"),
    ) -> dict:
        started = time.perf_counter()
        uploads = await _read_uploads(request, max_bytes=limits.max_upload_bytes, max_files=limits.max_files)
        service.check_formats(uploads)
        t0 = time.perf_counter()
        images = await anyio.to_thread.run_sync(service.prepare_all, uploads)
        t1 = time.perf_counter()
        probabilities, ood_scores = await model_thread.predict(images)  # (B, K), (B,) or None
        t2 = time.perf_counter()
        # The one decision rule (strictly above 0.5), not a second copy of it.
        positive = decide(probabilities, task) if task.is_multilabel else None  # (B, K) 0/1
        predictions = []
        for row, (upload, image, probs) in enumerate(zip(uploads, images, probabilities, strict=True)):
            top = int(np.argmax(probs))
            entry: dict[str, Any] = {
                "file": upload.filename,
                "predicted": class_names[top],
                "probability": float(probs[top]),
                "probabilities": {name: float(p) for name, p in zip(class_names, probs, strict=True)},
            }
            if ood_scores is not None:  # the out-of-distribution flag (issue 19)
                entry["ood_score"] = float(ood_scores[row])
                entry["ood"] = bool(ood_scores[row] > service.predictor.ood.threshold)
            if task.is_multilabel:
                entry["positive"] = [name for name, flag in zip(class_names, positive[row], strict=True) if flag]
            if explain:
                entry["overlay_png"] = await service.overlay(image, top)
            predictions.append(entry)
        done = time.perf_counter()
        timing = {"decode": (t1 - t0) * 1e3, "inference": (t2 - t1) * 1e3}
        if explain:
            timing["explain"] = (done - t2) * 1e3
        timing["total"] = (done - started) * 1e3
        return {"model": card.architecture, "version": version, "predictions": predictions,
                "timing_ms": {k: round(v, 3) for k, v in timing.items()}}


def _add_model_route(v1: APIRouter, service: _Service) -> None:
    """``GET /v1/model``: the model card summary, the backend and the request limits."""
    predictor = service.predictor

    @v1.get("/model", summary="The model card summary: classes, task, input size, training data, metrics")
    async def model_info() -> dict:
        return {**predictor.info, "backend": predictor.backend, "limits": service.limits.as_dict()}


def _add_health_routes(app: FastAPI, service: _Service) -> None:
    """``GET /healthz`` (the process answers) and ``GET /readyz`` (the warm-up has run; before that 503 and why)."""
    card, version, predictor = service.card, service.version, service.predictor

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and has answered a warm-up request (decode, predict, Grad-CAM)",
             responses={503: {"description": "not ready yet"}})
    async def readyz() -> JSONResponse:
        if not service.ready:
            return _error(503, f"not ready: {service.not_ready_reason}")
        return JSONResponse({"status": "ready", "model": card.architecture, "version": version,
                             "backend": predictor.backend})


def _add_page_route(app: FastAPI) -> None:
    """``GET /``: the self-contained upload page, under its own Content-Security-Policy; not in the OpenAPI schema."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML, headers={"Content-Security-Policy": PAGE_CSP,
                                                "X-Content-Type-Options": "nosniff",
                                                "Referrer-Policy": "no-referrer"})


def create_app(predictor, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_files: int = DEFAULT_MAX_FILES,
               max_pixels: int = DEFAULT_MAX_PIXELS, api_key: str | None = None, freeze_gc: bool = False) -> FastAPI:
    """Build the HTTP service for ``predictor``.

    Args:
        predictor: a loaded :class:`~medlens.serve.predictor.Predictor`.
        max_upload_bytes: largest request body accepted (all files plus multipart framing);
            default 10 MiB. Larger bodies answer 413.
        max_files: most files in one request (default 16); more answer 413.
        max_pixels: most pixels (voxels) one image may declare (default 50 million), checked
            before it is decoded; more answer 422.
        api_key: when given, every ``/v1/*`` request must carry it in the ``X-API-Key`` header
            (else 401). The page, ``/healthz`` and ``/readyz`` stay open.
        freeze_gc: after the warm-up, move every object then alive out of the garbage
            collector's reach (:func:`gc.freeze`), so that full collections stop pausing
            requests for hundreds of milliseconds. It changes the whole process: for a process
            that only serves (``medlens serve`` sets it); default False.

    Returns:
        The FastAPI app; serve it with uvicorn. Its lifespan warms the model up and stops the
        model thread.

    Raises:
        ValueError: a limit below 1, or an empty ``api_key``.
    """
    _check_settings(max_upload_bytes=max_upload_bytes, max_files=max_files, max_pixels=max_pixels, api_key=api_key)
    service = _Service(predictor, max_upload_bytes=max_upload_bytes, max_files=max_files, max_pixels=max_pixels)
    app = FastAPI(title="medlens", version=str(service.version or ""), lifespan=_lifespan(service, freeze_gc=freeze_gc),
                  description=f"{service.card.architecture} ({service.task.value}: {', '.join(service.class_names)}) "
                              f"served with {predictor.backend}.")
    _install_error_handlers(app)
    v1 = _v1_router(api_key)
    _add_predict_route(v1, service)
    _add_model_route(v1, service)
    app.include_router(v1)
    _add_health_routes(app, service)
    _add_page_route(app)
    return app
