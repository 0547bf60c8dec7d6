"""Candidate answer rules of the grounded QA reasoner, scored per question kind on one dataset's maps (used by
eval/bench_qa.py, which chooses on the synthetic dev suite and reports magnetic_tile held out).

Every rule reads only the detector's map, score and normal-calibrated threshold (and, for ``type``, a labelled-defect
library of 3 shots per type); the masks and labels only score the answers.

``verdict``  balanced accuracy and accuracy of image-score thresholds set from the normal shots' leave-image-out
             scores: their maximum (= the 0.99 quantile with 8 shots, ``q99``) and mean + k sd.
``where``    the 3 x 3 word of: the detected region's centroid (R1, the highest peak; P1 when nothing is detected),
             the map's maximum, the centroid of the region's core at a level.
``size``     the size word of: the region's area (P1's when nothing is detected), the core's area at a level, and
             the core's area with "small" when nothing is detected; ``minus blur``: the core's area less the core
             area (same level) of the detector's map of one anomalous patch at that image's shape (its point-spread:
             patch pooling, upsampling, smoothing), which a defect smaller than a patch still fills; ``mass minus
             blur``: the region's effective area (map above the median summed over its peak) less the point
             spread's (vlm_ad.evidence.build.defect_share, no level).
``type``     the library's name for: the region's pixels, its core at a level, the core compared with the examples
             seen through the map lens (vlm_ad.naming.map_lens) of a sigma, k = 3 votes or the nearest example
             (k = 1); ``patch vote``: the core's DINOv2 patches vote for their nearest labelled patches (a library in
             ``patches`` mode, vlm_ad.naming); ``patch + cell vote``: those votes plus the votes of the region's 5
             strongest efficientnet-lite0 cells of the map for their nearest labelled cells (``patches+cells``
             mode); the ground-truth mask as an upper bound (not an answer rule: it needs the mask).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from vlm_ad.evidence.build import _component, _labels, _peak_component, defect_share, region_core
from vlm_ad.naming import MAP_LENS, DefectLibrary
from vlm_ad.regions import find_regions
from vlm_ad.types import AnomalyMap, Sample
from vlm_ad.vocabulary import location_word, size_word

__all__ = ["LEVELS", "rule_scores"]

LEVELS = (0.5, 0.6, 0.7, 0.8)
VERDICT_K = (0.5, 1.0, 2.0)


def _verdicts(samples: Sequence[Sample], maps: Sequence[AnomalyMap], cal: np.ndarray) -> dict[str, float]:
    y = np.array([s.label == 1 for s in samples])
    s = np.array([m.score for m in maps])
    rules = {"q99 (max)": float(cal.max())} | {f"mean+{k:g}sd": float(cal.mean() + k * cal.std(ddof=1))
                                              for k in VERDICT_K}
    out = {}
    for name, t in rules.items():
        p = s > t
        out[f"verdict {name} bal"] = float((p[y].mean() + (~p[~y]).mean()) / 2) if y.any() and (~y).any() else None
        out[f"verdict {name} acc"] = float((p == y).mean())
    return out


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def _spread_core(spread: np.ndarray, level: float) -> float:
    """The share of the image covered by the core at ``level`` of a detector's point spread (the map of one anomalous
    patch, its zero as the median): what the ``minus blur`` size rules take off a region's core at that level."""
    return float(region_core(spread, spread > 0, level, median=0.0).mean())


def _found(amap: AnomalyMap) -> tuple[np.ndarray, bool] | None:
    """The mask the evidence measures (R1 when the score is above the threshold, else P1) and whether it is R1."""
    m = amap.map
    regions = find_regions(m, float(amap.threshold)) if amap.score > amap.threshold else []
    if regions:  # as build_evidence measures R1
        return _component(_labels(m, float(amap.threshold)), regions[0]), True
    peak = _peak_component(m)
    return (peak[1], False) if peak is not None else None


def _region_rows(sample: Sample, amap: AnomalyMap, libraries: dict[float, Any],
                 psf: Callable[[tuple[int, int]], np.ndarray] | None = None, patch_library: Any = None
                 ) -> dict[str, Any] | None:
    found = _found(amap)
    if found is None:
        return None
    reg, detected = found
    m, mask = amap.map, sample.mask
    h, w = m.shape
    iy, ix = np.unravel_index(int(np.argmax(np.where(reg, m, -np.inf))), m.shape)
    row = {"detected": detected, "where": location_word(*_centroid(mask), w, h), "size": size_word(float(mask.mean())),
           "where region centroid (old)": location_word(*_centroid(reg), w, h),
           "where map maximum": location_word(ix, iy, w, h),
           "size region area (old)": size_word(float(reg.mean()))}
    median = float(np.median(m))
    cores = {f: region_core(m, reg, f, median=median) for f in LEVELS}
    spread = psf(m.shape) if psf is not None else None
    for f, core in cores.items():
        row[f"where core {f} centroid"] = location_word(*_centroid(core), w, h)
        row[f"size core {f}"] = size_word(float(core.mean()))
        row[f"size core {f}, small when missed"] = row[f"size core {f}"] if detected else "small"
        if spread is not None:
            share = max(float(core.mean()) - _spread_core(spread, f), 0.0)
            row[f"size core {f} minus blur, small when missed"] = size_word(share) if detected else "small"
    if spread is not None:
        share = defect_share(m, reg, spread, median=median)
        row["size mass minus blur, small when missed"] = size_word(share) if detected else "small"
    if libraries and sample.defect_type and sample.image_id not in set(libraries[0.0].example_ids):
        image, plain = sample.image, libraries[0.0]
        row["type"] = sample.defect_type
        row["type region (old), k=3"] = plain.name(image, reg).name
        for f, core in cores.items():
            row[f"type core {f}, k=3"] = plain.name(image, core).name
        for sigma, lib in libraries.items():
            if sigma > 0:
                row[f"type core 0.7 + map lens {sigma}, k=3"] = lib.name(image, cores[0.7], from_map=True).name
        nearest = {s: DefectLibrary(features="descriptors", k=1, lens=s) for s in (0.0, MAP_LENS)}
        for s, lib in nearest.items():
            lib.labels, lib.example_ids = libraries[s].labels, libraries[s].example_ids
            lib.desc, lib.desc_lens = libraries[s].desc, libraries[s].desc_lens
        row["type region, k=1 (nearest example)"] = nearest[0.0].name(image, reg).name
        row[f"type core 0.7 + map lens {MAP_LENS}, k=1 (nearest example)"] = nearest[MAP_LENS].name(
            image, cores[0.7], from_map=True).name
        row["type ground-truth mask, k=3 (upper bound)"] = plain.name(image, mask).name
        if patch_library is not None:
            votes, cells = patch_library["patches"], patch_library["patches+cells"]
            row["type core 0.7, patch vote"] = votes.name(image, cores[0.7], from_map=True).name
            row["type ground-truth mask, patch vote (upper bound)"] = votes.name(image, mask).name
            heat = np.where(reg, m - float(m.min()), 0.0)  # as the evidence gives it: the map over the region
            row["type core 0.7, patch + cell vote"] = cells.name(image, cores[0.7], from_map=True, heat=heat).name
            row["type ground-truth mask, patch + cell vote (upper bound)"] = cells.name(image, mask).name
    return row


def rule_scores(samples: Sequence[Sample], maps: Sequence[AnomalyMap], cal: np.ndarray,
                libraries: dict[float, Any] | None = None,
                psf: Callable[[tuple[int, int]], np.ndarray] | None = None, patch_library: Any = None
                ) -> dict[str, Any]:
    """Accuracy of every candidate rule on one dataset (``maps`` with the detector's default threshold; ``cal``:
    the normal shots' leave-image-out scores; ``libraries``: map-lens sigma -> the same labelled-defect library
    (3 shots per type, descriptors) built with that lens, 0.0 included, or None; ``psf``: image (H, W) -> the
    detector's map of one anomalous patch at that shape, for the ``minus blur`` size rules; ``patch_library``: the
    same examples in a ``patches`` and a ``patches+cells`` library, ``{mode: library}``, for the ``patch vote`` and
    ``patch + cell vote`` type rules)."""
    out: dict[str, Any] = _verdicts(samples, maps, cal)
    by_id = {m.image_id: m for m in maps}
    rows = [r for s in samples if s.label == 1 and s.mask is not None and s.mask.any()
            if (r := _region_rows(s, by_id[s.image_id], libraries or {}, psf, patch_library)) is not None]
    out["anomalous"] = len(rows)
    out["detected"] = float(np.mean([r["detected"] for r in rows])) if rows else None
    for kind in ("where", "size", "type"):
        mine = [r for r in rows if kind in r]
        for key in (k for k in (mine[0] if mine else {}) if k.startswith(f"{kind} ")):
            out[key] = float(np.mean([r[key] == r[kind] for r in mine]))
            missed = [r for r in mine if not r["detected"]]
            if kind == "size" and missed:
                out[f"{key} | missed"] = float(np.mean([r[key] == r[kind] for r in missed]))
        out[f"{kind} n"] = len(mine)
    return out
