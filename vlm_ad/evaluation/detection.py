"""Detection and localisation metrics: image AUROC/AP/F1, pixel AUROC/AP, AUPRO, IoU and the pointing game.

Conventions used by every function here:

* Higher scores mean *more anomalous*; a threshold ``t`` predicts "anomalous" for ``score >= t``.
* Labels and masks: nonzero means anomalous. A ``None`` entry in a mask sequence is an empty
  (normal) mask of its map's shape.
* Masks and maps are sequences of (H, W) arrays (or an (N, H, W) array). Sizes may differ between
  images, but every mask must have the shape of its map.
* A metric that is undefined for the data (only one class present, no anomalous region, no
  normal pixel, ...) is returned as ``None`` (JSON ``null``), never as NaN or a made-up constant.

The pixel metrics are exact: they equal scikit-learn's ``roc_auc_score``/``average_precision_score``
on the concatenated pixels (ties included), but sort only the normal pixels, once and in the maps'
own float dtype, and work per distinct anomalous score. AUPRO follows the MVTec AD evaluation code
(Bergmann et al.): regions are the 8-connected components of each mask (as ``scipy.ndimage.label``
with ``structure=np.ones((3, 3))`` in the official script; ``connectivity=4`` is available), every
distinct score is a threshold, and the PRO-vs-FPR curve is integrated with the trapezoidal rule up to
``fpr_limit`` (interpolated there) and divided by ``fpr_limit``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from vlm_ad.errors import ConfigError, DataError

__all__ = [
    "aupro",
    "evaluate",
    "f1_max",
    "image_ap",
    "image_auroc",
    "iou_at",
    "pixel_ap",
    "pixel_auroc",
    "pointing_game",
]

_STRUCTURES = {4: ndimage.generate_binary_structure(2, 1), 8: ndimage.generate_binary_structure(2, 2)}


# --------------------------------------------------------------------------- validation


def check_labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate image labels and scores; return (bool labels, float64 scores)."""
    y = np.asarray(_materialise(labels))
    s = check_scores(scores, "scores")
    if y.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {y.shape}")
    if y.size != s.size:
        raise DataError(f"labels has {y.size} entries but scores has {s.size}; give one label per score")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool) or not np.isin(y, (0, 1)).all():
        raise DataError("labels must be 0 (normal) or 1 (anomalous)")
    return y.astype(bool), s


def check_scores(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a finite, non-empty 1-D float64 array, or raise DataError."""
    try:
        s = np.asarray(_materialise(values), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numbers: {exc}") from exc
    if s.ndim != 1 or s.size == 0:
        raise DataError(f"{name} must be a non-empty 1-D sequence, got shape {s.shape}")
    bad = np.flatnonzero(~np.isfinite(s))
    if bad.size:
        raise DataError(f"{name} must be finite; index {bad[0]} is {s[bad[0]]}")
    return s


def _materialise(values: Any) -> Any:
    """Turn a one-shot iterable (generator, iterator) into a list; leave arrays and sequences alone."""
    return values if hasattr(values, "__len__") or np.isscalar(values) else list(values)


def _pairs(masks: Any, maps: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Validate masks and maps; return per-image bool masks and numeric maps."""
    if masks is None or maps is None:
        raise ConfigError("pixel metrics need both masks and maps")
    masks, maps = list(masks), list(maps)
    if len(masks) != len(maps):
        raise DataError(f"got {len(masks)} masks but {len(maps)} maps; give one mask per map")
    if not maps:
        raise DataError("no images: masks and maps are empty")
    pairs = [_pair(i, mask, amap) for i, (mask, amap) in enumerate(zip(masks, maps, strict=True))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _pair(i: int, mask: Any, amap: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate one mask/map pair (image ``i``)."""
    amap = np.asarray(amap)
    if amap.ndim != 2:
        raise DataError(f"map {i} must be 2-D (H, W), got shape {amap.shape}")
    if not (np.issubdtype(amap.dtype, np.integer) or np.issubdtype(amap.dtype, np.floating)):
        raise DataError(f"map {i} must hold real numbers, got dtype {amap.dtype}")
    mask = np.zeros(amap.shape, dtype=bool) if mask is None else np.asarray(mask) != 0
    if mask.shape != amap.shape:
        raise DataError(f"mask {i} has shape {mask.shape} but map {i} has shape {amap.shape}; they must match")
    if not np.isfinite(amap).all():
        raise DataError(f"map {i} holds non-finite values (NaN or inf)")
    return mask, amap


def _check_limit(fpr_limit: float) -> float:
    """Validate the AUPRO integration limit."""
    if not isinstance(fpr_limit, (int, float, np.floating)) or not 0.0 < fpr_limit <= 1.0:
        raise ConfigError(f"fpr_limit must be a number in (0, 1], got {fpr_limit!r}")
    return float(fpr_limit)


def _check_grid(num_thresholds: int | None) -> int | None:
    """Validate the optional AUPRO threshold-grid size."""
    if num_thresholds is None:
        return None
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)) or num_thresholds < 2:
        raise ConfigError(f"num_thresholds must be None (exact) or an int >= 2, got {num_thresholds!r}")
    return int(num_thresholds)


def _check_connectivity(connectivity: int) -> np.ndarray:
    """Return the scipy structuring element for 4- or 8-connectivity."""
    if connectivity not in _STRUCTURES:
        raise ConfigError(f"connectivity must be 4 or 8, got {connectivity!r}")
    return _STRUCTURES[connectivity]


# --------------------------------------------------------------------------- pixel pools


@dataclass
class _Pixels:
    """All pixels of a set of images, split by ground truth.

    Attributes:
        neg: scores of normal pixels, sorted ascending.
        pos: scores of anomalous pixels, in image order.
        weights: per anomalous pixel ``1 / (region area * number of regions)`` (AUPRO), or None.
    """

    neg: np.ndarray
    pos: np.ndarray
    weights: np.ndarray | None = None

    @property
    def two_classes(self) -> bool:
        """Whether both normal and anomalous pixels are present."""
        return self.neg.size > 0 and self.pos.size > 0


def _score_dtype(maps: list[np.ndarray]) -> np.dtype:
    """The float dtype that holds every map's values exactly (float32 or float64)."""
    dtype = functools.reduce(np.promote_types, (a.dtype for a in maps))
    return dtype if dtype in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float64)


def _gather(masks: list[np.ndarray], maps: list[np.ndarray], connectivity: int | None = None) -> _Pixels:
    """Pool validated masks/maps into sorted normal and raw anomalous pixel scores."""
    dtype = _score_dtype(maps)
    n_pos = sum(int(np.count_nonzero(m)) for m in masks)
    neg = np.empty(sum(m.size for m in masks) - n_pos, dtype=dtype)
    pos = np.empty(n_pos, dtype=dtype)
    i = j = 0
    for m, a in zip(masks, maps, strict=True):
        k = int(np.count_nonzero(m))
        neg[i : i + m.size - k] = a[~m]
        pos[j : j + k] = a[m]
        i, j = i + m.size - k, j + k
    neg.sort()
    weights = None if connectivity is None else _region_weights(masks, _check_connectivity(connectivity))
    return _Pixels(neg, pos, weights)


def _region_weights(masks: list[np.ndarray], structure: np.ndarray) -> np.ndarray:
    """Per anomalous pixel (image order) ``1 / (region area * total regions)``."""
    parts, n_regions = [], 0
    for m in masks:
        if not m.any():
            continue
        labeled, n = ndimage.label(m, structure=structure)
        ids = labeled[m]
        parts.append(1.0 / np.bincount(ids)[ids])
        n_regions += n
    return np.concatenate(parts) / n_regions if parts else np.empty(0)


# --------------------------------------------------------------------------- exact curve pieces


def _pr_points(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct anomalous scores (descending) with their counts and TP/FP counts at ``score >= value``."""
    vals, counts = np.unique(pos, return_counts=True)
    vals, counts = vals[::-1], counts[::-1]
    fps = neg.size - np.searchsorted(neg, vals, side="left")
    return vals, counts, np.cumsum(counts), fps


def _auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with ties counted half), as scikit-learn computes it."""
    vals, counts = np.unique(pos, return_counts=True)
    below = np.searchsorted(neg, vals, side="left")
    upto = np.searchsorted(neg, vals, side="right")
    return float(np.dot(counts, (below + upto) / 2.0)) / (pos.size * neg.size)


def _ap(neg: np.ndarray, pos: np.ndarray) -> float:
    """Exact average precision (step-wise, as scikit-learn's ``average_precision_score``)."""
    _, counts, tps, fps = _pr_points(neg, pos)
    return float(np.sum(counts * (tps / (tps + fps)))) / pos.size


def f1_threshold(neg: np.ndarray, pos: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds and the highest threshold that reaches it."""
    vals, _, tps, fps = _pr_points(neg, pos)
    f1 = 2.0 * tps / (tps + fps + pos.size)
    k = int(np.argmax(f1))
    return float(f1[k]), float(vals[k])


def _area_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under the polyline (x, y), x ascending from 0, up to ``limit`` (interpolated there)."""
    i = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:i], y[:i]
    if i < x.size and xs[-1] < limit:
        y_lim = ys[-1] + (y[i] - ys[-1]) * (limit - xs[-1]) / (x[i] - xs[-1])
        xs, ys = np.append(xs, limit), np.append(ys, y_lim)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0)


def _pro_curve_exact(px: _Pixels) -> tuple[np.ndarray, np.ndarray]:
    """The exact (FPR, PRO) polyline over all distinct scores, from (0, 0) to (1, 1).

    PRO only changes at anomalous scores; between them FPR rises with PRO flat, so two vertices per
    distinct anomalous score (just above it, at it) describe the same polyline as all thresholds.
    """
    vals, inverse = np.unique(px.pos, return_inverse=True)
    pro = np.minimum(np.cumsum(np.bincount(inverse.ravel(), weights=px.weights)[::-1]), 1.0)
    vals, n = vals[::-1], px.neg.size
    fpr_at = (n - np.searchsorted(px.neg, vals, side="left")) / n
    fpr_above = (n - np.searchsorted(px.neg, vals, side="right")) / n
    x = np.concatenate(([0.0], np.column_stack((fpr_above, fpr_at)).ravel(), [1.0]))
    y = np.concatenate(([0.0], np.column_stack((np.r_[0.0, pro[:-1]], pro)).ravel(), [1.0]))
    return x, y


def _pro_curve_grid(px: _Pixels, num: int) -> tuple[np.ndarray, np.ndarray]:
    """The (FPR, PRO) polyline at ``num`` evenly spaced thresholds between the lowest and highest score."""
    lo, hi = min(px.neg[0], px.pos.min()), max(px.neg[-1], px.pos.max())
    grid = np.linspace(float(lo), float(hi), num)[::-1].astype(px.neg.dtype)
    n = px.neg.size
    fpr = (n - np.searchsorted(px.neg, grid, side="left")) / n
    order = np.argsort(px.pos, kind="stable")
    cum = np.concatenate(([0.0], np.cumsum(px.weights[order])))
    pro = np.minimum(cum[-1] - cum[np.searchsorted(px.pos[order], grid, side="left")], 1.0)
    return np.concatenate(([0.0], fpr, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def _aupro(px: _Pixels, fpr_limit: float, num_thresholds: int | None) -> float | None:
    """Normalised area under the PRO curve up to ``fpr_limit``; None without normal pixels or regions."""
    if not px.two_classes:
        return None
    x, y = _pro_curve_exact(px) if num_thresholds is None else _pro_curve_grid(px, num_thresholds)
    return _area_to(x, y, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------- image-level metrics


def image_auroc(labels: Any, scores: Any) -> float | None:
    """Image-level ROC AUC (scikit-learn's ``roc_auc_score``).

    Args:
        labels: per-image 0 (normal) / 1 (anomalous).
        scores: per-image anomaly scores, higher = more anomalous.

    Returns:
        The AUROC, or None when only one class is present (undefined).

    Raises:
        DataError: on length mismatch, non-binary labels or non-finite scores.
    """
    y, s = check_labels_scores(labels, scores)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else None


def image_ap(labels: Any, scores: Any) -> float | None:
    """Image-level average precision (scikit-learn's ``average_precision_score``).

    Args:
        labels: per-image 0 (normal) / 1 (anomalous).
        scores: per-image anomaly scores, higher = more anomalous.

    Returns:
        The AP, or None when only one class is present (undefined).

    Raises:
        DataError: on length mismatch, non-binary labels or non-finite scores.
    """
    y, s = check_labels_scores(labels, scores)
    return float(average_precision_score(y, s)) if 0 < y.sum() < y.size else None


def f1_max(labels: Any, scores: Any) -> tuple[float | None, float | None]:
    """Best F1 over all thresholds (``score >= threshold`` is anomalous) and that threshold.

    When several thresholds reach the best F1 the highest one is returned; it is always one of the
    anomalous samples' scores.

    Args:
        labels: per-sample 0 (normal) / 1 (anomalous).
        scores: per-sample anomaly scores, higher = more anomalous.

    Returns:
        ``(f1, threshold)``, or ``(None, None)`` when only one class is present (undefined).

    Raises:
        DataError: on length mismatch, non-binary labels or non-finite scores.
    """
    y, s = check_labels_scores(labels, scores)
    if not 0 < y.sum() < y.size:
        return None, None
    return f1_threshold(np.sort(s[~y]), s[y])


# --------------------------------------------------------------------------- pixel-level metrics


def pixel_auroc(masks: Sequence[Any], maps: Sequence[Any]) -> float | None:
    """Pixel-level ROC AUC over all pixels of all images (exact; equals scikit-learn on the concatenation).

    Args:
        masks: per-image (H, W) ground-truth masks (nonzero = anomalous; None = empty).
        maps: per-image (H, W) anomaly maps, same shapes as the masks.

    Returns:
        The AUROC, or None when no pixel (or every pixel) is anomalous (undefined).

    Raises:
        DataError: on length or shape mismatch, or non-finite map values.
    """
    px = _gather(*_pairs(masks, maps))
    return _auroc(px.neg, px.pos) if px.two_classes else None


def pixel_ap(masks: Sequence[Any], maps: Sequence[Any]) -> float | None:
    """Pixel-level average precision over all pixels (exact; equals scikit-learn on the concatenation).

    Args:
        masks: per-image (H, W) ground-truth masks (nonzero = anomalous; None = empty).
        maps: per-image (H, W) anomaly maps, same shapes as the masks.

    Returns:
        The AP, or None when no pixel (or every pixel) is anomalous (undefined).

    Raises:
        DataError: on length or shape mismatch, or non-finite map values.
    """
    px = _gather(*_pairs(masks, maps))
    return _ap(px.neg, px.pos) if px.two_classes else None


def aupro(
    masks: Sequence[Any],
    maps: Sequence[Any],
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
    connectivity: int = 8,
) -> float | None:
    """Normalised area under the per-region-overlap (PRO) curve up to ``fpr_limit`` (MVTec AD AUPRO).

    Each connected component of each mask is a region. At a threshold ``t`` the PRO is the mean over
    all regions of (region pixels with ``map >= t``) / (region area), and the FPR is the share of all
    normal pixels with ``map >= t``. The curve starts at (0, 0), ends at (1, 1), is integrated with
    the trapezoidal rule up to ``fpr_limit`` (interpolating the PRO there) and divided by ``fpr_limit``.

    Args:
        masks: per-image (H, W) ground-truth masks (nonzero = anomalous; None = empty).
        maps: per-image (H, W) anomaly maps, same shapes as the masks.
        fpr_limit: upper FPR integration limit in (0, 1]; 0.3 is the MVTec AD convention.
        num_thresholds: None for the exact curve (every distinct score is a threshold, like the
            official evaluation code), or an int >= 2 for that many evenly spaced thresholds between
            the lowest and highest score (an approximation, as in some libraries).
        connectivity: 8 (default, as the official MVTec AD script) or 4 for the regions.

    Returns:
        The AUPRO in [0, 1], or None when there is no anomalous region or no normal pixel (undefined).

    Raises:
        ConfigError: on a bad ``fpr_limit``, ``num_thresholds`` or ``connectivity``.
        DataError: on length or shape mismatch, or non-finite map values.
    """
    limit, num = _check_limit(fpr_limit), _check_grid(num_thresholds)
    return _aupro(_gather(*_pairs(masks, maps), connectivity=connectivity), limit, num)


def iou_at(masks: Sequence[Any], maps: Sequence[Any], threshold: float, reduction: str = "dataset") -> float | None:
    """Intersection over union of ``map >= threshold`` with the masks.

    Args:
        masks: per-image (H, W) ground-truth masks (nonzero = anomalous; None = empty).
        maps: per-image (H, W) anomaly maps, same shapes as the masks.
        threshold: pixels with ``map >= threshold`` are predicted anomalous.
        reduction: ``"dataset"`` (default): total intersection / total union over all pixels of all
            images; ``"image"``: mean of the per-image IoUs over images whose union is not empty.

    Returns:
        The IoU, or None when every union is empty (nothing predicted, nothing annotated: undefined).

    Raises:
        ConfigError: on a bad ``reduction`` or a non-finite ``threshold``.
        DataError: on length or shape mismatch, or non-finite map values.
    """
    if reduction not in ("dataset", "image"):
        raise ConfigError(f"reduction must be 'dataset' or 'image', got {reduction!r}")
    if not isinstance(threshold, (int, float, np.number)) or not np.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
    return _iou(*_pairs(masks, maps), float(threshold), reduction)


def _iou(masks: list[np.ndarray], maps: list[np.ndarray], threshold: float, reduction: str) -> float | None:
    """IoU of validated masks/maps (see ``iou_at``)."""
    pred = (a >= np.float64(threshold) for a in maps)
    counts = np.array([_inter_union(m, p) for m, p in zip(masks, pred, strict=True)]).reshape(-1, 2)
    inter, union = counts[:, 0], counts[:, 1]
    if reduction == "dataset":
        return float(inter.sum() / union.sum()) if union.sum() else None
    keep = union > 0
    return float(np.mean(inter[keep] / union[keep])) if keep.any() else None


def _inter_union(mask: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """Pixel counts of intersection and union of two bool arrays."""
    return int(np.count_nonzero(mask & pred)), int(np.count_nonzero(mask | pred))


def pointing_game(masks: Sequence[Any], maps: Sequence[Any]) -> float | None:
    """Share of anomalous images (non-empty mask) whose map maximum lies inside the mask.

    Ties for the maximum are broken by the first position in row-major order (``np.argmax``).

    Args:
        masks: per-image (H, W) ground-truth masks (nonzero = anomalous; None = empty).
        maps: per-image (H, W) anomaly maps, same shapes as the masks.

    Returns:
        The hit rate in [0, 1], or None when no mask has an anomalous pixel (undefined).

    Raises:
        DataError: on length or shape mismatch, or non-finite map values.
    """
    return _pointing(*_pairs(masks, maps))


def _pointing(masks: list[np.ndarray], maps: list[np.ndarray]) -> float | None:
    """Pointing game on validated masks/maps."""
    hits = [bool(m.flat[int(np.argmax(a))]) for m, a in zip(masks, maps, strict=True) if m.any()]
    return float(np.mean(hits)) if hits else None


# --------------------------------------------------------------------------- all at once


def evaluate(
    labels: Any,
    scores: Any,
    masks: Sequence[Any] | None = None,
    maps: Sequence[Any] | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, float | None]:
    """Compute the standard image-level and (with masks and maps) pixel-level metrics.

    Args:
        labels: per-image 0 (normal) / 1 (anomalous).
        scores: per-image anomaly scores, higher = more anomalous.
        masks: optional per-image (H, W) ground-truth masks (None entries = empty); needs ``maps``.
        maps: optional per-image (H, W) anomaly maps; needs ``masks``.
        fpr_limit: AUPRO integration limit.

    Returns:
        A dict with ``image_auroc``, ``image_ap``, ``f1_max`` and ``f1_threshold``; with masks also
        ``pixel_auroc``, ``pixel_ap``, ``aupro``, ``pointing_game``, and ``iou`` (dataset-level) at
        ``iou_threshold``, the pixel threshold that maximises pixel F1. Undefined metrics are None.

    Raises:
        ConfigError: when only one of masks/maps is given, or on a bad ``fpr_limit``.
        DataError: on length or shape mismatch, bad labels or non-finite values.
    """
    y, s = check_labels_scores(labels, scores)
    f1, f1_threshold = f1_max(y, s)
    out = {"image_auroc": image_auroc(y, s), "image_ap": image_ap(y, s), "f1_max": f1, "f1_threshold": f1_threshold}
    if masks is None and maps is None:
        return out
    bmasks, amaps = _pairs(masks, maps)
    if len(bmasks) != y.size:
        raise DataError(f"got {y.size} labels but {len(bmasks)} masks/maps; give one per image")
    out.update(_pixel_metrics(bmasks, amaps, _check_limit(fpr_limit)))
    return out


def _pixel_metrics(masks: list[np.ndarray], maps: list[np.ndarray], fpr_limit: float) -> dict[str, float | None]:
    """Pixel-level part of ``evaluate`` on validated masks/maps."""
    px = _gather(masks, maps, connectivity=8)
    ok = px.two_classes
    _, threshold = f1_threshold(px.neg, px.pos) if ok else (None, None)
    return {
        "pixel_auroc": _auroc(px.neg, px.pos) if ok else None,
        "pixel_ap": _ap(px.neg, px.pos) if ok else None,
        "aupro": _aupro(px, fpr_limit, None),
        "pointing_game": _pointing(masks, maps),
        "iou": _iou(masks, maps, threshold, "dataset") if ok else None,
        "iou_threshold": threshold,
    }
