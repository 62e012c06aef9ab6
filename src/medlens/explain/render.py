"""Explanation figures: the overlay with its caption, and three orthogonal planes for volumes."""

from __future__ import annotations

import io
import math

import numpy as np

PLANES = ("axial", "coronal", "sagittal")


def overlay_png(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.6, min_edge: int | None = None) -> bytes:
    """PNG of an image with its heatmap blended on top in a jet colour map.

    Args:
        image: uint8 ``(C, H, W)`` or ``(C, D, H, W)`` (C = 1 or 3), as
            :meth:`~medlens.serve.predictor.Predictor.prepare`
            returns; 3D shows the middle slice along depth.
        heatmap: float ``(H, W)`` or ``(D, H, W)`` in [0, 1] (values outside are clipped).
        alpha: weight of the colour map at the hottest pixels, in [0, 1]; it falls with the heat
            to 0 where the heatmap is 0 (the image unchanged there). Default 0.6.
        min_edge: enlarge (nearest neighbour, by a whole factor) until the shorter edge is at
            least this many pixels, so 28-pixel images stay legible; None keeps the size.

    Returns:
        PNG bytes of an RGB image.

    Raises:
        ValueError: shapes that do not match, or ``alpha`` outside [0, 1].

    Example:
        >>> png = overlay_png(np.zeros((1, 8, 8), np.uint8), np.eye(8, dtype=np.float32))
        >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        True
    """
    from matplotlib import colormaps
    from PIL import Image

    image, heatmap = np.asarray(image), np.asarray(heatmap, dtype=np.float32)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if image.ndim not in (3, 4) or image.shape[0] not in (1, 3) or heatmap.shape != image.shape[1:]:
        raise ValueError(f"image must be (C, H, W) or (C, D, H, W) with C 1 or 3 and heatmap its spatial shape; "
                         f"got image {image.shape}, heatmap {heatmap.shape}")
    if image.ndim == 4:  # (C, D, H, W): the middle slice along depth
        middle = image.shape[1] // 2
        image, heatmap = image[:, middle], heatmap[middle]
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image  # (3, H, W)
    base = rgb.transpose(1, 2, 0).astype(np.float32) / 255.0  # (H, W, 3)
    heat = np.clip(np.nan_to_num(heatmap), 0.0, 1.0)
    colour = colormaps["jet"](heat)[..., :3]  # (H, W, 3)
    # The colour's weight follows the heat: where the model looked the map shows at ``alpha``,
    # elsewhere the image shows as it is. A uniform weight put jet's dark blue over every cold
    # pixel and hid the anatomy the heatmap is meant to point into.
    weight = alpha * heat[..., None]
    blended = ((1.0 - weight) * base + weight * colour) * 255.0
    picture = Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8), "RGB")
    if min_edge is not None and min(picture.size) < min_edge:
        factor = math.ceil(min_edge / min(picture.size))
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _middle_planes(image: np.ndarray, heatmap: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The middle slice along each axis of ``(C, D, H, W)`` / ``(D, H, W)``: ``(name, (C, a, b), (a, b))``."""
    d, h, w = heatmap.shape
    return [("axial", image[:, d // 2], heatmap[d // 2]),
            ("coronal", image[:, :, h // 2], heatmap[:, h // 2]),
            ("sagittal", image[:, :, :, w // 2], heatmap[:, :, w // 2])]


def explanation_png(image: np.ndarray, heatmap: np.ndarray, *, caption: str, min_edge: int = 256,
                    alpha: float = 0.6) -> bytes:
    """PNG of the Grad-CAM overlay with a caption strip (predicted class, probability, target).

    Args:
        image: uint8 ``(C, H, W)`` or ``(C, D, H, W)`` (C = 1 or 3), the model's input.
        heatmap: float ``(H, W)`` or ``(D, H, W)`` in [0, 1].
        caption: text written under the picture.
        min_edge: each panel is enlarged (nearest neighbour) to at least this edge.
        alpha: weight of the colour map at the hottest pixels (see :func:`overlay_png`).

    Returns:
        PNG bytes: one panel for 2D, the three orthogonal middle slices side by side for 3D.

    Raises:
        ValueError: shapes that do not match (as :func:`overlay_png`).
    """
    from PIL import Image, ImageDraw, ImageFont

    image, heatmap = np.asarray(image), np.asarray(heatmap, dtype=np.float32)
    if image.ndim == 4 and heatmap.ndim == 3:
        panels = [(name, Image.open(io.BytesIO(overlay_png(img, heat, alpha=alpha, min_edge=min_edge))))
                  for name, img, heat in _middle_planes(image, heatmap)]
    else:
        panels = [("", Image.open(io.BytesIO(overlay_png(image, heatmap, alpha=alpha, min_edge=min_edge))))]
    font = ImageFont.load_default()
    line = 16
    width = sum(p.width for _, p in panels) + 4 * (len(panels) - 1)
    height = max(p.height for _, p in panels)
    labels = line if len(panels) > 1 else 0
    canvas = Image.new("RGB", (max(width, 8 * len(caption)), height + labels + 2 * line), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, panel in panels:
        canvas.paste(panel.convert("RGB"), (x, labels))
        if name:
            draw.text((x + 2, 2), name, fill="black", font=font)
        x += panel.width + 4
    draw.text((2, height + labels + 4), caption, fill="black", font=font)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()
