"""``build_evidence``: anomaly map + retrieval hits + pixels -> :class:`~vlm_ad.evidence.Evidence`."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Protocol, Union

import numpy as np

from vlm_ad.errors import ConfigError
from vlm_ad.evidence.types import (
    Contrast,
    DefectNameEvidence,
    Evidence,
    RegionEvidence,
    ScoreEvidence,
    Shape,
)
from vlm_ad.types import AnomalyMap, ExemplarHit
from vlm_ad.vocabulary import location_word, orientation_word, principal_axes

__all__ = ["CORE_LEVEL", "Namer", "build_evidence", "defect_share", "effective_area", "region_core",
           "region_shape"]

#: a region's core: its pixels above this share of the way from the map's median to the region's peak (chosen on the
#: synthetic dev suite for the size and type answers; magnetic_tile held out: eval/results/qa_rules.md)
CORE_LEVEL = 0.7
PointSpread = Callable[[tuple[int, int]], "np.ndarray | None"]

ExemplarLoader = Callable[[str], "np.ndarray | None"]
GridShape = Union[tuple[int, int], Callable[[tuple[int, int]], "tuple[int, int] | None"]]


class Namer(Protocol):
    """What ``build_evidence`` needs from a defect namer (e.g. ``vlm_ad.naming``): a ``name`` method returning an
    object with ``name``, ``confidence``, ``example_id``, ``distance`` and ``explanation`` attributes. A namer whose
    ``names_map_regions`` is true is also given ``from_map=True`` for a region's core cut from the map."""

    def name(self, image: np.ndarray, region_mask: np.ndarray) -> Any: ...


def _gray(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)


def _gradient(gray: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(gray)
    return np.hypot(gx, gy)


def region_shape(mask: np.ndarray) -> Shape:
    """Elongation (principal-axis ratio), orientation and a shape word of a bool mask."""
    axes = principal_axes(mask)
    if axes is None:
        return Shape(1.0, 0.0, "none", "compact")
    elongation, deg, fill = axes
    if elongation >= 4:
        word = "line-like"
    elif elongation >= 2:
        word = "elongated"
    else:
        word = "compact" if fill > 0.7 else "irregular"
    return Shape(round(elongation, 2), round(deg, 1), orientation_word(deg, elongation), word)


def _contrast_words(delta: float, ratio: float, spread: float) -> str:
    level = max(8.0, 0.5 * spread)  # a textured reference varies by itself: ask for a clear difference
    words = ["darker" if delta < -level else "brighter" if delta > level else "similar brightness"]
    words.append("rougher" if ratio > 1.3 else "smoother" if ratio < 0.77 else "similar texture")
    return ", ".join(words)


def _contrast(gray: np.ndarray, mask: np.ndarray, ref: np.ndarray, ref_grad: np.ndarray, source: str,
              ref_id: str) -> Contrast:
    inside = _gradient(gray)[mask]
    delta = float(gray[mask].mean() - ref.mean())
    ratio = float(inside.mean() + 1e-3) / float(ref_grad.mean() + 1e-3)
    return Contrast(source, ref_id, round(delta, 1), round(ratio, 2), _contrast_words(delta, ratio, float(ref.std())))


def _bbox_slices(mask: np.ndarray) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    return slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)


def _ring_contrast(gray: np.ndarray, mask: np.ndarray) -> Contrast:
    from scipy import ndimage

    width = max(2, min(mask.shape) // 32)
    ring = ndimage.binary_dilation(mask, iterations=width) & ~mask
    if not ring.any():
        ring = ~mask if (~mask).any() else mask
    grad = _gradient(gray)
    return _contrast(gray, mask, gray[ring], grad[ring], "ring", "ring")


def _exemplar_patch(exemplar: np.ndarray, hit: ExemplarHit, grid: tuple[int, int], box_frac: tuple[float, float]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The exemplar window of the region's relative size, centred on the hit's patch: (h, w) grey and gradient."""
    gray = _gray(exemplar)
    h, w = gray.shape
    # inside the image even when the hit's cell lies outside this grid (an exemplar seen at another input shape)
    cy = min(max((hit.row + 0.5) / grid[0] * h, 0.0), h - 1.0)
    cx = min(max((hit.col + 0.5) / grid[1] * w, 0.0), w - 1.0)
    hh, hw = max(4.0, box_frac[0] * h / 2), max(4.0, box_frac[1] * w / 2)
    y0, y1 = int(max(0, cy - hh)), int(min(h, cy + hh + 1))
    x0, x1 = int(max(0, cx - hw)), int(min(w, cx + hw + 1))
    return gray[y0:y1, x0:x1], _gradient(gray)[y0:y1, x0:x1]


def _region_contrast(gray, mask, hit, grid, load_exemplar) -> tuple[Contrast, str | None]:
    """Contrast against the exemplar patch when its image loads, else the ring (and a note saying why)."""
    if hit is None or grid is None or load_exemplar is None:
        return _ring_contrast(gray, mask), None
    exemplar = load_exemplar(hit.image_id)
    if exemplar is None:
        return _ring_contrast(gray, mask), f"exemplar image {hit.image_id} not available"
    if callable(grid):
        grid = grid(exemplar.shape[:2])
        if grid is None:
            return _ring_contrast(gray, mask), None
    ys, xs = _bbox_slices(mask)
    frac = ((ys.stop - ys.start) / mask.shape[0], (xs.stop - xs.start) / mask.shape[1])
    ref, ref_grad = _exemplar_patch(exemplar, hit, grid, frac)
    return _contrast(gray, mask, ref, ref_grad, "exemplar", hit.image_id), None


_RING = "; contrast taken against a ring around the region instead"


def _name(namer: Namer | None, image: np.ndarray, mask: np.ndarray, *, from_map: bool = False,
          heat: Callable[[], np.ndarray] | None = None) -> DefectNameEvidence | None:
    """The namer's name for ``mask``; ``from_map``: the mask is a core cut from the map, said to a namer that tells
    such masks apart (``names_map_regions``, e.g. :class:`vlm_ad.naming.DefectLibrary`); ``heat``: makes the map
    over the whole region (0 elsewhere), for a namer that reads it (``names_with_heat``)."""
    if namer is None:
        return None
    if from_map and getattr(namer, "names_map_regions", False):
        extra = {"heat": heat()} if heat is not None and getattr(namer, "names_with_heat", False) else {}
        d = namer.name(image, mask, from_map=True, **extra)
    else:
        d = namer.name(image, mask)
    return DefectNameEvidence(str(d.name), round(float(d.confidence), 3), str(d.example_id),
                              round(float(d.distance), 4), str(getattr(d, "explanation", "")))


def build_evidence(
    amap: AnomalyMap,
    image: np.ndarray,
    *,
    region_threshold: float | None = None,
    namer: Namer | None = None,
    load_exemplar: ExemplarLoader | None = None,
    grid_shape: GridShape | None = None,
    max_regions: int = 5,
    core_level: float | None = CORE_LEVEL,
    point_spread: PointSpread | None = None,
) -> Evidence:
    """Measure the evidence behind one detection.

    Regions are the connected components of ``amap.map > region_threshold`` (default: the image threshold).
    Region ``R<k>`` is contrasted with the exemplar of hit ``k`` (hits and regions are both ordered most
    anomalous first): the exemplar window of the region's relative size centred on the hit's patch. When no
    exemplar image is available, the contrast is taken against a ring around the region and ``contrast.reference``
    says ``"ring"``. When the score is not above the threshold there is no region; ``peak`` (id ``P1``) then
    measures the map's strongest response the same way: the component around the map's maximum of the pixels above
    half way from the map's median to its maximum (full width at half maximum).

    Args:
        amap: the detector's output (map, score, threshold, hits).
        image: (H, W, 3) uint8 pixels of the scored image.
        region_threshold: pixel threshold of the regions (default ``amap.threshold``).
        namer: optional defect namer (see :class:`Namer`).
        load_exemplar: ``image_id -> pixels or None`` for the normal exemplars (e.g. from the training folder).
        grid_shape: (rows, cols) of the detector's feature grid, or ``image (H, W) -> (rows, cols)`` when the grid
            depends on the image's shape; needed to place a hit in its exemplar image.
        max_regions: keep at most this many regions (highest peaks).
        core_level: measure each region's core (:func:`region_core`) at this share of the way from the map's median
            to its peak: its area is ``core_pct`` and the namer describes the core, not the whole region; None
            measures no core (the namer then describes the whole region).
        point_spread: image (H, W) -> the detector's map of one anomalous patch at that shape (its
            ``point_spread`` method); with a core measured, each region's ``size_pct`` is its effective area less
            that map's (:func:`defect_share`).
    """
    from vlm_ad.regions import find_regions

    h, w = amap.map.shape
    thr = amap.threshold if region_threshold is None else region_threshold
    score = _score(amap)
    ev = Evidence(amap.image_id, (w, h), score)
    if thr is None:
        ev.notes.append("the detector has no threshold, so no regions are extracted")
    if amap.threshold is not None and not score.above:
        thr = None  # a normal verdict: no region is anomalous
    regions = find_regions(amap.map, float(thr)) if thr is not None else []
    gray = _gray(image)
    labels = _labels(amap.map, thr) if regions else None
    measure = partial(_region_evidence, image=image, gray=gray, namer=namer, hits=amap.hits, grid=grid_shape,
                      load_exemplar=load_exemplar, notes=ev.notes, size=(w, h), amap=amap.map,
                      core_level=core_level, median=float(np.median(amap.map)), point_spread=point_spread)
    for k, reg in enumerate(regions[:max_regions]):
        mask = _component(labels, reg)
        ev.masks[f"R{k + 1}"] = mask
        ev.regions.append(measure(f"R{k + 1}", reg, mask, k))
    if score.above and not regions and (found := _peak_component(amap.map)) is not None:
        # the image score is above the threshold but no pixel of the (smoothed, full-size) map is: the defect is
        # the map's strongest response, so it becomes R1 rather than leaving "where" and "how large" unanswered
        reg, mask = found
        ev.notes.append(f"the image score is above the threshold but the map's maximum {float(amap.map.max()):.4f} "
                        "is not, so R1 is the component around the map's maximum (above half way from its median)")
        ev.masks["R1"] = mask
        ev.regions.append(measure("R1", reg, mask, 0))
    if amap.threshold is not None and not score.above and (found := _peak_component(amap.map)) is not None:
        reg, mask = found
        ev.masks["P1"] = mask
        ev.peak = measure("P1", reg, mask, 0)
    ev.exemplars = [ExemplarHit(x.image_id, x.row, x.col, round(x.distance, 4), id=f"E{i + 1}")
                    for i, x in enumerate(amap.hits)]
    return ev


def _region_evidence(rid: str, reg, mask: np.ndarray, k: int, *, image, gray, namer, hits, grid, load_exemplar,
                     notes: list[str], size: tuple[int, int], amap: np.ndarray, core_level: float | None,
                     median: float, point_spread: PointSpread | None) -> RegionEvidence:
    """Measure one region (extent, core, shape, contrast against the exemplar of hit ``k``, name of its core)."""
    hit = hits[min(k, len(hits) - 1)] if hits else None
    contrast, note = _region_contrast(gray, mask, hit, grid, load_exemplar)
    if note and note + _RING not in notes:
        notes.append(note + _RING)
    core = None if core_level is None else region_core(amap, mask, core_level, median=median)
    return RegionEvidence(rid, reg.box, round(100 * reg.area_fraction, 2), round(reg.peak, 4),
                          (round(reg.centroid[0], 1), round(reg.centroid[1], 1)), location_word(*reg.centroid, *size),
                          region_shape(mask), contrast,
                          _name(namer, image, mask if core is None else core, from_map=core is not None,
                                heat=lambda: np.where(mask, amap - float(amap.min()), 0.0)),
                          None if core is None else round(100 * float(core.mean()), 2),
                          None if core is None else _defect_size(amap, mask, median, point_spread))


def _defect_size(amap: np.ndarray, mask: np.ndarray, median: float, point_spread: PointSpread | None
                 ) -> float | None:
    """``size_pct`` of a region (see :class:`~vlm_ad.evidence.types.RegionEvidence`), or None without a spread."""
    spread = point_spread(amap.shape) if point_spread is not None else None
    if spread is None or not spread.max() > 0:
        return None
    return round(100 * defect_share(amap, mask, spread, median=median), 2)


def defect_share(amap: np.ndarray, mask: np.ndarray, spread: np.ndarray, *, median: float) -> float:
    """The share of the image a region's defect is estimated to cover: the region's effective area (its map above the
    median, summed, over its peak above the median) less the same of ``spread``, the detector's map of one anomalous
    patch (its own zero as the median), at least 0.

    A map that spreads each defect pixel the same way keeps the defect's mass: a defect much wider than the spread
    reaches the full height, so its effective area is its own area; one much smaller than the spread gives the
    spread's shape, so its effective area is the spread's, and the difference is about 0. No level is chosen: on the
    QA dev suite (8 synthetic sets, maps of efficientnet-lite0 PatchCore and of the ensemble, seeded halves of the
    images) it answered size better than the core at any level less the spread's core (the rule before, level 0.6)
    over both detectors; magnetic_tile held out (eval/results/probes.md, eval/probe_size_rules.py)."""
    own = effective_area(amap, mask, median=median)
    return max(own - effective_area(spread, np.ones(spread.shape, bool), median=0.0), 0.0) if own > 0 else 0.0


def effective_area(amap: np.ndarray, mask: np.ndarray, *, median: float) -> float:
    """The share of the image that the map inside ``mask`` would cover at its peak height: its values above
    ``median``, summed, over their largest (0 for a region that does not rise above the median)."""
    values = np.clip(amap[mask] - median, 0.0, None)
    peak = float(values.max()) if values.size else 0.0
    return float(values.sum()) / peak / amap.size if peak > 0 else 0.0


def region_core(amap: np.ndarray, mask: np.ndarray, level: float = CORE_LEVEL, *,
                median: float | None = None) -> np.ndarray:
    """The core of the region ``mask`` ((H, W) bool) of the map ``amap``: the connected pixels around the region's
    peak whose value is at least ``median + level * (peak - median)`` (``median``: the map's, by default).

    The map is the detector's patch distances upsampled and smoothed, so a defect spreads over more pixels than it
    covers and the region above the detection threshold is larger still; the core is the tighter estimate of the
    defect's own extent (``level`` 0.5 is the full width at half maximum)."""
    from skimage.measure import label

    if not 0.0 <= level <= 1.0:
        raise ConfigError(f"the core level is a share of the way from the median to the peak, in [0, 1]; got {level}")
    med = float(np.median(amap)) if median is None else median
    ys, xs = _bbox_slices(mask)  # the core lies inside the region: work in its box
    sub, inside = amap[ys, xs], mask[ys, xs]
    iy, ix = np.unravel_index(int(np.argmax(np.where(inside, sub, -np.inf))), sub.shape)
    peak = float(sub[iy, ix])
    labels = label(inside & (sub >= med + level * (peak - med)), connectivity=2)
    core = np.zeros_like(mask, dtype=bool)
    core[ys, xs] = labels == labels[iy, ix]
    return core


def _peak_component(amap: np.ndarray) -> tuple[Any, np.ndarray] | None:
    """The map's strongest response: the connected component around its maximum of the pixels above half way
    from the map's median to its maximum (full width at half maximum), or None for a flat map."""
    from vlm_ad.regions import find_regions

    top, median = float(amap.max()), float(np.median(amap))
    if not top > median:
        return None
    level = median + 0.5 * (top - median)
    found = find_regions(amap, level, min_area_fraction=0.0)
    return (found[0], _component(_labels(amap, level), found[0])) if found else None


def _score(amap: AnomalyMap) -> ScoreEvidence:
    s, t = float(amap.score), amap.threshold
    if t is None:
        return ScoreEvidence(round(s, 4), None, None, None, None)
    t = float(t)
    return ScoreEvidence(round(s, 4), round(t, 4), round(s - t, 4), round(s / t, 2) if t > 0 else None, s > t)


def _labels(amap: np.ndarray, thr: float) -> np.ndarray:
    from skimage.measure import label

    return label(amap > thr, connectivity=2)


def _component(labels: np.ndarray, reg) -> np.ndarray:
    """The pixel mask of the labelled component holding region ``reg`` (found at its peak inside its box)."""
    x0, y0, x1, y1 = reg.box
    sub = labels[y0:y1, x0:x1]
    values, counts = np.unique(sub[sub > 0], return_counts=True)
    return labels == values[np.argmax(counts)]
