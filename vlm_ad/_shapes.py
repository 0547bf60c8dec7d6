"""Shapes both the torch path and the torch-free exported runtime compute alike: an image's backbone input and a
patch grid's smoothing work grid. No torch here (:mod:`vlm_ad.runtime` imports it), so the two paths share one
definition instead of a copy kept equal by a test."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["input_shape", "point_grid", "work_shape"]


def input_shape(mode: str, size: int, multiple: int, height: int, width: int, *,
                shape: Sequence[int] | None = None, min_side: int | None = None,
                max_downscale: int | None = None) -> tuple[int, int]:
    """The (H, W) input an image of ``height`` x ``width`` pixels is resized to under a geometry (``mode``
    ``aspect``/``area``/``square``, ``size``, sides a multiple of ``multiple``, the short side of ``aspect``/``area``
    grown to at least ``min_side`` and the long side to at least the image's long side over ``max_downscale``, the
    long side at most ``4 * size``; a fixed ``shape`` overrides them; see :mod:`vlm_ad.backbones.geometry`)."""
    if shape is not None:
        return (int(shape[0]), int(shape[1]))
    if mode == "square":
        return (size, size)
    m, ratio = multiple, max(height, width) / max(min(height, width), 1)  # >= 1
    long_side = size if mode == "aspect" else min(4 * size, size * math.sqrt(ratio))
    if min_side:  # an elongated image is not seen thinner than min_side across
        long_side = max(long_side, min(4 * size, min_side * ratio))
    if max_downscale:  # a large image is not shrunk more than max_downscale times
        long_side = max(long_side, min(4 * size, max(height, width) / max_downscale))
    long_side = max(m, int(round(long_side / m)) * m)
    short = max(m, int(round(long_side / ratio / m)) * m)
    return (long_side, short) if height >= width else (short, long_side)


def describe_input(mode: str, size: int, *, min_side: int | None = None, max_downscale: int | None = None,
                   tile: int | None = None) -> str:
    """An input geometry in words, e.g. ``"area 280 px, short side at least 224 px, shrunk at most 3x"`` (the torch
    path's :meth:`~vlm_ad.backbones.geometry.Geometry.describe` and the exported runtime's summary say the same)."""
    return f"{mode} {size} px" + (f", short side at least {min_side} px" if min_side else "") \
        + (f", shrunk at most {max_downscale}x" if max_downscale else "") + (f", tiles of {tile} px" if tile else "")


def work_shape(grid_hw: Sequence[int], *, work: int = 256) -> tuple[int, int]:
    """The smoothing work grid of an (h, w) patch grid: the same aspect ratio, long side ``work`` (or 8 pixels per
    patch when the grid is finer than that, e.g. a tiled large image)."""
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    long_side = max(work, 8 * max(gh, gw))
    short = max(1, int(round(long_side * min(gh, gw) / max(gh, gw))))
    return (long_side, short) if gh >= gw else (short, long_side)


def describe_pool(pool: int | Sequence[int]) -> str:
    """How a detector pools its layers, for its summary line: empty for the default 3 x 3 on every layer."""
    pools = [int(p) for p in np.atleast_1d(pool)]
    if set(pools) == {3}:
        return ""
    return ", pooling " + " / ".join(f"{p} x {p}" if p > 1 else "none" for p in pools)


def point_grid(grid_hw: Sequence[int], pool: int) -> np.ndarray:
    """An (h, w) patch-score grid of one anomalous patch in the middle: its ``pool`` x ``pool`` pooling window of
    ones (one patch's feature reaches that far), zeros elsewhere. Smoothed and resized as every map is, it is the
    map's point spread (:meth:`vlm_ad.detectors.base.Detector.point_spread`)."""
    gh, gw, r = int(grid_hw[0]), int(grid_hw[1]), max(int(pool), 1) // 2
    grid = np.zeros((gh, gw), np.float32)
    grid[max(0, gh // 2 - r) : gh // 2 + r + 1, max(0, gw // 2 - r) : gw // 2 + r + 1] = 1.0
    return grid


def ring_index(grid_hw: Sequence[int], rings: int) -> np.ndarray:
    """(h, w) int64: each cell's distance in cells to the grid's border, ``rings`` for cells further in (PatchCore's
    border rings, ``vlm_ad.detectors.patchcore``)."""
    h, w = int(grid_hw[0]), int(grid_hw[1])
    r, c = np.arange(h)[:, None], np.arange(w)[None]
    d = np.minimum(np.minimum(r, h - 1 - r), np.minimum(c, w - 1 - c))
    return np.minimum(d, int(rings)).astype(np.int64)
