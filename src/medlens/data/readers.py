"""Decode one image file (bytes) into a uint8 array at a target size.

Formats: PNG, JPEG, BMP, TIFF (Pillow) and DICOM (pydicom) as 2D; NIfTI (nibabel) and ``.npy``
as 3D (a 2-D ``.npy``, or ``(H, W, 3|4)``, is a 2D image).

Intensities: 8-bit images are kept as they are. Anything wider (16-bit PNG/TIFF, float
``.npy``, NIfTI, DICOM without a VOI window) is scaled per image from its own 0.5-99.5
percentile range to 0-255, so brightness is comparable in shape, not in absolute units,
across images; DICOM with a window uses the window (fixed units). Readers take bytes, so files inside a zip
archive and on disk go through the same code. Every failure raises :class:`UnreadableImage` with a short reason.

Privacy: DICOM headers carry patient names, ids and dates, and parsers quote element values in
their errors and warnings (``could not convert string to float: 'DOE^JOHN'``). Every DICOM read
goes through :func:`dicom_dataset`, which silences pydicom's warnings and log, and every failure
reason leaves through :func:`safe_reason`, which gives only the exception's type for DICOM: no
DICOM value reaches a message, a log, a cache file or a report.

Warnings (``warnings.warn``, naming the file): NaN or infinite pixel values (set to 0 before
scaling) and multi-page TIFF files (the first page is used).

Output layout: 2D ``(H, W)`` grayscale or ``(H, W, 3)`` colour; 3D ``(D, H, W)``.

Example:
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("L", (40, 30), 128).save(buf, "PNG")
    >>> read_image(buf.getvalue(), "x.png", size=16).pixels.shape
    (16, 16)
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import re
import warnings
from typing import NamedTuple

import numpy as np

IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")
SUPPORTED_SUFFIXES = IMAGE_2D_SUFFIXES + DICOM_SUFFIXES + VOLUME_SUFFIXES

# Pillow modes that carry colour; everything else is read as grayscale.
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "LA"}


class UnreadableImage(ValueError):
    """A file that cannot be decoded as an image; ``str(exc)`` is the short reason."""


def file_suffix(name: str) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one suffix."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    dot = lower.rfind(".")
    return lower[dot:] if dot > lower.rfind("/") else ""


class Decoded(NamedTuple):
    """A decoded image: uint8 ``pixels`` and whether it is 2D or 3D."""

    pixels: np.ndarray  # (H, W) | (H, W, 3) when spatial_dims == 2; (D, H, W) when 3
    spatial_dims: int


def read_image(data: bytes, name: str, *, size: int | None) -> Decoded:
    """Decode ``data`` (the bytes of file ``name``) and resize every spatial edge to ``size``.

    Args:
        data: the file's bytes.
        name: file name; its suffix chooses the decoder.
        size: target edge length in pixels; ``None`` keeps the native size.

    Returns:
        :class:`Decoded`: uint8 pixels ``(H, W)`` or ``(H, W, 3)`` for 2D, ``(D, H, W)`` for 3D.
        Colour images whose three channels are identical are returned as ``(H, W)``.

    Raises:
        UnreadableImage: unsupported type, corrupt or truncated file, or an unusable shape.
    """
    suffix = file_suffix(name)
    try:
        if suffix in IMAGE_2D_SUFFIXES:
            return Decoded(_read_pillow(data, size, name), 2)
        if suffix in DICOM_SUFFIXES:
            return Decoded(_gray_if_equal(_resize_2d(dicom_to_uint8(data, name=name), size)), 2)
        if suffix in (".nii", ".nii.gz"):
            return Decoded(_resize_3d(_to_uint8(_nifti_volume(data), name=name), size), 3)
        if suffix == ".npy":
            arr = _to_uint8(_npy_array(data), name=name)
            if arr.ndim == 3 and arr.shape[-1] in (3, 4) and min(arr.shape[:2]) > 4:
                # (H, W, 3|4): a colour picture, not a volume three slices deep (alpha dropped)
                return Decoded(_gray_if_equal(_resize_2d(np.ascontiguousarray(arr[..., :3]), size)), 2)
            if arr.ndim == 2:
                return Decoded(_resize_2d(arr, size), 2)
            return Decoded(_resize_3d(arr, size), 3)
    except UnreadableImage:
        raise
    except Exception as exc:  # decoders raise many types (OSError, EOFError, struct.error, ...)
        raise UnreadableImage(safe_reason(exc, suffix)) from exc
    raise UnreadableImage(
        f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
    )


def safe_reason(exc: BaseException, suffix: str) -> str:
    """A decoder's exception as a short reason that can be shown, logged and cached.

    For DICOM (``suffix`` ``.dcm`` / ``.dicom``) only the exception's type: pydicom and the
    conversions after it quote element values (patient names, ids) in their messages. For other
    formats the first line of the message, with the in-memory stream's repr replaced.

    Example:
        >>> safe_reason(ValueError("could not convert string to float: 'DOE^JOHN'"), ".dcm")
        'not a readable DICOM file (ValueError)'
    """
    if suffix in DICOM_SUFFIXES:
        return f"not a readable DICOM file ({type(exc).__name__})"
    # Decoders name their in-memory stream ("<_io.BytesIO object at 0x...>"): say "the data" instead.
    reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "the data", f"{type(exc).__name__}: {exc}")
    return reason.splitlines()[0][:200]


@contextlib.contextmanager
def _dicom_quiet():
    """pydicom's warnings and log lines quote element values (``Invalid value for VR DS: 'DOE'``): silence both."""
    logger = logging.getLogger("pydicom")
    level, logger.level = logger.level, logging.CRITICAL + 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def dicom_dataset(data: bytes, *, pixels: bool = True):
    """``pydicom.dcmread`` of ``data`` with nothing of the file printed (see the module's privacy note).

    Args:
        data: the file's bytes.
        pixels: also read the pixel data (False: the header only, which is cheap).
    """
    import pydicom

    with _dicom_quiet():
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels, force=True)


def dicom_header(data: bytes):
    """The header of a DICOM file (no pixel data), read as :func:`dicom_dataset` reads."""
    return dicom_dataset(data, pixels=False)


def _read_pillow(data: bytes, size: int | None, name: str = "image") -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        pages = getattr(img, "n_frames", 1)
        if pages > 1 and img.format == "TIFF":
            warnings.warn(f"{name}: a multi-page TIFF ({pages} pages); only the first page is used", stacklevel=4)
        colour = img.mode in _COLOUR_MODES
        if size is not None and img.format == "JPEG":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that is still >= size: much faster.
            img.draft("RGB" if colour else "L", (size, size))
        img.load()  # raises on truncated files rather than returning a half-grey image
        if colour:
            img = img.convert("RGB")
        elif img.mode not in ("L",):
            img = _pillow_gray_to_l(img, name)
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return _gray_if_equal(np.asarray(img))


def _pillow_gray_to_l(img, name: str = "image"):
    """16-bit / float / 1-bit grayscale to 8-bit, scaling by the image's own range."""
    if img.mode == "1":
        return img.convert("L")
    from PIL import Image

    return Image.fromarray(_to_uint8(np.asarray(img, dtype=np.float32), name=name))


def _gray_if_equal(arr: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` with three identical channels -> ``(H, W)``; anything else unchanged."""
    if arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        return np.ascontiguousarray(arr[..., 0])
    return arr


def _to_uint8(arr: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Scale any numeric array to uint8: uint8 unchanged, else the 0.5-99.5 percentile range.

    NaN and infinite values are set to 0 first, with a warning naming ``name`` and the count
    (a scanner's or converter's fault the user should know of: the zeros take part in scaling).
    """
    if arr.dtype == np.uint8:
        return arr
    arr = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        warnings.warn(f"{name}: {bad:,} NaN or infinite pixel value(s) of {arr.size:,} set to 0 before scaling",
                      stacklevel=3)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(arr, [0.5, 99.5]) if arr.size > 1000 else (arr.min(), arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip((arr - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)


def _resize_2d(arr: np.ndarray, size: int | None) -> np.ndarray:
    """Resize uint8 ``(H, W)`` or ``(H, W, 3)`` to ``(size, size[, 3])``, bilinear (Pillow)."""
    if size is None or arr.shape[:2] == (size, size):
        return arr
    from PIL import Image

    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))


def _resize_3d(arr: np.ndarray, size: int | None) -> np.ndarray:
    """Resize uint8 ``(D, H, W)`` to ``(size, size, size)``, trilinear (scipy.ndimage.zoom)."""
    if size is None or arr.shape == (size, size, size):
        return arr
    from scipy.ndimage import zoom

    factors = [size / s for s in arr.shape]
    out = zoom(arr.astype(np.float32), factors, order=1, grid_mode=True, mode="nearest")
    return np.clip(out, 0, 255).round().astype(np.uint8)


def dicom_to_uint8(data: bytes, *, name: str = "image") -> np.ndarray:
    """Decode a single-frame DICOM into a displayable uint8 image.

    Steps, in the order the standard defines: modality LUT (rescale slope / intercept), then the
    first VOI window (centre / width) when the file has one, else the 0.5-99.5 percentile range;
    MONOCHROME1 is inverted so that higher is brighter, as in MONOCHROME2. Multi-frame files are
    refused: a 2D model takes one frame. Only pixel data is read: no patient metadata leaves here.

    Returns:
        uint8 ``(H, W)``, or ``(H, W, 3)`` for colour DICOM.
    """
    with _dicom_quiet():
        return _dicom_pixels(dicom_dataset(data), name)


def _dicom_pixels(ds, name: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    if "PixelData" not in ds:
        raise UnreadableImage("DICOM file has no pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnreadableImage(f"multi-frame DICOM ({frames} frames) cannot be read as one 2D image")
    pixels = ds.pixel_array
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # colour (pydicom converts YBR to RGB)
        return _to_uint8(pixels, name=name)
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)
    window = _dicom_window(ds)
    if window is not None:
        centre, width = window
        lo = centre - width / 2.0
        image = (np.clip((values - lo) / width, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    else:
        image = _to_uint8(values, name=name)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        image = 255 - image
    return image


def _dicom_window(ds) -> tuple[float, float] | None:
    """(centre, width) of the first VOI window, or None when absent or degenerate."""
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre is None or width is None:
        return None
    from pydicom.multival import MultiValue

    def first(value) -> float:
        # Multi-valued elements hold several windows; the first is the default presentation.
        return float(value[0] if isinstance(value, (MultiValue, list, tuple)) else value)

    centre, width = first(centre), first(width)  # Dataset.get by keyword returns the value
    return (centre, width) if width > 0 else None


def _nifti_volume(data: bytes) -> np.ndarray:
    """NIfTI voxels as ``(D, H, W)`` float32: canonical (R, A, S) axes become (S, A, R)."""
    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    # Reorient to the closest canonical (RAS+) axes first, so volumes stored with different
    # orientations come out the same way round.
    image = nib.as_closest_canonical(nib.Nifti1Image.from_bytes(data))
    volume = np.asarray(image.dataobj, dtype=np.float32)
    if volume.ndim == 4 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise UnreadableImage(f"NIfTI image has shape {volume.shape}; expected a 3-D volume")
    return np.ascontiguousarray(volume.transpose(2, 1, 0))


def _npy_array(data: bytes) -> np.ndarray:
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3) or min(arr.shape) < 2:
        raise UnreadableImage(f".npy array has shape {arr.shape}; expected (H, W) or (D, H, W)")
    return arr
