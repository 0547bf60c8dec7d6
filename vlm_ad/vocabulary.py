"""The words vlm-ad uses for where, how large and which way: shared by the synthetic references, the evidence and
the explanation scores, so that a reference and an explanation can only agree or disagree on the same words."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["LOCATION_WORDS", "ORIENTATION_WORDS", "SIZE_THRESHOLDS", "SIZE_WORDS", "location_word",
           "orientation_adverb", "orientation_word", "principal_axes", "size_word"]

#: 3x3 grid of location words, indexed ``[row][column]`` (row 0 = top, column 0 = left)
LOCATION_WORDS: tuple[tuple[str, str, str], ...] = (
    ("upper left", "top centre", "upper right"),
    ("centre left", "centre", "centre right"),
    ("lower left", "bottom centre", "lower right"),
)
SIZE_WORDS: tuple[str, ...] = ("small", "medium", "large")
#: area-fraction thresholds between small/medium and medium/large
SIZE_THRESHOLDS: tuple[float, float] = (0.01, 0.05)
#: orientation adjective -> the adverb used in reference sentences ("running horizontally")
ORIENTATION_WORDS: dict[str, str] = {
    "horizontal": "horizontally",
    "vertical": "vertically",
    "diagonal (upper left to lower right)": "diagonally from upper left to lower right",
    "diagonal (lower left to upper right)": "diagonally from lower left to upper right",
}


def location_word(cx: float, cy: float, width: int, height: int) -> str:
    """The 3x3-grid word of a point given as pixel column ``cx`` and row ``cy`` (e.g. a mask centroid).

    The image is cut in thirds; pixel ``i`` covers ``[i, i + 1)``, so its centre is at ``i + 0.5``.
    """
    col = min(max(int(3.0 * (cx + 0.5) / width), 0), 2)
    row = min(max(int(3.0 * (cy + 0.5) / height), 0), 2)
    return LOCATION_WORDS[row][col]


def size_word(area_fraction: float) -> str:
    """``"small"`` below 1 % of the image, ``"medium"`` below 5 %, else ``"large"``."""
    if area_fraction < SIZE_THRESHOLDS[0]:
        return "small"
    return "medium" if area_fraction < SIZE_THRESHOLDS[1] else "large"


def principal_axes(mask: np.ndarray) -> tuple[float, float, float] | None:
    """(elongation, orientation in degrees, fill) of a bool mask, or None below 3 pixels.

    Elongation is the ratio of the principal axes (1 = round); the angle of the major axis is 0 for horizontal
    and 90 for vertical (image rows go down); fill is the area over the area of the axes' ellipse.
    """
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return None
    evals, evecs = np.linalg.eigh(np.cov(np.stack([xs, ys]).astype(np.float64)) + 1e-6 * np.eye(2))
    elongation = math.sqrt(max(evals[1], 1e-9) / max(evals[0], 1e-9))
    deg = math.degrees(math.atan2(evecs[1, 1], evecs[0, 1])) % 180.0
    fill = len(xs) / (math.pi * 4.0 * math.sqrt(max(evals[0] * evals[1], 1e-9)))
    return elongation, deg, fill


def orientation_word(deg: float, elongation: float, *, min_elongation: float = 1.5) -> str:
    """"horizontal", "vertical" or a diagonal (see :data:`ORIENTATION_WORDS`); "none" below ``min_elongation``."""
    if elongation < min_elongation:
        return "none"
    if deg < 22.5 or deg >= 157.5:
        return "horizontal"
    if 67.5 <= deg < 112.5:
        return "vertical"
    return "diagonal (upper left to lower right)" if deg < 90 else "diagonal (lower left to upper right)"


def orientation_adverb(word: str) -> str | None:
    """The reference-sentence form of an orientation word ("horizontal" -> "horizontally"); None for "none"."""
    return ORIENTATION_WORDS.get(word)
