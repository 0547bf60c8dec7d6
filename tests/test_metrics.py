"""Tests of vlm_ad.evaluation.detection against scikit-learn, brute force and a slow reference AUPRO."""

from __future__ import annotations

import json
from bisect import bisect

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from vlm_ad.detectors.threshold import ThresholdPolicy
from vlm_ad.errors import ConfigError, DataError, NotFittedError
from vlm_ad.evaluation.detection import (
    aupro,
    evaluate,
    f1_max,
    image_ap,
    image_auroc,
    iou_at,
    pixel_ap,
    pixel_auroc,
    pointing_game,
)

EIGHT = np.ones((3, 3), dtype=int)
FOUR = ndimage.generate_binary_structure(2, 1)


# --------------------------------------------------------------------------- helpers and references


def random_masks_maps(seed, n_images=5, quantise=None, empty_every=3, dtype=np.float64):
    """Small images of differing sizes with several blobs per mask, some empty masks, maps correlated with masks."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n_images):
        h, w = rng.integers(6, 14, size=2)
        mask = np.zeros((h, w), dtype=bool)
        if i % empty_every:
            for _ in range(rng.integers(1, 4)):
                r, c = rng.integers(0, h - 2), rng.integers(0, w - 2)
                mask[r : r + rng.integers(1, 4), c : c + rng.integers(1, 4)] = True
            mask |= rng.random((h, w)) < 0.03
        amap = rng.random((h, w)) + 0.6 * mask
        if quantise:
            amap = np.round(amap * quantise) / quantise
        masks.append(mask)
        maps.append(amap.astype(dtype))
    return masks, maps


def ref_trapezoid(x, y, x_max):
    """Trapezoid up to x_max with interpolation there (as the MVTec AD evaluation script)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def ref_aupro(masks, maps, fpr_limit, structure=EIGHT):
    """Slow, obvious AUPRO: every distinct score is a threshold; PRO and FPR computed directly."""
    regions = []
    for i, mask in enumerate(masks):
        labeled, n = ndimage.label(mask, structure=structure)
        regions += [(i, labeled == k) for k in range(1, n + 1)]
    n_normal = sum(int((~m).sum()) for m in masks)
    xs, ys = [0.0], [0.0]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        preds = [a >= t for a in maps]
        fp = sum(int((p & ~m).sum()) for p, m in zip(preds, masks, strict=True))
        pro = np.mean([(preds[i] & r).sum() / r.sum() for i, r in regions])
        xs.append(fp / n_normal)
        ys.append(pro)
    return ref_trapezoid(xs, ys, fpr_limit) / fpr_limit


def brute_f1(labels, scores):
    """Best F1 and the highest threshold reaching it, by trying every distinct score."""
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    best = (-1.0, None)
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp, fp, fn = (pred & labels).sum(), (pred & ~labels).sum(), (~pred & labels).sum()
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0] + 1e-15:
            best = (f1, t)
    return best


def flat(masks, maps):
    """Concatenated pixel labels and scores (what scikit-learn would be given)."""
    return np.concatenate([m.ravel() for m in masks]), np.concatenate([a.ravel() for a in maps])


# --------------------------------------------------------------------------- image level


@pytest.mark.parametrize("seed", range(6))
def test_image_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 300))
    labels = rng.random(n) < 0.3
    labels[:2] = [True, False]
    scores = np.round(rng.normal(size=n) + labels, 1 if seed % 2 else 6)  # odd seeds: many ties
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert image_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-6)


@pytest.mark.parametrize("seed", range(8))
def test_f1_max_matches_brute_force_and_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 120))
    labels = (rng.random(n) < 0.4).astype(int)
    labels[:2] = [1, 0]
    scores = np.round(rng.normal(size=n) + labels, 1 if seed % 2 else 8)
    f1, thr = f1_max(labels, scores)
    ref_f1, ref_thr = brute_f1(labels, scores)
    assert f1 == pytest.approx(ref_f1, abs=1e-12)
    assert thr == ref_thr
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        sk = np.nanmax(2 * p * r / (p + r))
    assert f1 == pytest.approx(sk, abs=1e-6)


def test_f1_max_perfect_separation():
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 0.8)


def test_image_single_class_is_none():
    assert image_auroc([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert image_ap([1, 1], [0.1, 0.2]) is None
    assert f1_max([0, 0], [0.1, 0.2]) == (None, None)


def test_image_bad_input():
    with pytest.raises(DataError, match="3 entries but scores has 2"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(DataError, match="0 .normal. or 1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(DataError, match="finite; index 1"):
        image_ap([0, 1], [0.1, np.nan])
    with pytest.raises(DataError, match="non-empty"):
        image_auroc([], [])


# --------------------------------------------------------------------------- pixel level


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pixel_metrics_match_sklearn(seed, dtype):
    masks, maps = random_masks_maps(seed, n_images=7, quantise=10 if seed % 2 else None, dtype=dtype)
    y, s = flat(masks, maps)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-6)


def test_pixel_metrics_larger_maps_and_mixed_dtypes():
    rng = np.random.default_rng(7)
    masks = [rng.random((64, 80)) < 0.05 for _ in range(12)] + [None, np.zeros((40, 50), np.uint8)]
    maps = [(rng.random(m.shape) + m).astype(np.float32) for m in masks[:12]]
    maps += [rng.random((30, 30)), rng.integers(0, 3, size=(40, 50))]
    full = [np.zeros(a.shape, bool) if m is None else m != 0 for m, a in zip(masks, maps, strict=True)]
    y, s = flat(full, maps)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-6)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-6)


def test_pixel_single_class_is_none():
    maps = [np.random.default_rng(0).random((4, 4))]
    assert pixel_auroc([np.zeros((4, 4))], maps) is None
    assert pixel_ap([np.ones((4, 4))], maps) is None
    assert aupro([np.zeros((4, 4))], maps) is None
    assert aupro([np.ones((4, 4))], maps) is None
    assert pointing_game([None], maps) is None


def test_pixel_mismatch_errors():
    with pytest.raises(DataError, match=r"mask 1 has shape \(4, 5\) but map 1 has shape \(4, 4\)"):
        pixel_auroc([np.zeros((4, 4)), np.zeros((4, 5))], [np.zeros((4, 4)), np.zeros((4, 4))])
    with pytest.raises(DataError, match="2 masks but 1 maps"):
        pixel_ap([np.zeros((2, 2))] * 2, [np.zeros((2, 2))])
    with pytest.raises(DataError, match="must be 2-D"):
        aupro([np.zeros((2, 2, 1))], [np.zeros((2, 2, 1))])
    with pytest.raises(DataError, match="non-finite"):
        pointing_game([np.ones((2, 2))], [np.full((2, 2), np.inf)])
    with pytest.raises(DataError, match="no images"):
        pixel_auroc([], [])


# --------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fpr_limit", [0.3, 1.0, 0.05])
def test_aupro_matches_slow_reference(seed, fpr_limit):
    masks, maps = random_masks_maps(seed, quantise=8 if seed % 2 else None)
    assert sum(ndimage.label(m, structure=EIGHT)[1] for m in masks) >= 2
    assert any(not m.any() for m in masks)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(ref_aupro(masks, maps, fpr_limit), abs=1e-6)


def test_aupro_multiple_regions_in_one_image_and_float32():
    masks, maps = random_masks_maps(11, n_images=4, empty_every=10, dtype=np.float32)
    assert max(ndimage.label(m, structure=EIGHT)[1] for m in masks) >= 2
    assert aupro(masks, maps) == pytest.approx(ref_aupro(masks, maps, 0.3), abs=1e-6)


def test_aupro_connectivity_four_vs_eight():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one region (8) or two (4)
    mask[4, 3:6] = True
    amap = np.random.default_rng(3).random((6, 6)) + 0.3 * mask
    amap[2, 2] = 0.0
    for conn, structure in ((8, EIGHT), (4, FOUR)):
        got = aupro([mask], [amap], fpr_limit=0.5, connectivity=conn)
        assert got == pytest.approx(ref_aupro([mask], [amap], 0.5, structure), abs=1e-9)
    assert aupro([mask], [amap], connectivity=4) != pytest.approx(aupro([mask], [amap], connectivity=8))


def test_aupro_perfect_map_is_one():
    masks, _ = random_masks_maps(2)
    rng = np.random.default_rng(0)
    assert aupro(masks, [m.astype(float) for m in masks]) == pytest.approx(1.0, abs=1e-12)
    noisy = [m + 0.9 * rng.random(m.shape) * ~m for m in masks]  # normals below every anomalous pixel
    assert aupro(masks, noisy, fpr_limit=0.3) == pytest.approx(1.0, abs=1e-12)


def test_aupro_grid_equals_exact_when_grid_hits_every_value():
    rng = np.random.default_rng(5)
    masks, _ = random_masks_maps(4)
    maps = [rng.integers(0, 11, size=m.shape) + 3 * m for m in masks]  # integers 0..13
    exact = aupro(masks, maps)
    lo, hi = min(a.min() for a in maps), max(a.max() for a in maps)
    assert aupro(masks, maps, num_thresholds=int(hi - lo + 1)) == pytest.approx(exact, abs=1e-12)
    float_maps = random_masks_maps(4)[1]
    assert aupro(masks, float_maps, num_thresholds=2000) == pytest.approx(aupro(masks, float_maps), abs=5e-3)


def test_aupro_config_errors():
    masks, maps = random_masks_maps(0)
    for bad in (0.0, 1.5, -0.1, "0.3"):
        with pytest.raises(ConfigError, match="fpr_limit"):
            aupro(masks, maps, fpr_limit=bad)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ConfigError, match="num_thresholds"):
            aupro(masks, maps, num_thresholds=bad)
    with pytest.raises(ConfigError, match="connectivity"):
        aupro(masks, maps, connectivity=6)


# --------------------------------------------------------------------------- IoU and pointing game


def test_pointing_game_hand_cases():
    mask = np.zeros((3, 3), bool)
    mask[0, 1] = True
    hit = np.zeros((3, 3))
    hit[0, 1] = 1.0
    miss = np.zeros((3, 3))
    miss[2, 2] = 1.0
    tie_first_outside = np.ones((3, 3))  # argmax ties -> first pixel (0, 0), outside the mask
    tie_first_inside = np.zeros((3, 3))
    tie_first_inside[0, 1] = tie_first_inside[2, 2] = 5.0
    assert pointing_game([mask], [hit]) == 1.0
    assert pointing_game([mask], [miss]) == 0.0
    assert pointing_game([mask], [tie_first_outside]) == 0.0
    assert pointing_game([mask], [tie_first_inside]) == 1.0
    assert pointing_game([mask, None, mask], [hit, miss, miss]) == 0.5  # the normal image is ignored


def test_iou_dataset_and_image_reductions():
    m1 = np.array([[1, 1], [0, 0]], bool)
    a1 = np.array([[0.9, 0.1], [0.8, 0.0]])  # pred (0,0),(1,0): inter 1, union 3
    m2 = np.array([[1, 1, 1, 1]], bool)
    a2 = np.array([[0.9, 0.9, 0.9, 0.9]])  # inter 4, union 4
    m3 = np.zeros((2, 2), bool)
    a3 = np.zeros((2, 2))  # empty union: skipped per image, adds nothing to the dataset sums
    assert iou_at([m1, m2, m3], [a1, a2, a3], 0.5) == pytest.approx(5 / 7)
    assert iou_at([m1, m2, m3], [a1, a2, a3], 0.5, reduction="image") == pytest.approx((1 / 3 + 1) / 2)
    assert iou_at([m3], [a3], 0.5) is None
    assert iou_at([m1], [a1], 0.8) == pytest.approx(1 / 3)  # threshold is inclusive
    with pytest.raises(ConfigError, match="reduction"):
        iou_at([m1], [a1], 0.5, reduction="mean")
    with pytest.raises(ConfigError, match="threshold"):
        iou_at([m1], [a1], float("nan"))


# --------------------------------------------------------------------------- ThresholdPolicy


def test_policy_f1_branch():
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.5, 0.9]
    policy = ThresholdPolicy().fit(scores, labels)
    assert policy.method_ == "f1"
    assert policy.threshold_ == f1_max(labels, scores)[1] == 0.5
    assert policy.predict([0.49, 0.5, 1.0]).tolist() == [False, True, True]


def test_policy_quantile_branch():
    scores = np.linspace(0.0, 1.0, 101)
    assert ThresholdPolicy(0.9).fit(scores).threshold_ == pytest.approx(0.9)
    policy = ThresholdPolicy(0.9).fit(np.r_[scores, 5.0, 6.0], labels=[0] * 101 + [0, 0])
    assert policy.method_ == "quantile"
    assert policy.threshold_ == pytest.approx(np.quantile(np.r_[scores, 5.0, 6.0], 0.9))


@pytest.mark.parametrize("scores", [[0.3] * 10, [0.0] * 5, [-7.0, -7.0], [1e9] * 3, [0.1, 0.5, 0.5]])
def test_policy_degenerate_scores_do_not_collapse(scores):
    policy = ThresholdPolicy().fit(scores)
    assert np.isfinite(policy.threshold_)
    assert policy.threshold_ > max(scores)
    assert policy.threshold_ - max(scores) <= 1e-6 * max(1.0, abs(max(scores)), max(scores) - min(scores)) * 1.0001
    assert not policy.predict(scores).any()


def test_policy_errors():
    with pytest.raises(NotFittedError):
        ThresholdPolicy().predict([0.1])
    with pytest.raises(DataError, match="every validation label is anomalous"):
        ThresholdPolicy().fit([0.1, 0.2], [1, 1])
    with pytest.raises(DataError):
        ThresholdPolicy().fit([])
    with pytest.raises(DataError):
        ThresholdPolicy().fit([0.1, np.inf])
    for bad in (0.0, 1.5, "x"):
        with pytest.raises(ConfigError):
            ThresholdPolicy(bad)
    assert "threshold_" in repr(ThresholdPolicy().fit([0.1, 0.2]))


# --------------------------------------------------------------------------- evaluate


def test_evaluate_matches_individual_metrics():
    masks, maps = random_masks_maps(9, n_images=6)
    labels = [int(m.any()) for m in masks]
    scores = [float(a.max()) for a in maps]
    out = evaluate(labels, scores, masks, maps)
    assert out["image_auroc"] == image_auroc(labels, scores)
    assert out["image_ap"] == image_ap(labels, scores)
    assert (out["f1_max"], out["f1_threshold"]) == f1_max(labels, scores)
    assert out["pixel_auroc"] == pixel_auroc(masks, maps)
    assert out["pixel_ap"] == pixel_ap(masks, maps)
    assert out["aupro"] == aupro(masks, maps)
    assert out["pointing_game"] == pointing_game(masks, maps)
    y, s = flat(masks, maps)
    assert out["iou_threshold"] == brute_f1(y, s)[1]
    assert out["iou"] == iou_at(masks, maps, out["iou_threshold"])
    json.dumps(out)


def test_evaluate_image_only_and_single_class():
    out = evaluate([0, 0, 0], [0.1, 0.2, 0.3])
    assert out == {"image_auroc": None, "image_ap": None, "f1_max": None, "f1_threshold": None}
    maps = [np.random.default_rng(1).random((3, 3)) for _ in range(3)]
    out = evaluate([0, 0, 0], [0.1, 0.2, 0.3], [None] * 3, maps)
    assert set(out) >= {"pixel_auroc", "pixel_ap", "aupro", "pointing_game", "iou", "iou_threshold"}
    assert all(v is None for v in out.values())
    assert json.dumps(out).count("null") == len(out)


def test_evaluate_errors():
    maps = [np.zeros((2, 2))] * 2
    with pytest.raises(ConfigError, match="both masks and maps"):
        evaluate([0, 1], [0.1, 0.2], masks=[None, None])
    with pytest.raises(DataError, match="3 labels but 2 masks"):
        evaluate([0, 1, 1], [0.1, 0.2, 0.3], [None, None], maps)
