"""PaDiM's map on an aligned, non-square object: the per-position Gaussians line up with the image (issue 12)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vlm_ad.detectors import create_detector


def _plate(rng: np.random.Generator, h: int = 192, w: int = 384) -> np.ndarray:
    """An aligned object: a dark plate with a round hole at a fixed place (2 px jitter), light background, noise."""
    yy, xx = np.mgrid[:h, :w]
    dy, dx = rng.integers(-2, 3, 2)
    plate = (np.abs(yy - h / 2 - dy) < h * 0.3) & (np.abs(xx - w / 2 - dx) < w * 0.4)
    hole = (yy - h / 2 - dy) ** 2 + (xx - w * 0.3 - dx) ** 2 < (h * 0.12) ** 2
    img = np.full((h, w, 3), 200.0)
    img[plate & ~hole] = 70
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("geometry", ["square", "area"])
def test_padim_map_peaks_at_a_planted_tiny_defect_on_a_non_square_image(geometry):
    rng = np.random.default_rng(0)
    det = create_detector("padim", backbone="efficientnet-lite0", geometry=geometry)
    det.fit([_plate(rng) for _ in range(8)])
    tests, masks = [], []
    for where in ((120, 250), (60, 100)):  # lower right, upper left: a flipped or transposed grid misses one
        img, mask = _plate(rng), np.zeros((192, 384), bool)
        mask[where[0] : where[0] + 12, where[1] : where[1] + 12] = True  # 0.2% of the image, on the plate
        img[mask] = 230
        tests.append(img)
        masks.append(mask)
    *maps, clean = det.predict([*tests, _plate(rng)])
    for amap, mask in zip(maps, masks):
        assert amap.map.shape == mask.shape
        y, x = np.unravel_index(int(amap.map.argmax()), mask.shape)
        assert mask[max(0, y - 6) : y + 7, max(0, x - 6) : x + 7].any(), (y, x)  # the peak is on the defect
        assert roc_auc_score(mask.ravel(), amap.map.ravel()) > 0.97
        assert clean.score < amap.score
