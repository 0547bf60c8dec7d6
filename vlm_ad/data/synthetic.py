"""A deterministic synthetic defect generator with exact masks and reference descriptions.

Normal images are crops (tiled when the source is smaller) of the grayscale textures ``brick``, ``grass`` and
``gravel`` bundled with scikit-image, or of your own normal images. :func:`make_defect` paints one defect
into an image in memory; :func:`generate_dataset` writes MVTec-layout folders with masks and a
``references.jsonl`` of textual descriptions per category.

Defect types: ``scratch`` (thin straight line, dark or bright), ``hole`` (dark round pit), ``crack`` (thin
dark jagged line with branches), ``stain`` (diffuse coloured blotch), ``contamination`` (a patch of foreign
texture), ``missing_part`` (a region where the texture is gone) and ``deformation`` (a local warp).

Guarantees: the mask is exactly the set of pixels whose value changed (outside it the output equals the input
byte for byte), it is never empty, and the reference's ``bbox``, ``area_fraction`` and ``location`` are
computed from that mask. The same seed gives byte-identical files.

A reference is a dict::

    {"image_id": "test/scratch/000.png", "defect_type": "scratch", "location": "upper left",
     "bbox": [x0, y0, x1, y1],            # end-exclusive pixel box of the mask
     "area_fraction": 0.0042,             # mask pixels / image pixels
     "size_words": "small",               # small < 1 % <= medium < 5 % <= large
     "appearance": "darker than its surroundings, a thin straight line running diagonally",
     "text": "A small scratch in the upper left of the image (0.4% of its area): darker than ...",
     "centroid": [cx, cy]}                # mean pixel column and row of the mask
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Union

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.data.images import load_image, save_png
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.vocabulary import (
    SIZE_WORDS,
    location_word,
    orientation_adverb,
    orientation_word,
    principal_axes,
    size_word,
)

__all__ = [
    "BUILTIN_SOURCES",
    "DEFECT_TYPES",
    "describe_defect",
    "generate_dataset",
    "load_source",
    "make_defect",
    "random_crop",
    "read_references",
]

PathLikeStr = Union[str, PathLike]

DEFECT_TYPES: tuple[str, ...] = (
    "scratch",
    "hole",
    "crack",
    "stain",
    "contamination",
    "missing_part",
    "deformation",
)
BUILTIN_SOURCES: tuple[str, ...] = ("brick", "grass", "gravel")

# target area-fraction ranges the generator aims at for each size word
_TARGET_AREA = {"small": (0.003, 0.008), "medium": (0.013, 0.04), "large": (0.06, 0.12)}
_TYPE_NAMES = {"missing_part": "missing part"}
_GENERATOR_VERSION = 1
_MIN_PIXELS = 12
_NUDGE = 3  # intensity step given to region pixels the effect happened to leave unchanged

Reference = dict[str, Any]


# ---------------------------------------------------------------------------------------------- words
def _percent(fraction: float) -> str:
    pct = 100.0 * fraction
    return f"{pct:.1f}%" if pct < 10 else f"{pct:.0f}%"


def _orientation_word(mask: np.ndarray) -> str | None:
    """The reference adverb ("horizontally", ...) of a line-like mask (principal axes ratio >= 3), else None."""
    axes = principal_axes(mask)
    return None if axes is None else orientation_adverb(orientation_word(axes[1], axes[0], min_elongation=3.0))


def _shape_phrase(mask: np.ndarray) -> str:
    """A geometric description of a mask (for masks not made by the generator)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return "a tiny spot"
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    evals = np.clip(np.linalg.eigvalsh(cov), 1e-9, None)
    ratio = math.sqrt(evals[1] / evals[0])
    fill = len(xs) / (math.pi * 4.0 * math.sqrt(evals[0] * evals[1]))  # area / ellipse area
    if ratio >= 4.0:
        orient = _orientation_word(mask)
        thin = math.sqrt(12.0 * evals[0]) < 6.0  # a bar of width t has variance t**2 / 12 across it
        shape = "a thin line" if thin else "an elongated region"
        return f"{shape} running {orient}" if orient else shape
    if ratio < 1.6 and fill > 0.8:
        return "a roughly round region"
    return "an irregular region"


def _brightness_phrase(image: np.ndarray, mask: np.ndarray) -> str:
    from scipy import ndimage

    gray = image.astype(np.float32).mean(axis=2)
    width = max(2, min(mask.shape) // 32)
    ring = ndimage.binary_dilation(mask, iterations=width) & ~mask
    if not ring.any():
        ring = ~mask
    if not ring.any():
        return "covering the whole image"
    diff = float(gray[mask].mean() - gray[ring].mean())
    # a textured background varies by itself: ask for a clear difference relative to its spread
    level = max(12.0, 0.5 * float(gray[ring].std()))
    if diff < -level:
        return "darker than its surroundings"
    if diff > level:
        return "brighter than its surroundings"
    return "similar in brightness to its surroundings"


def describe_defect(
    mask: np.ndarray,
    image: np.ndarray | None = None,
    defect_type: str = "defect",
    *,
    image_id: str = "",
    shape: str | None = None,
) -> Reference:
    """The reference dict of a defect mask (works for any mask, e.g. MVTec ground truth).

    Args:
        mask: (H, W) bool mask of the defect; must not be empty.
        image: the defective image, used for the brightness words (left out when None).
        defect_type: the defect's type name.
        image_id: copied into the reference.
        shape: the shape phrase; derived from the mask geometry when None.

    Raises:
        DataError: the mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise DataError(f"cannot describe an empty defect mask (image {image_id or '?'})")
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    area = float(mask.sum()) / float(h * w)
    cx, cy = float(xs.mean()), float(ys.mean())
    location = location_word(cx, cy, w, h)
    size = size_word(area)
    shape = shape if shape is not None else _shape_phrase(mask)
    parts = [_brightness_phrase(image, mask)] if image is not None else []
    appearance = ", ".join([*parts, shape])
    name = _TYPE_NAMES.get(defect_type, defect_type.replace("_", " "))
    text = f"A {size} {name} in the {location} of the image ({_percent(area)} of its area): {appearance}."
    return {
        "image_id": image_id,
        "defect_type": defect_type,
        "location": location,
        "bbox": bbox,
        "area_fraction": round(area, 6),
        "size_words": size,
        "appearance": appearance,
        "text": text,
        "centroid": [round(cx, 2), round(cy, 2)],
    }


def _good_reference(image_id: str) -> Reference:
    return {
        "image_id": image_id,
        "defect_type": "good",
        "location": None,
        "bbox": None,
        "area_fraction": 0.0,
        "size_words": None,
        "appearance": None,
        "text": "No defect: the texture is uniform and intact.",
        "centroid": None,
    }


# ---------------------------------------------------------------------------------------------- geometry
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.float32), xx.astype(np.float32)


def _blob_field(
    h: int, w: int, centre: tuple[float, float], radii: tuple[float, float], angle: float, rough: float, rng
) -> np.ndarray:
    """Normalised radius of a wobbly ellipse: < 1 inside, 0 at the centre."""
    yy, xx = _grid(h, w)
    cy, cx = centre
    c, s = math.cos(angle), math.sin(angle)
    u = ((xx - cx) * c + (yy - cy) * s) / radii[0]
    v = (-(xx - cx) * s + (yy - cy) * c) / radii[1]
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    bound = np.ones_like(rho)
    for k in range(2, 6):
        bound += rough * rng.uniform(-1, 1) / k * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    return rho / np.maximum(bound, 0.3)


def _place(h: int, w: int, margin: float, rng) -> tuple[float, float]:
    """A centre (row, col) keeping ``margin`` pixels from the border when the image allows it."""
    my, mx = min(margin, h / 2 - 1), min(margin, w / 2 - 1)
    return float(rng.uniform(my, h - 1 - my)), float(rng.uniform(mx, w - 1 - mx))


def _polyline_distance(points: np.ndarray, h: int, w: int, pad: float) -> np.ndarray:
    """Distance of every pixel to a polyline ``points`` (N, 2) as (x, y); inf far from its box."""
    dist = np.full((h, w), np.inf, dtype=np.float32)
    x0 = max(int(math.floor(points[:, 0].min() - pad)), 0)
    x1 = min(int(math.ceil(points[:, 0].max() + pad)) + 1, w)
    y0 = max(int(math.floor(points[:, 1].min() - pad)), 0)
    y1 = min(int(math.ceil(points[:, 1].max() + pad)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return dist
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    best = np.full(yy.shape, np.inf, dtype=np.float32)
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:], strict=True):
        dx, dy = bx - ax, by - ay
        seg = dx * dx + dy * dy
        t = np.zeros_like(xx) if seg == 0 else np.clip(((xx - ax) * dx + (yy - ay) * dy) / seg, 0.0, 1.0)
        d = np.hypot(xx - (ax + t * dx), yy - (ay + t * dy))
        np.minimum(best, d, out=best)
    dist[y0:y1, x0:x1] = best
    return dist


def _target_area(h: int, w: int, size: str | None, rng) -> float:
    if size is None:
        size = SIZE_WORDS[int(rng.integers(0, 3))]
    if size not in _TARGET_AREA:
        raise ConfigError(f"size must be one of {', '.join(SIZE_WORDS)} or None, got {size!r}")
    lo, hi = _TARGET_AREA[size]
    return max(float(rng.uniform(lo, hi)) * h * w, float(_MIN_PIXELS) * 1.5)


# ---------------------------------------------------------------------------------------------- defects
# each painter returns (region, painted float image, shape phrase); pixels outside region are ignored


def _paint_scratch(img: np.ndarray, area: float, rng, foreign) -> tuple[np.ndarray, np.ndarray, str]:
    h, w = img.shape[:2]
    s = min(h, w)
    width = float(rng.uniform(1.2, 3.0)) * max(1.0, s / 256.0)
    length = float(np.clip(area / width, 0.15 * s, 0.95 * s))
    theta = float(rng.uniform(0, math.pi))
    d = np.array([math.cos(theta), math.sin(theta)])
    cy, cx = _place(h, w, 0.1 * s, rng)
    lim = []
    for comp, c, size in ((d[0], cx, w), (d[1], cy, h)):
        if abs(comp) > 1e-6:
            lim.append(min((c - 1) / abs(comp), (size - 2 - c) / abs(comp)))
    half = max(min([length / 2, *lim]), 0.0)
    bow = float(rng.uniform(-0.08, 0.08)) * 2 * half  # a slight curve
    u = np.linspace(-1.0, 1.0, 9)
    normal = np.array([-d[1], d[0]])
    pts = np.array([cx, cy]) + u[:, None] * half * d + (1 - u[:, None] ** 2) * bow * normal
    pts[:, 0] = np.clip(pts[:, 0], 0, w - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, h - 1)
    dist = _polyline_distance(pts, h, w, width)
    region = dist <= width / 2
    strength = float(rng.uniform(0.45, 0.75)) * (1 - 0.5 * (np.minimum(dist, width / 2) / (width / 2)) ** 2)
    strength = np.where(region, strength, 0.0)[..., None]
    f = img.astype(np.float32)
    bright = bool(rng.integers(0, 2))
    out = f + (255.0 - f) * strength if bright else f * (1.0 - strength)
    return region, out, "a thin straight line"


def _paint_hole(img: np.ndarray, area: float, rng, foreign) -> tuple[np.ndarray, np.ndarray, str]:
    h, w = img.shape[:2]
    ratio = float(rng.uniform(0.75, 1.0))
    r = math.sqrt(area / (math.pi * ratio))
    centre = _place(h, w, r + 1, rng)
    q = _blob_field(h, w, centre, (r, r * ratio), float(rng.uniform(0, math.pi)), 0.06, rng)
    region = q < 1.0
    factor = (0.1 + 0.45 * np.clip(q, 0, 1) ** 2)[..., None]
    out = img.astype(np.float32) * factor
    return region, out, "a roughly round pit"


def _paint_crack(img: np.ndarray, area: float, rng, foreign) -> tuple[np.ndarray, np.ndarray, str]:
    h, w = img.shape[:2]
    s = min(h, w)
    width = float(rng.uniform(1.0, 2.2)) * max(1.0, s / 256.0)
    length = float(np.clip(area / width / 1.3, 0.25 * s, 1.2 * s))
    step = max(1.5, s / 64.0)

    def walk(start: np.ndarray, heading: float, total: float) -> np.ndarray:
        pts = [start.copy()]
        p = start.copy()
        for _ in range(max(2, int(total / step))):
            heading += float(rng.normal(0.0, 0.35))
            p = p + step * np.array([math.cos(heading), math.sin(heading)])
            if not (0 <= p[0] <= w - 1 and 0 <= p[1] <= h - 1):
                break
            pts.append(p.copy())
        return np.array(pts)

    cy, cx = _place(h, w, 0.2 * s, rng)
    heading = float(rng.uniform(0, 2 * math.pi))
    main = walk(np.array([cx, cy]), heading, length)
    paths = [main]
    for _ in range(int(rng.integers(1, 3))):
        if len(main) < 4:
            break
        k = int(rng.integers(1, len(main) - 1))
        seg = main[k] - main[k - 1]
        base = math.atan2(seg[1], seg[0])
        turn = float(rng.uniform(0.5, 1.1)) * (1 if rng.integers(0, 2) else -1)
        paths.append(walk(main[k], base + turn, float(rng.uniform(0.2, 0.4)) * length))
    dist = np.full((h, w), np.inf, dtype=np.float32)
    for path in paths:
        if len(path) >= 2:
            dist = np.minimum(dist, _polyline_distance(path, h, w, width))
    region = dist <= width / 2
    out = img.astype(np.float32) * float(rng.uniform(0.2, 0.4))
    return region, out, "a thin jagged line with branches"


_STAIN_COLOURS = (("brownish", (110.0, 70.0, 35.0)), ("dark grey", (45.0, 45.0, 45.0)), ("yellowish", (200, 170, 60)))


def _paint_stain(img: np.ndarray, area: float, rng, foreign) -> tuple[np.ndarray, np.ndarray, str]:
    h, w = img.shape[:2]
    ratio = float(rng.uniform(0.5, 1.0))
    r = math.sqrt(area / (math.pi * ratio))
    centre = _place(h, w, r, rng)
    q = _blob_field(h, w, centre, (r, r * ratio), float(rng.uniform(0, math.pi)), 0.18, rng)
    region = q < 1.0
    name, colour = _STAIN_COLOURS[int(rng.integers(0, len(_STAIN_COLOURS)))]
    soft = np.clip(1.0 - q, 0.0, 1.0)
    soft = soft * soft * (3 - 2 * soft)  # smoothstep: soft edges
    alpha = (0.25 + float(rng.uniform(0.3, 0.5)) * soft)[..., None]
    out = img.astype(np.float32) * (1 - alpha) + np.array(colour, dtype=np.float32) * alpha
    return region, out, f"a diffuse {name} blotch with soft edges"


def _procedural_texture(h: int, w: int, base: float, rng) -> tuple[np.ndarray, str]:
    from scipy import ndimage

    kind = ("granular", "fibrous")[int(rng.integers(0, 2))]
    if kind == "granular":
        t = ndimage.gaussian_filter(rng.normal(size=(h, w)), 1.0)
    else:
        yy, xx = _grid(h, w)
        phi = float(rng.uniform(0, math.pi))
        period = float(rng.uniform(3.0, 7.0))
        wobble = ndimage.gaussian_filter(rng.normal(size=(h, w)), 3.0) * 20.0
        t = np.sin(2 * math.pi * (xx * math.cos(phi) + yy * math.sin(phi)) / period + wobble)
    t = (t - t.mean()) / (t.std() + 1e-6)
    tint = rng.uniform(0.6, 1.0, size=3)
    rgb = np.clip(base + 45.0 * t[..., None], 0, 255) * tint
    return rgb.astype(np.float32), kind


def _paint_contamination(img: np.ndarray, area: float, rng, foreign) -> tuple[np.ndarray, np.ndarray, str]:
    h, w = img.shape[:2]
    ratio = float(rng.uniform(0.5, 1.0))
    r = math.sqrt(area / (math.pi * ratio))
    centre = _place(h, w, r, rng)
    q = _blob_field(h, w, centre, (r, r * ratio), float(rng.uniform(0, math.pi)), 0.28, rng)
    region = q < 1.0
    mean = float(img.mean())
    if foreign is not None:
        patch = random_crop([np.asarray(foreign)], (h, w), rng).astype(np.float32)
        shift = 50.0 if mean < 128 else -50.0  # keep it distinguishable from the host
        out = np.clip(patch + shift, 0, 255)
        kind = "foreign"
    else:
        base = mean + (70.0 if mean < 128 else -70.0)
        out, kind = _procedural_texture(h, w, base, rng)
    return region, out, f"a patch of {kind} material with a texture unlike the rest"


def _paint_missing_part(img: np.ndarray, area: float, rng, foreign) -> tuple[np.ndarray, np.ndarray, str]:
    from skimage.draw import polygon

    h, w = img.shape[:2]
    r = math.sqrt(area / math.pi)
    at_edge = rng.uniform() < 0.4
    if at_edge:  # a chipped edge: centre on the border, so about half of the polygon is cut off
        r *= math.sqrt(2.0)
        side = int(rng.integers(0, 4))
        along = float(rng.uniform(0.15, 0.85))
        cy, cx = [
            (0.0, along * (w - 1)),
            (h - 1.0, along * (w - 1)),
            (along * (h - 1), 0.0),
            (along * (h - 1), w - 1.0),
        ][side]
    else:
        cy, cx = _place(h, w, r * 1.2, rng)
    n = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
    radii = r * rng.uniform(0.7, 1.3, size=n)
    rows = cy + radii * np.sin(angles)
    cols = cx + radii * np.cos(angles)
    rr, cc = polygon(rows, cols, shape=(h, w))
    region = np.zeros((h, w), dtype=bool)
    region[rr, cc] = True
    if rng.uniform() < 0.6:
        level = float(rng.uniform(5, 30))
        out = np.full(img.shape, level, dtype=np.float32)
        phrase = "a region where the material is missing, showing a flat dark background with a jagged edge"
    else:
        out = np.broadcast_to(img.reshape(-1, 3).mean(axis=0).astype(np.float32), img.shape).copy()
        phrase = "a smooth featureless patch where the texture is missing"
    return region, out, phrase


def _paint_deformation(img: np.ndarray, area: float, rng, foreign) -> tuple[np.ndarray, np.ndarray, str]:
    from scipy import ndimage

    h, w = img.shape[:2]
    r = max(math.sqrt(area / math.pi), 3.0)
    cy, cx = _place(h, w, r, rng)
    yy, xx = _grid(h, w)
    dx, dy = xx - cx, yy - cy
    rho = np.sqrt(dx * dx + dy * dy)
    inside = rho < r
    fall = np.where(inside, (1.0 - rho / r) ** 2, 0.0)
    if rng.uniform() < 0.5:
        twist = float(rng.uniform(1.5, 3.0)) * (1 if rng.integers(0, 2) else -1)
        ang = twist * fall
        c, s = np.cos(ang), np.sin(ang)
        sx, sy = cx + c * dx - s * dy, cy + s * dx + c * dy
        shift = rho * np.abs(2 * np.sin(ang / 2))
        phrase = "a locally warped, swirled region where the pattern is twisted"
    else:
        k = float(rng.uniform(0.4, 0.7)) * (1 if rng.integers(0, 2) else -1)  # >0 bulge, <0 pinch
        scale = 1.0 - k * fall
        sx, sy = cx + dx * scale, cy + dy * scale
        shift = rho * np.abs(k * fall)
        phrase = "a locally warped region where the pattern " + ("bulges outwards" if k > 0 else "is pinched inwards")
    channels = [img[..., ch].astype(np.float32) for ch in range(3)]
    out = np.stack([ndimage.map_coordinates(c, [sy, sx], order=1, mode="reflect") for c in channels], axis=-1)
    region = inside & ((shift >= 0.5) | (rho < r / 2))
    return region, out, phrase


_PAINTERS = {
    "scratch": _paint_scratch,
    "hole": _paint_hole,
    "crack": _paint_crack,
    "stain": _paint_stain,
    "contamination": _paint_contamination,
    "missing_part": _paint_missing_part,
    "deformation": _paint_deformation,
}


def _nudge(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.int16)
    return np.where(v >= _NUDGE, v - _NUDGE, v + _NUDGE).astype(np.uint8)


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ConfigError(f"images must be uint8, got dtype {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ConfigError(f"images must be (H, W) or (H, W, 3) uint8, got shape {img.shape}")
    return np.ascontiguousarray(img)


def make_defect(
    image: np.ndarray,
    defect_type: str | None,
    rng: np.random.Generator | int | None = None,
    *,
    image_id: str = "",
    size: str | None = None,
    foreign: np.ndarray | None = None,
    max_tries: int = 20,
) -> tuple[np.ndarray, np.ndarray, Reference]:
    """Paint one synthetic defect into a copy of ``image``.

    Args:
        image: (H, W, 3) or (H, W) uint8 normal image (at least 16 x 16).
        defect_type: one of :data:`DEFECT_TYPES`, or None for a random one.
        rng: a ``numpy.random.Generator`` (advanced in place) or a seed.
        image_id: copied into the reference.
        size: ``"small"``, ``"medium"`` or ``"large"`` target size; random when None. The reference's
            ``size_words`` is measured from the final mask, so it can differ for thin defects.
        foreign: an image whose texture ``contamination`` pastes; a procedural texture when None.
        max_tries: attempts at a defect that fits (a non-empty mask of at least 12 pixels).

    Returns:
        ``(defective image (H, W, 3) uint8, mask (H, W) bool, reference dict)``; the mask is exactly the set of
        changed pixels.

    Raises:
        ConfigError: an unknown defect type or size, a non-uint8 or too small image.
    """
    img = _as_rgb(image)
    h, w = img.shape[:2]
    if min(h, w) < 16:
        raise ConfigError(f"images must be at least 16 x 16 pixels for synthetic defects, got {w} x {h}")
    gen = _as_rng(rng)
    if defect_type is None:
        defect_type = DEFECT_TYPES[int(gen.integers(0, len(DEFECT_TYPES)))]
    if defect_type not in _PAINTERS:
        raise ConfigError(f"unknown defect type {defect_type!r}; choose from {', '.join(DEFECT_TYPES)}")
    for _ in range(max_tries):
        area = _target_area(h, w, size, gen)
        region, painted, shape = _PAINTERS[defect_type](img, area, gen, foreign)
        n = int(region.sum())
        if n < _MIN_PIXELS or n > 0.6 * h * w:
            continue
        out = img.copy()
        out[region] = np.clip(np.rint(painted[region]), 0, 255).astype(np.uint8)
        same = region & np.all(out == img, axis=2)
        out[same] = _nudge(img[same])
        mask = region
        if shape == "a thin straight line" or defect_type == "crack":
            orient = _orientation_word(mask)
            if orient:
                shape = f"{shape} running {orient}"
        ref = describe_defect(mask, out, defect_type, image_id=image_id, shape=shape)
        return out, mask, ref
    raise DataError(
        f"could not place a {defect_type} defect in a {w} x {h} image in {max_tries} tries; use a larger image"
    )


# ---------------------------------------------------------------------------------------------- sources
def load_source(source: str | PathLikeStr | Sequence[str | PathLikeStr]) -> list[np.ndarray]:
    """The normal images of a source: a scikit-image texture name (``brick``, ``grass``, ``gravel``), an image
    file, a folder of images (not recursive), or a list of these. Returns (H, W, 3) uint8 arrays.

    Raises:
        ConfigError: an unknown name or a path that does not exist.
        EmptyDatasetError: a folder without images.
    """
    if isinstance(source, str) and source in BUILTIN_SOURCES:
        import skimage.data

        gray = getattr(skimage.data, source)()
        return [np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=2)]
    if not isinstance(source, (str, PathLike)):
        images = [im for s in source for im in load_source(s)]
        if not images:
            raise ConfigError("an empty list of sources; pass at least one image, folder or texture name")
        return images
    path = Path(source)
    if path.is_file():
        return [load_image(path)]
    if path.is_dir():
        from vlm_ad.data.mvtec import ImageFolder

        return [s.image for s in ImageFolder(path)]
    raise ConfigError(
        f"source {str(source)!r} is neither a built-in texture ({', '.join(BUILTIN_SOURCES)}) nor an existing "
        "image file or folder"
    )


def random_crop(images: Sequence[np.ndarray], size: int | tuple[int, int], rng) -> np.ndarray:
    """A random ``size`` crop of a random image of ``images``, mirror-tiled first when the image is smaller."""
    hh, ww = (size, size) if isinstance(size, (int, np.integer)) else size
    gen = _as_rng(rng)
    img = _as_rgb(images[int(gen.integers(0, len(images)))])
    h, w = img.shape[:2]
    if h < hh or w < ww:
        reps = (max(1, math.ceil(hh / h)), max(1, math.ceil(ww / w)))
        row = np.concatenate([img if j % 2 == 0 else img[:, ::-1] for j in range(reps[1])], axis=1)
        img = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(reps[0])], axis=0)
        h, w = img.shape[:2]
    y = int(gen.integers(0, h - hh + 1))
    x = int(gen.integers(0, w - ww + 1))
    return np.ascontiguousarray(img[y : y + hh, x : x + ww])


def _category_name(source: str | PathLikeStr) -> str:
    if isinstance(source, str) and source in BUILTIN_SOURCES:
        return source
    p = Path(source)
    name = p.stem if p.is_file() else p.name
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return safe or "source"


def _source_label(source: Any) -> str | list[str]:
    if isinstance(source, (str, PathLike)):
        return str(source)
    return [str(s) for s in source]


def _rng_for(seed: int, *keys: str | int) -> np.random.Generator:
    words = [seed] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(words)


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def generate_dataset(
    out_dir: PathLikeStr,
    *,
    sources: Sequence[str | PathLikeStr] = BUILTIN_SOURCES,
    n_train: int = 20,
    n_test_good: int = 10,
    n_test_per_type: int = 5,
    types: Sequence[str] = DEFECT_TYPES,
    image_size: int = 256,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write one MVTec-layout category folder of synthetic defects per source.

    For each source ``<out_dir>/<category>/`` gets ``train/good/000.png...``, ``test/good/...``,
    ``test/<type>/000.png...``, ``ground_truth/<type>/000_mask.png...`` (0/255 PNG), ``references.jsonl``
    (one reference per test image, ``good`` ones included, sorted by ``image_id`` = path relative to the
    category folder, as :class:`~vlm_ad.data.MVTecDataset` names them) and ``dataset.json`` (the parameters).
    Every file is written atomically. Each image has its own seeded generator (from ``seed``, the category,
    the folder and the index), so the same arguments give byte-identical files and changing one count does
    not change the other images.

    Args:
        out_dir: output folder; must be empty or missing unless ``overwrite``.
        sources: texture names (``brick``, ``grass``, ``gravel``) and/or paths to normal images: an image file
            or a folder of them per category (the category is named after the file stem or folder name).
        n_train: normal training images per category.
        n_test_good: normal test images per category.
        n_test_per_type: defective test images per defect type and category.
        types: defect types to generate (see :data:`DEFECT_TYPES`).
        image_size: side of the square images (crops of the source, mirror-tiled when it is smaller).
        seed: non-negative seed.
        overwrite: allow a non-empty ``out_dir``; the category folders about to be written are replaced,
            anything else in ``out_dir`` is left alone.

    Returns:
        Category name -> category folder (pass it to ``MVTecDataset``).

    Raises:
        ConfigError: bad arguments, or a non-empty ``out_dir`` without ``overwrite``.
    """
    out = Path(out_dir)
    n_train = _check_count("n_train", n_train, 1)
    n_test_good = _check_count("n_test_good", n_test_good, 0)
    n_test_per_type = _check_count("n_test_per_type", n_test_per_type, 0)
    image_size = _check_count("image_size", image_size, 16)
    seed = _check_count("seed", seed, 0)
    types = list(types)
    unknown = [t for t in types if t not in _PAINTERS]
    if unknown:
        raise ConfigError(f"unknown defect type(s) {unknown}; choose from {', '.join(DEFECT_TYPES)}")
    if len(set(types)) != len(types):
        raise ConfigError(f"defect types repeat in {types}")
    if isinstance(sources, (str, PathLike)):
        sources = [sources]
    if isinstance(sources, Mapping):
        names = [str(k) for k in sources]
        sources = list(sources.values())
    else:
        sources = list(sources)
        names = [_category_name(s) for s in sources]
    if not sources:
        raise ConfigError("sources is empty; pass texture names (brick, grass, gravel) or image paths")
    bad = [n for n in names if not n or n in (".", "..") or "/" in n or "\\" in n]
    if bad:
        raise ConfigError(f"category names must be plain folder names, got {bad}")
    if len(set(names)) != len(names):
        raise ConfigError(f"two sources give the same category name: {names}; rename a file or folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"out_dir {out} is not empty; pass overwrite=True (the CLI: --overwrite) or another folder")
    pools = [load_source(s) for s in sources]
    written: dict[str, Path] = {}
    width = max(3, len(str(max(n_train, n_test_good, n_test_per_type, 1) - 1)))
    for ci, (name, pool) in enumerate(zip(names, pools, strict=True)):
        cat = out / name
        if cat.exists():
            shutil.rmtree(cat)
        others = [p for j, p in enumerate(pools) if j != ci]
        refs: list[Reference] = []
        for i in range(n_train):
            crop = random_crop(pool, image_size, _rng_for(seed, name, "train", i))
            save_png(cat / "train" / "good" / f"{i:0{width}d}.png", crop)
        for i in range(n_test_good):
            rel = f"test/good/{i:0{width}d}.png"
            save_png(cat / rel, random_crop(pool, image_size, _rng_for(seed, name, "test/good", i)))
            refs.append(_good_reference(rel))
        for dtype in types:
            for i in range(n_test_per_type):
                rng = _rng_for(seed, name, dtype, i)
                normal = random_crop(pool, image_size, rng)
                foreign = None
                if dtype == "contamination" and others:
                    foreign = random_crop(others[int(rng.integers(0, len(others)))], image_size, rng)
                rel = f"test/{dtype}/{i:0{width}d}.png"
                image, mask, ref = make_defect(normal, dtype, rng, image_id=rel, foreign=foreign)
                save_png(cat / rel, image)
                save_png(cat / "ground_truth" / dtype / f"{i:0{width}d}_mask.png", mask)
                refs.append(ref)
        refs.sort(key=lambda r: r["image_id"])
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refs)
        atomic_write_bytes(cat / "references.jsonl", lines.encode("utf-8"))
        meta = {
            "generator": "vlm_ad.data.synthetic",
            "version": _GENERATOR_VERSION,
            "source": _source_label(sources[ci]),
            "seed": seed,
            "image_size": image_size,
            "n_train": n_train,
            "n_test_good": n_test_good,
            "n_test_per_type": n_test_per_type,
            "types": types,
        }
        atomic_write_bytes(cat / "dataset.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        written[name] = cat
    return written


def read_references(path: PathLikeStr) -> list[Reference]:
    """Read a ``references.jsonl`` file (or the category folder holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "references.jsonl"
    if not p.is_file():
        raise DataError(f"{p} does not exist; generate_dataset writes one per category folder")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
