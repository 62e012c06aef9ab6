"""Predict and explain image files with a trained run, through torch or ONNX Runtime.

A :class:`Predictor` is built from a run folder (or a checkpoint) alone. It decodes a file's bytes
exactly as the training data was decoded (:func:`medlens.data.readers.read_image` at the card's
input size, then the card's channel count) and returns probabilities: the torch backend through
:class:`medlens.inference.InferenceModel`, the ONNX backend through that same module exported.

Everything about a file that the model cannot use (an unsupported or corrupt file, a volume for
a 2D model, an image too large) raises :class:`InputError`, whose message names the file and the
reason and nothing else: no DICOM metadata (patient name, ids, dates) is ever put into a message.

Example:
    >>> predictor = Predictor.load("runs/breast")  # doctest: +SKIP
    >>> image = predictor.prepare(Path("scan.png").read_bytes(), "scan.png")  # doctest: +SKIP
    >>> predictor.predict(image[None]).shape  # doctest: +SKIP
    (1, 2)
"""

from __future__ import annotations

import gzip
import io
import json
import os
import threading
from pathlib import Path

import numpy as np

from medlens._io import file_sha256, json_ready
from medlens.data.readers import (
    DICOM_SUFFIXES,
    IMAGE_2D_SUFFIXES,
    SUPPORTED_SUFFIXES,
    UnreadableImage,
    file_suffix,
    read_image,
)
from medlens.engine.run_folder import RunFolder

BACKENDS = ("torch", "onnx")
VOLUME_HINT = ".nii, .nii.gz or .npy"
IMAGE_HINT = ", ".join(IMAGE_2D_SUFFIXES + DICOM_SUFFIXES) + " or a 2-D .npy"


class InputError(ValueError):
    """One input that cannot be used; ``str()`` is a short reason naming it."""


class NonFiniteOutput(ValueError):
    """The model gave NaN or infinite probabilities: never a result (the weights or the export are broken)."""


def _pillow_bytes_per_pixel(mode: str) -> int:
    """Bytes one pixel of a Pillow ``mode`` takes once decoded (palette images are decoded to RGB(A))."""
    from PIL import ImageMode

    if mode in ("P", "PA"):
        return 3 if mode == "P" else 4
    described = ImageMode.getmode(mode)
    return max(1, np.dtype(described.typestr).itemsize) * len(described.bands)


def decoded_size(data: bytes, name: str, suffix: str) -> tuple[int, int] | None:
    """``(pixels, bytes)`` a file decodes to, read from its header alone, before any pixel is decoded.

    ``bytes`` counts what the decoded samples take in memory: pixels x channels x bytes per sample
    (a 16-bit grayscale PNG costs 2 bytes a pixel, or 4 where Pillow widens it to 32-bit; RGB 3;
    16-bit DICOM 2; a float32 volume 4). That is the cost a tiny compressed upload can make the
    decoder pay, so it is what the pixel budget counts.

    Returns None where the format has no cheap header to read. Raises InputError for a header
    that cannot be parsed (the decoder would fail on it too); its message holds no header value.
    """
    try:
        if suffix in IMAGE_2D_SUFFIXES:
            from PIL import Image

            # Image.open reads only the header; .size and .mode are known before any pixel is decoded.
            try:
                with Image.open(io.BytesIO(data)) as img:
                    width, height = img.size
                    return width * height, width * height * _pillow_bytes_per_pixel(img.mode)
            except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: refused at open
                import re

                size = re.search(r"\((\d+) pixels\)", str(exc))
                count = int(size.group(1)) if size else 2**62
                return count, count
        if suffix in DICOM_SUFFIXES:
            from medlens.data.readers import dicom_header

            ds = dicom_header(data)
            frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
            pixels = int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames
            per_sample = -(-int(ds.get("BitsAllocated", 8) or 8) // 8)
            return pixels, pixels * per_sample * int(ds.get("SamplesPerPixel", 1) or 1)
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            handle = gzip.GzipFile(fileobj=io.BytesIO(data)) if data[:2] == b"\x1f\x8b" else io.BytesIO(data)
            header = nib.Nifti1Header.from_fileobj(handle, check=False)
            voxels = int(np.prod(header.get_data_shape()[:3], dtype=np.int64))
            total = int(np.prod(header.get_data_shape(), dtype=np.int64))
            return voxels, total * header.get_data_dtype().itemsize
        if suffix == ".npy":
            handle = io.BytesIO(data)
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            colour = len(shape) == 3 and shape[-1] in (3, 4)
            pixels = int(np.prod(shape[:-1] if colour else shape, dtype=np.int64))
            return pixels, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    except Exception as exc:  # header parsers raise many types (OSError, ValueError, struct.error, ...)
        raise InputError(f"{name}: not a readable {suffix} file ({type(exc).__name__})") from None
    return None


def _gunzip_nifti(data: bytes, name: str) -> bytes:
    """Inflate a ``.nii.gz`` no further than the size its own header declares.

    Raises:
        InputError: the stream inflates to more than header + extensions + voxels (+ 1 MiB), or
            is not a readable gzip / NIfTI stream.
    """
    import zlib

    import nibabel as nib

    try:
        header = nib.Nifti1Header.from_fileobj(gzip.GzipFile(fileobj=io.BytesIO(data)), check=False)
        voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
        expected = int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
        limit = expected + (1 << 20)
        raw = inflater.decompress(data, limit + 1)
    except Exception as exc:  # zlib.error, OSError, nibabel's HeaderDataError, ...
        raise InputError(f"{name}: not a readable .nii.gz file ({type(exc).__name__})") from None
    if len(raw) > limit:
        raise InputError(f"{name}: inflates to more than the {expected:,} bytes its header declares")
    return raw


def _dicom_frames(data: bytes) -> int:
    """Number of frames in a DICOM file, from its header (1 when absent or unreadable)."""
    from medlens.data.readers import dicom_header

    try:
        return int(getattr(dicom_header(data), "NumberOfFrames", 1) or 1)
    except Exception:  # a corrupt file: the decoder reports it with its reason
        return 1


def _to_channels(pixels: np.ndarray, channels: int, spatial_dims: int) -> np.ndarray:
    """Decoded pixels -> ``(C, *spatial)`` as the training data was stacked.

    Grayscale is repeated over the channels; colour ``(H, W, 3)`` becomes ``(3, H, W)`` for a
    3-channel model and its ITU-R 601 luma for a 1-channel one (what ``load_folder`` does).
    """
    from medlens.data.folder import (
        stack_channels,  # the one conversion training used: stay identical
    )

    return stack_channels([pixels], channels, spatial_dims)[0]


class Predictor:
    """A trained model ready for files: decode, predict, explain.

    Attributes:
        card: the model card from the checkpoint.
        backend: ``"torch"`` or ``"onnx"``.
        batch_size: images per forward pass in :meth:`predict` (default 64).

    Thread safety: :meth:`prepare`, :meth:`predict` and :meth:`explain` may be called from
    several threads at once (Grad-CAM runs on its own copy of the model).
    """

    def __init__(self, card, *, backend: str, weights: Path, model=None, session=None,
                 served_sha256: str | None = None, weights_sha256: str | None = None,
                 served_file: Path | None = None) -> None:
        """Use :meth:`load`; this takes already-loaded parts.

        Args:
            card: :class:`~medlens.engine.checkpoint.ModelCard`.
            backend: ``"torch"`` (``model`` required) or ``"onnx"`` (``session`` required).
            weights: the ``.safetensors`` checkpoint (hashed for :attr:`info`; loaded for Grad-CAM).
            model: the torch model, in eval mode.
            session: an ``onnxruntime.InferenceSession`` of the exported model.
            served_sha256: SHA-256 of the file that answers (``model.onnx`` for ONNX); None:
                the weights file's.
            weights_sha256: SHA-256 of ``weights`` as checked at load; Grad-CAM loads them
                later only if they still hash to it. None: not checked.
            served_file: the file that answers (named in :attr:`info`); None: ``weights``.
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.card = card
        self.backend = backend
        self.batch_size = 64
        self._weights = Path(weights)
        self._model = model
        self._session = session
        self._inference_model = None
        self._lock = threading.Lock()
        self._version: str | None = served_sha256[:12] if served_sha256 else None
        self._weights_sha256 = weights_sha256
        self._served_file = Path(served_file) if served_file is not None else self._weights
        self._task = None
        # Out-of-distribution detector (issue 19): set by load(); None with the reason why not.
        self.ood = None
        self.ood_reason = "no out-of-distribution detector loaded"

    @classmethod
    def load(cls, run: str | os.PathLike, *, backend: str = "torch") -> Predictor:
        """Load a run's best model (or a given checkpoint) for inference.

        Args:
            run: a run folder (its ``checkpoints/best``), or a ``.safetensors`` / ``.json`` checkpoint.
            backend: ``"torch"`` (default) or ``"onnx"``: ONNX Runtime on the CPU with 2 intra-op
                threads, on ``RUN/export/model.onnx`` made by ``medlens export RUN --format onnx``.

        Returns:
            A :class:`Predictor`.

        Raises:
            ValueError: an unknown backend, a damaged checkpoint, or an ONNX export made from other
                weights than the checkpoint's.
            FileNotFoundError: no checkpoint, or (backend ``onnx``) no exported model.
        """
        from medlens.engine.checkpoint import load_card, load_model

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        folder = RunFolder.of(run)
        weights = folder.weights
        if backend == "torch":
            from medlens.engine.ood import load_run_detector

            model, card = load_model(weights)
            predictor = cls(card, backend="torch", weights=weights, model=model)
            predictor.ood, predictor.ood_reason = load_run_detector(weights)
            return predictor
        card = load_card(weights)
        onnx_file, onnx_card = folder.onnx, folder.onnx_card
        if not onnx_file.is_file() or not onnx_card.is_file():
            raise FileNotFoundError(f"{onnx_file} does not exist; run `medlens export {folder.path} --format onnx` "
                                    "first, or use --backend torch")
        exported = json.loads(onnx_card.read_text())
        weights_sha256 = file_sha256(weights)
        if exported.get("weights_sha256") != weights_sha256:
            raise ValueError(f"{onnx_file} was exported from other weights than {weights}; run "
                             f"`medlens export {folder.path} --format onnx` again")
        # The graph itself must be the one exported: a swapped model.onnx would answer with
        # another model than the card (and Grad-CAM) describe.
        onnx_sha256 = exported.get("onnx_sha256")
        if onnx_sha256 is None:
            raise ValueError(f"{onnx_card} records no SHA-256 of {onnx_file.name} (an export of an older medlens); "
                             f"run `medlens export {folder.path} --format onnx` again")
        if file_sha256(onnx_file) != onnx_sha256:
            raise ValueError(f"{onnx_file} is not the file that was exported (its SHA-256 differs from the one in "
                             f"{onnx_card.name}); run `medlens export {folder.path} --format onnx` again")
        predictor = cls(card, backend="onnx", weights=weights, session=_onnx_session(onnx_file),
                        served_sha256=onnx_sha256, weights_sha256=weights_sha256, served_file=onnx_file)
        predictor.ood_reason = ("the ONNX export has no feature output, so no out-of-distribution score; "
                                "serve with --backend torch for the flag")
        return predictor

    # ------------------------------------------------------------------ decoding

    def prepare(self, data: bytes, name: str, *, max_pixels: int | None = None) -> np.ndarray:
        """Decode one file's bytes as the training data was decoded.

        Args:
            data: the file's contents.
            name: its name (the suffix picks the decoder; the name appears in error messages).
            max_pixels: refuse an image (or volume) with more decoded pixels (voxels) than this,
                or whose decoded samples take more bytes than this (bit depth and channels
                count: a 16-bit pixel costs 2, RGB 3; see :func:`decoded_size`), checked from the
                header before the pixels are decoded (PNG, JPEG, BMP, TIFF, DICOM, NIfTI, .npy);
                a ``.nii.gz`` is then also inflated no further than its header declares. Pillow's
                global limit is left as it is. None: no limit.

        Returns:
            uint8 ``(C, S, S)`` for a 2D model or ``(C, S, S, S)`` for a 3D one, with the card's
            channels C and input size S.

        Raises:
            InputError: unsupported suffix, corrupt file, too many pixels, a volume for a 2D model
                or a 2D image for a 3D model (including multi-frame DICOM for a 2D model).
        """
        dims = self.card.spatial_dims
        suffix = file_suffix(name)
        if suffix not in SUPPORTED_SUFFIXES:
            raise InputError(f"{name}: unsupported file type {suffix or '(none)'!r}; supported: "
                             f"{', '.join(SUPPORTED_SUFFIXES)}")
        if max_pixels is not None:
            size = decoded_size(data, name, suffix)
            if size is not None and max(size) > max_pixels:
                count, nbytes = size
                if nbytes > max_pixels and count <= max_pixels:
                    raise InputError(f"{name}: {count:,} pixels x {nbytes // max(count, 1)} bytes = {nbytes:,} bytes "
                                     f"decoded is more than the limit of {max_pixels:,} (a 16-bit or colour pixel "
                                     "counts as several 8-bit ones)")
                raise InputError(f"{name}: {count:,} pixels is more than the limit of {max_pixels:,}")
        if max_pixels is not None and suffix == ".nii.gz" and data[:2] == b"\x1f\x8b":
            # The reader inflates the whole stream; a header claiming a small volume followed by a
            # stream that inflates to gigabytes must be stopped here, where the size is known.
            data, name_for_reader = _gunzip_nifti(data, name), name[: -len(".gz")]
        else:
            name_for_reader = name
        if suffix in DICOM_SUFFIXES:
            frames = _dicom_frames(data)
            if frames > 1:
                what = "the model is 2D and takes one image" if dims == 2 else \
                    f"medlens reads volumes from {VOLUME_HINT} files"
                raise InputError(f"{name}: multi-frame DICOM ({frames} frames) cannot be used: {what}")
        try:
            decoded = read_image(data, name_for_reader, size=self.card.input_size)
        except UnreadableImage as exc:  # its reason is already free of DICOM values (readers.safe_reason)
            raise InputError(f"{name}: {exc}") from None
        if decoded.spatial_dims != dims:
            if dims == 2:
                raise InputError(f"{name}: a 3D volume, but the model is 2D; give {IMAGE_HINT} images")
            raise InputError(f"{name}: a 2D image, but the model is 3D; give {VOLUME_HINT} volumes")
        return _to_channels(decoded.pixels, self.card.in_channels, dims)

    # ------------------------------------------------------------------ inference

    def _check_batch(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        size, dims = self.card.input_size, self.card.spatial_dims
        expected = (self.card.in_channels,) + (size,) * dims
        if images.dtype != np.uint8 or images.ndim != 2 + dims or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be uint8 (B, {', '.join(map(str, expected))}) as prepare() returns, "
                             f"got {images.dtype} {tuple(images.shape)}")
        return np.ascontiguousarray(images)

    @property
    def task(self):
        """The card's :class:`~medlens.data.registry.Task`."""
        if self._task is None:
            from medlens.data.registry import Task

            self._task = Task(self.card.task)
        return self._task

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of a batch of prepared images.

        Args:
            images: uint8 ``(B, C, *spatial)`` stacked from :meth:`prepare` (B may be 0).

        Returns:
            float32 ``(B, K)`` (see :func:`medlens.inference.probabilities`); K =
            ``len(card.class_names)``.

        Raises:
            ValueError: wrong dtype or shape (the message gives the expected one).
            NonFiniteOutput: a probability is NaN or infinite (never returned as a result).
        """
        images = self._check_batch(images)
        out = np.zeros((len(images), len(self.card.class_names)), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            out[start:start + len(chunk)] = self._predict_torch(chunk) if self.backend == "torch" \
                else self._session.run(None, {self._session.get_inputs()[0].name: chunk})[0]
        if not np.isfinite(out).all():
            bad = int((~np.isfinite(out)).any(axis=1).sum())
            raise NonFiniteOutput(f"the {self.backend} model gave NaN or infinite probabilities for {bad} of "
                                  f"{len(out)} image(s): its weights are broken (a diverged run?)")
        return out

    def predict_with_ood(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and out-of-distribution scores of a batch, from one forward pass.

        Args:
            images: as :meth:`predict`.

        Returns:
            ``(probabilities (B, K), scores (B,))``; scores are None without a detector
            (:attr:`ood_reason` says why). An image is flagged when its score is above
            ``self.ood.threshold``.
        """
        if self.ood is None:
            return self.predict(images), None
        import torch

        from medlens.inference.ood import penultimate

        images = self._check_batch(images)
        probs, scores = [], []
        for start in range(0, len(images), self.batch_size):
            with torch.inference_mode():
                p, features = penultimate(self._inference(), torch.from_numpy(images[start:start + self.batch_size]))
            probs.append(p.numpy())
            scores.append(self.ood.score(features.numpy()))
        if not probs:
            return np.zeros((0, len(self.card.class_names)), np.float32), np.zeros(0)
        out = np.concatenate(probs).astype(np.float32)
        if not np.isfinite(out).all():  # as predict(): a NaN is never answered as a probability
            bad = int((~np.isfinite(out)).any(axis=1).sum())
            raise NonFiniteOutput(f"the {self.backend} model gave NaN or infinite probabilities for {bad} of "
                                  f"{len(out)} image(s): its weights are broken (a diverged run?)")
        return out, np.concatenate(scores)

    def _predict_torch(self, chunk: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._inference().forward(torch.from_numpy(chunk)).numpy()

    def explain(self, image: np.ndarray, class_index: int | None = None, *, method: str = "gradcam",
                layer: str | None = None) -> np.ndarray:
        """Grad-CAM heatmap of one prepared image, always computed with the torch model.

        Args:
            image: uint8 ``(C, *spatial)`` from :meth:`prepare`.
            class_index: class to explain, ``0 <= class_index < K``; None: the predicted class.
            method: ``gradcam`` or ``gradcampp`` (see :func:`~medlens.explain.gradcam.gradcam`).
            layer: dotted name of the layer to explain; None: the model's ``gradcam_layer``.

        Returns:
            float32 heatmap of the image's spatial shape, in [0, 1].

        Raises:
            ValueError: wrong image shape or a class index out of range.
        """
        import torch

        from medlens.explain.gradcam import gradcam

        batch = self._check_batch(np.asarray(image)[None])
        n_classes = len(self.card.class_names)
        valid = isinstance(class_index, (int, np.integer)) and 0 <= class_index < n_classes
        if class_index is not None and not valid:
            raise ValueError(f"class_index must be an int in 0..{n_classes - 1}, got {class_index!r}")
        inference = self._inference()
        with torch.no_grad():
            x = inference.normalise(torch.from_numpy(batch))  # (1, C, *spatial), as the model takes it
        return gradcam(inference.model, x, class_index=class_index, method=method, layer=layer)[0]

    def _inference(self):
        """The torch model's :class:`~medlens.inference.InferenceModel` (loaded on first use for ONNX)."""
        with self._lock:
            if self._inference_model is None:
                from medlens.inference import InferenceModel

                if self._model is None:
                    from medlens.engine.checkpoint import load_model

                    # Grad-CAM must explain the model that answers: the weights the served export
                    # was made from (checked at load), not whatever the file holds by now.
                    if self._weights_sha256 is not None and file_sha256(self._weights) != self._weights_sha256:
                        raise ValueError(f"{self._weights} changed since the model was loaded; Grad-CAM would "
                                         "explain another model than the one answering: restart the server")
                    self._model, _ = load_model(self._weights)
                self._inference_model = InferenceModel.from_card(self._model, self.card).eval()
            return self._inference_model

    # ------------------------------------------------------------------ description

    @property
    def version(self) -> str:
        """First 12 hex digits of the SHA-256 of the file that answers: the weights (torch) or
        ``model.onnx`` (onnx); changes whenever it does."""
        if self._version is None:
            self._version = file_sha256(self._weights)[:12]
        return self._version

    @property
    def info(self) -> dict:
        """JSON-ready summary of the model card, the backend and the weights' content hash."""
        card = self.card
        return json_ready({
            "architecture": card.architecture,
            "task": card.task,
            "class_names": list(card.class_names),
            "in_channels": card.in_channels,
            "spatial_dims": card.spatial_dims,
            "input_size": card.input_size,
            "dataset": dict(card.dataset),
            "test_metrics": dict(card.metrics.get("test", {})),
            "best_epoch": card.metrics.get("epoch", card.metrics.get("best_epoch")),
            "medlens_version": card.versions.get("medlens"),
            "backend": self.backend,
            "version": self.version,
            "served_file": self._served_file.name,
            "ood": ({"method": "mahalanobis", "threshold": self.ood.threshold, "val_share_flagged": self.ood.share}
                    if self.ood is not None else {"available": False, "reason": self.ood_reason}),
        })


def _onnx_session(path: Path):
    """ONNX Runtime session on the CPU with 2 intra-op threads (serving shares the machine)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
