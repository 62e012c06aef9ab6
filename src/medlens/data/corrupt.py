"""Image corruptions at five severities: what a model meets on new scanners, as pure functions.

Every corruption takes a uint8 batch ``(N, C, H, W)`` or ``(N, C, D, H, W)`` and gives back a new
uint8 batch of the same shape; the input is never changed. Randomness (noise, blur direction) is
drawn per image from ``numpy.random.default_rng([seed, index])``, so a corruption is deterministic
for a seed and does not depend on how a split is cut into batches.

The table (:data:`CORRUPTIONS`) follows MedMNIST-C (Di Salvo et al., 2024) and ImageNet-C
(Hendrycks & Dietterich, 2019), with strengths on the [0, 1] intensity scale and blur sizes in
pixels of a 28-pixel image, scaled by ``edge / 28`` so that a severity means the same share of the
image at 28, 64, 128 or 224 pixels:

=================  =========================================  ===================================
name               what (x in [0, 1])                         severities 1..5
=================  =========================================  ===================================
gaussian_noise     x + N(0, sigma)                            sigma .02 .04 .06 .08 .10
shot_noise         Poisson(x * lam) / lam (photon counting)   lam 200 100 50 25 12
speckle_noise      x + x * N(0, sigma) (ultrasound speckle)   sigma .05 .10 .15 .20 .30
gaussian_blur      Gaussian filter, sigma px @ 28             sigma .4 .6 .8 1.0 1.3
motion_blur        line kernel of length px @ 28, random      length 2 3 4 5 7
                   direction, in-plane
contrast           (x - mean) * c + mean, mean per image      c .75 .6 .5 .4 .3
brightness         x + b                                      b .05 .10 .15 .20 .30
gamma              x ** g (darker mid-tones)                  g 1.2 1.4 1.7 2.0 2.5
jpeg               JPEG at quality q (Pillow)                 q 60 40 25 15 8
pixelate           mean over b x b blocks, px @ 28            b 2 3 4 5 6
=================  =========================================  ===================================

Severity 5 of Gaussian noise (sigma .10) is the strength at which the issue's BreastMNIST model
collapsed to one class. Results are clipped to [0, 1] and rounded back to uint8.

3D volumes: intensity and noise corruptions act voxel-wise; ``gaussian_blur`` and ``pixelate``
act in 3D (all spatial axes); ``motion_blur`` and ``jpeg`` act per slice (the last two axes,
the in-plane ones), as a moving patient and a 2D codec do.

Example:
    >>> images = np.full((2, 1, 28, 28), 128, np.uint8)
    >>> float(corrupt(images, "brightness", 2).mean())  # 128 + 0.10 * 255, rounded
    154.0
    >>> bool((corrupt(images, "gaussian_noise", 3, seed=1) == corrupt(images, "gaussian_noise", 3, seed=1)).all())
    True
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
_REFERENCE_EDGE = 28  # blur sizes in the table are pixels of a 28-pixel image


@dataclass(frozen=True)
class Corruption:
    """One row of the table.

    Attributes:
        name: the name ``corrupt`` takes.
        description: what it does, in words.
        parameters: the strength at severities 1..5.
        apply: ``(image (C, *spatial) float in [0, 1], parameter, rng, edge_scale) -> float image``.
    """

    name: str
    description: str
    parameters: tuple[float, ...]
    apply: Callable


def _gaussian_noise(x, sigma, rng, _scale):
    return x + rng.normal(0.0, sigma, size=x.shape)


def _shot_noise(x, lam, rng, _scale):
    return rng.poisson(x * lam) / lam


def _speckle_noise(x, sigma, rng, _scale):
    return x + x * rng.normal(0.0, sigma, size=x.shape)


def _gaussian_blur(x, sigma, _rng, scale):
    from scipy.ndimage import gaussian_filter

    # sigma 0 on the channel axis: channels are not blurred into each other.
    return gaussian_filter(x, sigma=(0.0,) + (sigma * scale,) * (x.ndim - 1), mode="nearest")


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line kernel of ``length`` pixels at ``angle`` radians (bilinear samples)."""
    radius = int(np.ceil(length / 2))
    size = 2 * radius + 1
    kernel = np.zeros((size, size))
    for t in np.linspace(-length / 2, length / 2, max(2, int(np.ceil(length)) * 4)):
        y, x = radius + t * np.sin(angle), radius + t * np.cos(angle)
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        dy, dx = y - y0, x - x0
        for yy, xx, w in ((y0, x0, (1 - dy) * (1 - dx)), (y0 + 1, x0, dy * (1 - dx)),
                          (y0, x0 + 1, (1 - dy) * dx), (y0 + 1, x0 + 1, dy * dx)):
            if 0 <= yy < size and 0 <= xx < size:
                kernel[yy, xx] += w
    return kernel / kernel.sum()


def _motion_blur(x, length, rng, scale):
    from scipy.ndimage import convolve

    kernel = _motion_kernel(length * scale, rng.uniform(0, np.pi))
    kernel = kernel.reshape((1,) * (x.ndim - 2) + kernel.shape)  # in-plane: per channel (and slice)
    return convolve(x, kernel, mode="nearest")


def _contrast(x, c, _rng, _scale):
    mean = x.mean()
    return (x - mean) * c + mean


def _brightness(x, b, _rng, _scale):
    return x + b


def _gamma(x, g, _rng, _scale):
    return x ** g


def _jpeg(x, quality, _rng, _scale):
    from PIL import Image

    channels, *rest = x.shape
    planes = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8).reshape(channels, -1, *rest[-2:])  # (C, S, H, W)
    out = np.empty(planes.shape, np.float64)
    for s in range(planes.shape[1]):
        # RGB is coded as one colour image (chroma subsampling included); grey as L.
        plane = planes[:, s].transpose(1, 2, 0) if channels == 3 else planes[0, s]
        buffer = io.BytesIO()
        Image.fromarray(plane).save(buffer, format="JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(buffer), dtype=np.float64) / 255.0
        out[:, s] = decoded.transpose(2, 0, 1) if channels == 3 else decoded[None]
    return out.reshape(x.shape)


def _pixelate(x, block, _rng, scale):
    # Integer blocks (not a fractional resize): a fractional grid aliases differently at each
    # size, so a stronger severity could change the image less (measured: 0.5 of 28 px, a whole
    # 2-px grid, changed BreastMNIST less than 0.65).
    b = max(1, int(round(block * scale)))
    spatial = x.shape[1:]
    padded = np.pad(x, [(0, 0)] + [(0, (-s) % b) for s in spatial], mode="edge")
    shape = [x.shape[0]]
    for s in padded.shape[1:]:
        shape += [s // b, b]
    means = padded.reshape(shape).mean(axis=tuple(range(2, len(shape), 2)), keepdims=True)
    blocks = np.broadcast_to(means, shape).reshape(padded.shape)
    return blocks[(slice(None),) + tuple(slice(0, s) for s in spatial)]


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", "additive Gaussian noise", (0.02, 0.04, 0.06, 0.08, 0.10), _gaussian_noise),
    Corruption("shot_noise", "Poisson (photon-counting) noise", (200, 100, 50, 25, 12), _shot_noise),
    Corruption("speckle_noise", "multiplicative speckle noise", (0.05, 0.10, 0.15, 0.20, 0.30), _speckle_noise),
    Corruption("gaussian_blur", "Gaussian blur (sigma in px of a 28-px image)", (0.4, 0.6, 0.8, 1.0, 1.3),
               _gaussian_blur),
    Corruption("motion_blur", "in-plane motion blur (length in px of a 28-px image)", (2, 3, 4, 5, 7),
               _motion_blur),
    Corruption("contrast", "contrast scaled about the image mean", (0.75, 0.6, 0.5, 0.4, 0.3), _contrast),
    Corruption("brightness", "intensity shifted up", (0.05, 0.10, 0.15, 0.20, 0.30), _brightness),
    Corruption("gamma", "gamma curve x ** g", (1.2, 1.4, 1.7, 2.0, 2.5), _gamma),
    Corruption("jpeg", "JPEG compression at quality q (per slice in 3D)", (60, 40, 25, 15, 8), _jpeg),
    Corruption("pixelate", "mean over blocks of b px of a 28-px image (b x b x b in 3D)", (2, 3, 4, 5, 6),
               _pixelate),
)}


def corruption_names() -> list[str]:
    """The names of :data:`CORRUPTIONS`, in table order."""
    return list(CORRUPTIONS)


def check_corruptions(names) -> list[str]:
    """``names`` checked against the table (None: all of them).

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    if names is None:
        return corruption_names()
    names = list(names)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ValueError(f"unknown corruption {', '.join(unknown) or '(none given)'}; "
                         f"valid: {', '.join(CORRUPTIONS)}")
    return names


def check_severity(severity) -> int:
    """``severity`` as an int in 1..5.

    Raises:
        ValueError: anything else.
    """
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(map(str, SEVERITIES))}; got {severity!r}")
    return int(severity)


def corrupt(images: np.ndarray, name: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """``images`` under corruption ``name`` at ``severity``.

    Args:
        images: uint8 ``(N, C, H, W)`` or ``(N, C, D, H, W)``; any memory layout; not changed.
        name: a name of :data:`CORRUPTIONS`.
        severity: 1 (mildest) .. 5.
        seed: image ``i`` draws its randomness from ``default_rng([seed, i])``.

    Returns:
        uint8 array of the same shape (C order).

    Raises:
        ValueError: an unknown name or severity, or images that are not a uint8 2D/3D batch.

    Example:
        >>> corrupt(np.zeros((1, 1, 8, 8), np.uint8), "contrast", 1).shape
        (1, 1, 8, 8)
    """
    [name] = check_corruptions([name])
    severity = check_severity(severity)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (4, 5):
        raise ValueError(f"images must be uint8 (N, C, H, W) or (N, C, D, H, W); got {images.dtype} {images.shape}")
    row = CORRUPTIONS[name]
    parameter = row.parameters[severity - 1]
    scale = images.shape[-1] / _REFERENCE_EDGE
    out = np.empty(images.shape, np.uint8)
    for i, image in enumerate(images):
        x = image.astype(np.float64) / 255.0
        y = row.apply(x, parameter, np.random.default_rng([int(seed), i]), scale)
        out[i] = np.round(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out
