"""Overlays of anomaly maps on images (numpy + Pillow only).

:func:`map_overlay` is the one overlay rule every output uses (``detect``, ``chat``, ``report``): the colour scale
runs from 0 to 1.5 x the decision threshold, so the same colour means the same distance to "anomalous" in every
image; without a threshold it runs to the map's maximum.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# anchors of a perceptually ordered dark-purple -> orange -> yellow colormap (inferno-like)
_ANCHORS = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39],
     [252, 255, 164]],
    dtype=np.float32,
)


def colorize(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map an (H, W) float array to (H, W, 3) uint8 colours; ``vmin``/``vmax`` default to the array's range."""
    v = np.asarray(values, dtype=np.float32)
    lo = float(np.min(v)) if vmin is None else vmin
    hi = float(np.max(v)) if vmax is None else vmax
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * (len(_ANCHORS) - 1)
    i = np.minimum(t.astype(int), len(_ANCHORS) - 2)
    frac = (t - i)[..., None]
    return (_ANCHORS[i] * (1 - frac) + _ANCHORS[i + 1] * frac).astype(np.uint8)


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a colourised map over an (H, W, 3) uint8 image; optionally outline a ground-truth mask in green."""
    if amap.shape != image.shape[:2]:
        raise ValueError(f"map shape {amap.shape} differs from image shape {image.shape[:2]}")
    heat = colorize(amap, vmin, vmax).astype(np.float32)
    out = (image.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)
    if mask is not None and mask.any():
        m = mask.astype(bool)
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = (0, 255, 0)
    return out


def side_by_side(image: np.ndarray, over: np.ndarray, caption: str) -> Image.Image:
    """The input and its overlay next to each other with a one-line caption underneath."""
    h, w = image.shape[:2]
    canvas = Image.new("RGB", (2 * w + 8, h + 18), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    canvas.paste(Image.fromarray(over), (w + 8, 0))
    ImageDraw.Draw(canvas).text((2, h + 3), caption, fill=(0, 0, 0))
    return canvas


def map_overlay(image: np.ndarray, amap: np.ndarray, threshold: float | None,
                boxes: Sequence[tuple[str, tuple[int, int, int, int]]] = ()) -> np.ndarray:
    """The overlay of an (H, W) map on its (H, W, 3) image under the one colour rule (see the module docstring),
    with each ``(label, (x0, y0, x1, y1))`` box (end-exclusive) outlined and labelled in cyan."""
    vmax = max(float(threshold) * 1.5 if threshold else float(np.max(amap)), 1e-6)
    out = overlay(image, amap, vmin=0.0, vmax=vmax)
    if not boxes:
        return out
    im = Image.fromarray(out)
    draw = ImageDraw.Draw(im)
    for label, (x0, y0, x1, y1) in boxes:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 255, 255))
        draw.text((x0 + 2, y0 + 1), label, fill=(0, 255, 255))
    return np.asarray(im)


def png_bytes(image: np.ndarray, *, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image (lossless at any level). Level 1, not Pillow's 6: on magnetic_tile
    overlays it encodes 4x faster (11 vs 47 ms, the largest cost of detect per image) for files 16% larger."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
