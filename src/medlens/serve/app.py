"""The HTTP service: a FastAPI app around one :class:`~medlens.serve.predictor.Predictor`.

Endpoints:

- ``POST /v1/predict``: multipart upload, field ``files`` (one or more images); ``?explain=true``
  adds a Grad-CAM overlay (base64 PNG) per image.
- ``GET /v1/model``: the model card summary (classes, task, input size, training data, metrics).
- ``GET /healthz``: the process answers. ``GET /readyz``: the model is loaded and a warm-up
  request (decode, prediction and Grad-CAM of a blank image) has run (503 before that).
- ``GET /``: a self-contained upload page (no external assets). ``GET /docs``: OpenAPI UI (Swagger UI
  served from local files, so it works offline).

Every limit (body size, files per request, pixels per image, formats) is checked before the
expensive step it protects, and every violation answers 4xx with ``{"error": "..."}`` naming the
value and the limit. Uploads stay in memory: the body is counted while it streams in and parsed
by python-multipart without temporary files. Failures that are not the input's fault answer a
logged 500.

Abuse: a client that goes away mid-upload is one info line (no traceback); an upload must arrive
within ``upload_timeout`` seconds (else 408); decodes run under a memory budget
(:class:`_DecodeBudget`, each image weighed by the bytes its header declares); the ``Host``
header must name this server (``allowed_hosts``, against DNS rebinding); with an API key every
path but ``/`` and ``/healthz`` needs it (the docs and ``/readyz`` too). :func:`server_settings`
gives uvicorn its connection limits and header timeout.

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
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect

from medlens.data.readers import DICOM_SUFFIXES, IMAGE_2D_SUFFIXES, file_suffix
from medlens.data.registry import Task
from medlens.explain.render import overlay_png
from medlens.inference import decide
from medlens.serve.page import PAGE_CSP, PAGE_HTML
from medlens.serve.predictor import InputError, NonFiniteOutput

logger = logging.getLogger("medlens.serve")

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 10 * MiB
DEFAULT_MAX_FILES = 16
DEFAULT_MAX_PIXELS = 50_000_000
# A whole upload must arrive within this: 10 MiB (the default body limit) at 2 Mbit/s takes 42 s.
# Without it a client sending a byte a minute holds a connection (and its buffer) for ever.
DEFAULT_UPLOAD_TIMEOUT = 60.0
# Peak memory of one decode per byte its header declares, measured: one 16-bit 5,000 x 5,000 PNG
# (50 MB of samples) raised the server's peak RSS by ~585 MB, 11.7x (Pillow's 32-bit image, the
# float32 copy, the percentile's partition copy, the scaling temporaries); the probe saw
# 0.45 GB for a 50 M-pixel one. Used to weigh each decode against the budget.
DECODE_PEAK_PER_BYTE = 12
# What all decodes in flight may take together, at most: a quarter of the memory available at
# start-up, and no more than 768 MiB: the served process itself takes ~0.57 GB (benchmarks/README),
# so under a storm of bombs it stays below the 1.5 GB that issue 20 sets.
MAX_DECODE_BUDGET = 768 * MiB
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


async def _read_uploads(request: Request, *, max_bytes: int, max_files: int,
                        timeout: float = DEFAULT_UPLOAD_TIMEOUT) -> list[_Upload]:
    """The files of a multipart request, read in memory within the limits.

    Raises:
        ApiError: 415 not multipart; 413 body over ``max_bytes`` (declared or counted) or more
            than ``max_files`` files; 400 malformed multipart, other fields, or no file; 408
            the body took longer than ``timeout`` seconds to arrive.
        ClientDisconnect: the client went away before the body ended (answered by one log line).
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
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                received += len(chunk)
                # Count what really arrives: Content-Length may be absent (chunked) or wrong.
                if received > max_bytes:
                    raise ApiError(413, f"request body exceeds the upload limit of {_format_bytes(max_bytes)} "
                                        f"({received:,} bytes received so far)")
                parser.write(chunk)
        parser.finalize()
    except TimeoutError:
        raise ApiError(408, f"the upload did not arrive within {timeout:g} s ({received:,} bytes received)") from None
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


# Refusals answered before the whole body is read: 408 (it came too slowly), 413 (too large).
_BODY_LEFT_UNREAD = frozenset({408, 413})


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": message}``; unexpected ones are logged and answer 500."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "X-API-Key"} if exc.status == 401 else {}
        if exc.status in _BODY_LEFT_UNREAD:
            # The rest of the body is still on its way (or never comes): the connection cannot carry
            # another request, and without "close" uvicorn would keep waiting for that body.
            headers["Connection"] = "close"
        return _error(exc.status, exc.message, headers or None)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return _error(422, f"unusable image: {exc}")

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # Not the server's fault and nothing to debug: one line, no traceback (an attacker's storm of
        # aborted uploads must not fill the log). The answer is never read; 499 as nginx logs it.
        client = request.client.host if request.client else "?"
        logger.info("client %s went away during %s %s", client, request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(NonFiniteOutput)
    async def _non_finite(request: Request, exc: NonFiniteOutput) -> JSONResponse:
        logger.error("%s answering %s %s", exc, request.method, request.url.path)
        return _error(500, f"the model gave no usable answer ({exc}); the request itself may be fine")

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


def _api_key_problem(given: str | None, expected: bytes) -> str | None:
    """Why ``given`` (the X-API-Key header) does not open the service, or None when it does."""
    if given is None:
        return "missing API key: send it in the X-API-Key header"
    # Constant-time comparison: the answer time does not reveal how much of the key matched.
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
        return "wrong API key in the X-API-Key header"
    return None


class _KeyGate:
    """ASGI middleware: with an API key, every path but :attr:`OPEN` answers 401 without it.

    A gate in front of the whole app rather than a dependency of the ``/v1`` routes, so that
    ``/docs``, ``/openapi.json`` (which describe the model) and ``/readyz`` are covered too,
    however they are served. The key is checked before a byte of the body is read.
    """

    OPEN = frozenset({"/", "/healthz"})  # the page (it asks for the key) and the liveness probe

    def __init__(self, app, *, api_key: str):
        self.app = app
        self._expected = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.OPEN:
            given = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"x-api-key"), None)
            problem = _api_key_problem(given, self._expected)
            if problem is not None:
                await _error(401, problem, {"WWW-Authenticate": "X-API-Key"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


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


def _check_settings(*, max_upload_bytes: int, max_files: int, max_pixels: int, api_key: str | None,
                    upload_timeout: float) -> None:
    """Refuse limits and an API key that the service cannot run with (see :func:`create_app`).

    Raises:
        ValueError: a limit that is not an integer of at least 1, or an empty ``api_key``.
    """
    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_files", max_files), ("max_pixels", max_pixels)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if api_key is not None and not api_key:
        raise ValueError("api_key must be a non-empty string, or None for no key")
    if not (isinstance(upload_timeout, (int, float)) and upload_timeout > 0):
        raise ValueError(f"upload_timeout must be a positive number of seconds, got {upload_timeout!r}")


def available_memory() -> int:
    """Bytes of memory available to new allocations now (Linux ``MemAvailable``; else physical memory)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return MAX_DECODE_BUDGET * 4


def default_decode_budget() -> int:
    """What decodes in flight may take together: a quarter of the available memory, at most 768 MiB."""
    return max(64 * MiB, min(MAX_DECODE_BUDGET, available_memory() // 4))


class _DecodeBudget:
    """A memory budget for decodes in flight: each request holds the bytes its images will take.

    A counting semaphore would admit N decodes whatever their size (N bombs at once); weighing
    each by the peak its headers predict lets many small images through together while large
    ones wait their turn. A request larger than the whole budget runs alone. Hand-written
    because neither asyncio nor anyio has a weighted semaphore.
    """

    def __init__(self, total: int):
        self.total = total
        self._free = total
        self._condition: asyncio.Condition | None = None

    def start(self) -> None:
        """Bind to the running event loop (the app's lifespan calls this at start-up)."""
        self._free = self.total
        self._condition = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        """Wait until ``amount`` bytes (at most the whole budget) are free; hold them for the block."""
        if self._condition is None:
            self.start()
        condition, amount = self._condition, max(0, min(int(amount), self.total))
        async with condition:
            await condition.wait_for(lambda: self._free >= amount)
            self._free -= amount
        try:
            yield
        finally:
            async with condition:
                self._free += amount
                condition.notify_all()


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

    def __init__(self, predictor, *, max_upload_bytes: int, max_files: int, max_pixels: int,
                 upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT, decode_budget: int | None = None):
        card = predictor.card
        self.predictor = predictor
        self.card = card
        self.task = Task(card.task)
        self.class_names = list(card.class_names)
        self.limits = _Limits(max_upload_bytes, max_files, max_pixels,
                              formats=_SUFFIXES_3D if card.spatial_dims == 3 else _SUFFIXES_2D)
        self.version = predictor.info.get("version")
        self.model_thread = _ModelThread(predictor)
        self.upload_timeout = float(upload_timeout)
        self.decode_budget = _DecodeBudget(decode_budget if decode_budget is not None else default_decode_budget())
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

    def decode_peak(self, uploads: list[_Upload]) -> int:
        """Bytes the decodes of ``uploads`` may peak at, from their headers (blocking: off the event loop).

        Raises:
            InputError: a header that cannot be read (answered 422).
        """
        from medlens.serve.predictor import decoded_size

        total = 0
        for upload in uploads:
            name = upload.filename or ""
            size = decoded_size(bytes(upload.data), name, file_suffix(name))
            declared = size[1] if size is not None else len(upload.data)
            total += int(DECODE_PEAK_PER_BYTE * min(declared, self.limits.max_pixels))
        return total

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
            probabilities, _ = await self.model_thread.predict(image[None])  # (1, K), OOD scores unused
            if not np.isfinite(probabilities).all():  # predictor.predict refuses it; a stand-in may not
                raise NonFiniteOutput("the warm-up prediction is not finite (NaN or infinite)")
            # Grad-CAM loads the torch model (for the ONNX backend) and its imports: seconds that
            # are paid here rather than by the first ?explain=true request (the page always asks).
            await self.overlay(image, 0)
        except NonFiniteOutput as exc:  # the model's fault, named in one line
            logger.error("warm-up failed: %s; the model is not served", exc)
            self.not_ready_reason = f"warm-up failed: {exc}"
            return
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
        service.decode_budget.start()
        warm_up_task = asyncio.create_task(service.warm_up(freeze_gc=freeze_gc))
        try:
            yield
        finally:
            warm_up_task.cancel()
            service.model_thread.stop()

    return lifespan


def _v1_router() -> APIRouter:
    """The ``/v1`` router (the API key, when set, is checked in front of the app: :class:`_KeyGate`)."""
    return APIRouter(prefix="/v1")


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
        uploads = await _read_uploads(request, max_bytes=limits.max_upload_bytes, max_files=limits.max_files,
                                      timeout=service.upload_timeout)
        service.check_formats(uploads)
        t0 = time.perf_counter()
        peak = await anyio.to_thread.run_sync(service.decode_peak, uploads)
        async with service.decode_budget.hold(peak):
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
               max_pixels: int = DEFAULT_MAX_PIXELS, api_key: str | None = None, freeze_gc: bool = False,
               allowed_hosts: list[str] | None = None, upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
               decode_budget: int | None = None) -> FastAPI:
    """Build the HTTP service for ``predictor``.

    Args:
        predictor: a loaded :class:`~medlens.serve.predictor.Predictor`.
        max_upload_bytes: largest request body accepted (all files plus multipart framing);
            default 10 MiB. Larger bodies answer 413.
        max_files: most files in one request (default 16); more answer 413.
        max_pixels: most pixels (voxels) one image may declare (default 50 million), and most
            bytes its decoded samples may take (a 16-bit pixel counts 2, RGB 3), checked before
            it is decoded; more answer 422.
        api_key: when given, every request but ``/`` (the page) and ``/healthz`` must carry it
            in the ``X-API-Key`` header (else 401): ``/v1/*``, ``/readyz``, ``/docs`` and
            ``/openapi.json`` included.
        freeze_gc: after the warm-up, move every object then alive out of the garbage
            collector's reach (:func:`gc.freeze`), so that full collections stop pausing
            requests for hundreds of milliseconds. It changes the whole process: for a process
            that only serves (``medlens serve`` sets it); default False.
        allowed_hosts: names the ``Host`` header may carry (Starlette's ``TrustedHostMiddleware``,
            ``*.example.org`` patterns allowed): a web page on another site that rebinds its
            DNS name to this server's address is refused with 400. None (default): any host.
        upload_timeout: seconds a request body may take to arrive (default 60); slower answer 408.
        decode_budget: bytes all decodes in flight may take together (see :class:`_DecodeBudget`);
            None (default): a quarter of the available memory, at most 768 MiB.

    Returns:
        The FastAPI app; serve it with uvicorn (with :func:`server_settings`). Its lifespan warms
        the model up and stops the model thread.

    Raises:
        ValueError: a limit below 1, an empty ``api_key`` or a timeout that is not positive.
    """
    _check_settings(max_upload_bytes=max_upload_bytes, max_files=max_files, max_pixels=max_pixels, api_key=api_key,
                    upload_timeout=upload_timeout)
    service = _Service(predictor, max_upload_bytes=max_upload_bytes, max_files=max_files, max_pixels=max_pixels,
                       upload_timeout=upload_timeout, decode_budget=decode_budget)
    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from files the
    # fastapi-offline package ships (served under /static-offline-docs), not from a CDN: the docs
    # of a service on a hospital network with no internet access would otherwise be a blank page.
    # The description names the model and its task, not its classes: the schema is public where
    # no key is set, and class names can say what a hospital screens for.
    app = FastAPIOffline(title="medlens", version=str(service.version or ""),
                         lifespan=_lifespan(service, freeze_gc=freeze_gc),
                         description=f"{service.card.architecture} ({service.task.value}, "
                                     f"{len(service.class_names)} classes) served with {predictor.backend}; "
                                     "GET /v1/model for the model card.")
    _install_error_handlers(app)
    v1 = _v1_router()
    _add_predict_route(v1, service)
    _add_model_route(v1, service)
    app.include_router(v1)
    _add_health_routes(app, service)
    _add_page_route(app)
    if api_key is not None:
        app.add_middleware(_KeyGate, api_key=api_key)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
    return app


# Seconds a connection may take to send a request's headers (from connecting, or from the end of
# the previous answer): browsers and clients send them in one packet; a slow-loris client that
# drips a byte at a time holds a connection open for ever without it (uvicorn has no such timeout).
HEADER_TIMEOUT = 10.0
# Memory that request bodies in flight may hold together (each up to max_upload_bytes):
# limit_concurrency is sized from it, so that a crowd of large uploads answers 503 instead of
# exhausting memory.
UPLOAD_MEMORY = 1 << 30


def _header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers (closes the connection)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        header_timeout = seconds

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_expired)

        def _cancel_header_timer(self) -> None:
            timer = getattr(self, "_header_timer", None)
            if timer is not None:
                timer.cancel()
                self._header_timer = None

        def _header_timeout_expired(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                logger.info("closed a connection from %s: no complete request headers within %g s",
                            self.client[0] if self.client else "?", self.header_timeout)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


def server_settings(*, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                    header_timeout: float = HEADER_TIMEOUT) -> dict:
    """Keyword arguments for ``uvicorn.run`` that bound what connections may cost.

    - ``limit_concurrency``: connections at once, ``UPLOAD_MEMORY // max_upload_bytes`` (102 at
      10 MiB) within 16-256; more answer 503 at once instead of each buffering an upload;
    - ``http``: the h11 protocol with a ``header_timeout`` (default 10 s) for each request's headers;
    - ``timeout_keep_alive``: an idle keep-alive connection closes after 5 s (uvicorn's default,
      stated so that it stays);
    - ``h11_max_incomplete_event_size``: request line and headers of at most 16 KiB.

    Example:
        >>> server_settings()["limit_concurrency"]
        102
    """
    return {
        "http": _header_timeout_protocol(header_timeout),
        "limit_concurrency": max(16, min(256, UPLOAD_MEMORY // max_upload_bytes)),
        "timeout_keep_alive": 5,
        "h11_max_incomplete_event_size": 16 * 1024,
    }
