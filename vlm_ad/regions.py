"""Connected anomalous regions of a map (scikit-image labelling)."""

from __future__ import annotations

import numpy as np

from vlm_ad.types import Region


def find_regions(amap: np.ndarray, threshold: float, *, min_area_fraction: float = 1e-4) -> list[Region]:
    """Connected components (8-connectivity) of ``amap > threshold``, largest peak first.

    Args:
        amap: (H, W) anomaly map.
        threshold: pixel threshold.
        min_area_fraction: components smaller than this share of the image are dropped.
    """
    from skimage.measure import label, regionprops

    h, w = amap.shape
    regions = []
    for prop in regionprops(label(amap > threshold, connectivity=2), intensity_image=amap):
        frac = prop.area / (h * w)
        if frac < min_area_fraction:
            continue
        y0, x0, y1, x1 = prop.bbox
        cy, cx = prop.centroid
        regions.append(Region(0, (int(x0), int(y0), int(x1), int(y1)), float(frac), float(prop.intensity_max),
                              (float(cx), float(cy))))
    regions.sort(key=lambda r: -r.peak)
    for i, r in enumerate(regions, 1):
        r.id = i
    return regions
