"""Input geometry across a varied dev suite: the old square squash vs aspect-preserving long sides vs tiling.

Suite (all 8 normal shots, drawn with each seed; test images split in two seeded halves per set, ``dev`` used to
choose defaults and ``unseen`` kept out of the choice, both reported):

    square     synthetic defects on real gravel texture (scikit-image), 256 x 256
    elongated  synthetic thin defects (crack, scratch) and holes on real brick texture, 320 x 800 (1:2.5)
    large      synthetic small defects (crack, scratch, hole) on real grass texture, 1536 x 2048; each defect is
               painted in a 512-px window, so it covers 0.01-0.05% of the image
    large-brick, large-coffee
               the same on brick texture at 2048 x 1536 (portrait; stains too), and the coffee object set below at
               1536 x 2048 with defects painted in a 1178-px window (the objects' 460 px scaled up: about 0.2% of
               the image, as on the 600 x 800 objects); large sets choose ``max_downscale``
    mid-gravel, mid-clock
               sizes where ``max_downscale`` 3 starts to act: gravel at 1200 x 1200 (defects in 512-px windows) and
               the clock object at 1200 x 1600 (920-px windows, about 0.2% of the image); checked after the choice
    gray-elongated
               grayscale gravel at 500 x 1250 (1:2.5) with small thin cracks and scratches (median 0.34% of the
               image), the shape of the issue's "K" set; added after the choices, a check
    magnetic   real magnetic_tile (../shared/data/magnetic_tile): a seeded subsample of the test split
    clock, coins, coffee
               small-defect objects, 600 x 800: a real object photograph of scikit-image (``clock``, ``coins``,
               ``coffee``), centre-cropped to 3:4 and upscaled, seen again in every image with a small random pose
               (rotation within 1.5 degrees, scale within 2%, shift within 13 px), gain within 7% and sensor noise
               (std 3), so the images are aligned but not identical; defects (scratch, hole, crack, stain) are painted
               in a 460-px window, so each covers about 0.2% of the image (median; the issue's "T" set)
    textile    simulated textile (PyPI conformal-clip-data): a balanced subsample, image labels only

Rows: a simple baseline (intensity z-score against the normal pixels, no backbone), PatchCore (coreset off unless
the row says, 8 shots) with EfficientNet-Lite0 and DINOv2-S/14 under each geometry, map smoothing (sigma), coreset and
pooling window, tiling on the large set, PaDiM, mutual zero-shot scoring (and its neighbours, frac), and issue 12's
reference PatchCore (eval/reference_patchcore.py, written apart from vlm_ad's detectors) that every PatchCore row is
held against. Pixel metrics of the large set are computed on maps and masks downsampled to a 1024-px long side.
Writes eval/results/generalization.{jsonl,md} (the jsonl anew each run).

    nice python eval/bench_generalization.py [--seeds 0 1 2] [--threads 2] [--rows NAME ...]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vlm_ad.detectors import create_detector
from vlm_ad.detectors.base import gaussian_blur
from vlm_ad.evaluation.detection import evaluate
from vlm_ad.types import Sample

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
MAGNETIC = ROOT.parent / "shared" / "data" / "magnetic_tile"
METRICS = ("image_auroc", "pixel_auroc", "aupro")
SHOTS = 8
EFF, DINO = "efficientnet-lite0", "dinov2-s14"
OLD = "patchcore effnet square 224 (old default)"
REF_EFF, REF_DINO = "reference patchcore effnet long 256", "reference patchcore dinov2 b7 long 448"
# row name -> (detector, backbone, settings, datasets it runs on (None = all), seeds used (None = all))
ROWS: dict[str, tuple[str, str | None, dict, tuple | None, int | None]] = {
    "baseline: intensity z-score": ("zscore", None, {}, None, 1),
    OLD: ("patchcore", EFF, {"geometry": "square", "image_size": 224}, None, None),
    "patchcore effnet aspect 256": ("patchcore", EFF, {"geometry": "aspect", "image_size": 256}, None, None),
    "patchcore effnet aspect 320": ("patchcore", EFF, {"geometry": "aspect", "image_size": 320}, None, None),
    "patchcore effnet area 224": ("patchcore", EFF, {"geometry": "area", "image_size": 224}, None, None),
    "patchcore effnet area 256": ("patchcore", EFF, {"geometry": "area", "image_size": 256}, None, None),
    "patchcore effnet area 288": ("patchcore", EFF, {"geometry": "area", "image_size": 288}, None, None),
    "patchcore effnet area 224 down 4": ("patchcore", EFF, {"geometry": "area", "image_size": 224, "max_downscale": 4},
                                         None, None),
    "patchcore effnet area 224 down 3": ("patchcore", EFF, {"geometry": "area", "image_size": 224, "max_downscale": 3},
                                         None, None),
    "patchcore effnet area 224 pool exclude": ("patchcore", EFF, {"geometry": "area", "image_size": 224,
                                                               "pool_pad": "exclude"}, None, None),
    "patchcore effnet area 224 pool reflect": ("patchcore", EFF, {"geometry": "area", "image_size": 224,
                                                               "pool_pad": "reflect"}, None, None),
    "patchcore effnet area 224 rings 3": ("patchcore", EFF, {"geometry": "area", "image_size": 224, "rings": 3},
                                          None, None),
    "patchcore effnet area 224 pool sqrt": ("patchcore", EFF, {"geometry": "area", "image_size": 224,
                                                            "pool_pad": "sqrt"}, None, None),
    "patchcore effnet area 224 pool sqrt rings 3": ("patchcore", EFF, {"geometry": "area", "image_size": 224,
                                                                    "pool_pad": "sqrt", "rings": 3}, None, None),
    "patchcore effnet area 224 rings 3 uncapped": ("patchcore", EFF, {"geometry": "area", "image_size": 224,
                                                                   "rings": 3, "ring_cap": None}, None, None),
    "patchcore effnet area 224 pool exclude rings 3 uncapped": ("patchcore", EFF, {
        "geometry": "area", "image_size": 224, "pool_pad": "exclude", "rings": 3, "ring_cap": None}, None, None),
    "patchcore effnet aspect 1024 tile 256": ("patchcore", EFF, {"geometry": "aspect", "image_size": 1024,
                                                                  "tile": 256}, ("large",), None),
    "padim effnet square 224": ("padim", EFF, {"geometry": "square", "image_size": 224}, None, 1),
    "padim effnet area 224": ("padim", EFF, {"geometry": "area", "image_size": 224}, None, 1),
    "patchcore dinov2 square 224": ("patchcore", DINO, {"geometry": "square", "image_size": 224}, None, 3),
    "patchcore dinov2 area 224": ("patchcore", DINO, {"geometry": "area", "image_size": 224}, None, 1),
    "patchcore dinov2 area 280": ("patchcore", DINO, {"geometry": "area", "image_size": 280}, None, 3),
    "patchcore dinov2 area 280 min 224": ("patchcore", DINO, {"geometry": "area", "image_size": 280, "min_side": 224},
                                          None, 3),
    "patchcore dinov2 area 224 min 224": ("patchcore", DINO, {"geometry": "area", "image_size": 224, "min_side": 224},
                                          None, 3),
    "patchcore dinov2 area 280 min 224 down 4": ("patchcore", DINO, {"geometry": "area", "image_size": 280,
                                                                     "min_side": 224, "max_downscale": 4}, None, 3),
    "patchcore dinov2 area 280 min 224 down 3": ("patchcore", DINO, {"geometry": "area", "image_size": 280,
                                                                     "min_side": 224, "max_downscale": 3}, None, 3),
    "patchcore dinov2 area 280 min 224 down 3 rings 3": ("patchcore", DINO, {"geometry": "area", "image_size": 280,
                                                                             "min_side": 224, "max_downscale": 3,
                                                                             "rings": 3}, None, 3),
    "patchcore dinov2 aspect 448 min 224 down 3": ("patchcore", DINO, {"geometry": "aspect", "image_size": 448,
                                                                       "min_side": 224, "max_downscale": 3}, None, 3),
    "patchcore dinov2 area 336 min 224 down 3": ("patchcore", DINO, {"geometry": "area", "image_size": 336,
                                                                     "min_side": 224, "max_downscale": 3}, None, 3),
    "patchcore dinov2 area 364 min 224 down 3": ("patchcore", DINO, {"geometry": "area", "image_size": 364,
                                                                     "min_side": 224, "max_downscale": 3}, None, 3),
    "patchcore dinov2 area 392 min 224 down 3": ("patchcore", DINO, {"geometry": "area", "image_size": 392,
                                                                     "min_side": 224, "max_downscale": 3}, None, 3),
    "patchcore dinov2 area 364 min 224 down 3 b7": ("patchcore", DINO, {"geometry": "area", "image_size": 364,
                                                                        "min_side": 224, "max_downscale": 3,
                                                                        "layers": ["block7"]}, None, 3),
    # the old square squash at the default's pixel count: what keeping the aspect ratio costs and buys at equal input
    "patchcore dinov2 square 364": ("patchcore", DINO, {"geometry": "square", "image_size": 364}, None, 3),
    "patchcore dinov2 aspect 308": ("patchcore", DINO, {"geometry": "aspect", "image_size": 308}, None, 3),
    "patchcore dinov2 area 308": ("patchcore", DINO, {"geometry": "area", "image_size": 308}, None, 3),
    "patchcore dinov2 aspect 448": ("patchcore", DINO, {"geometry": "aspect", "image_size": 448}, None, 3),
    "patchcore dinov2 aspect 448 b7": ("patchcore", DINO, {"geometry": "aspect", "image_size": 448,
                                                            "layers": ["block7"]}, None, 3),
    "mutual dinov2 zero-shot square 224": ("mutual", DINO, {"geometry": "square", "image_size": 224}, None, 1),
    "mutual dinov2 zero-shot area 280": ("mutual", DINO, {"geometry": "area", "image_size": 280}, None, 1),
    "mutual dinov2 zero-shot area 280 min 224": ("mutual", DINO, {"geometry": "area", "image_size": 280,
                                                                 "min_side": 224}, None, 1),
    "mutual dinov2 zero-shot area 224 min 224": ("mutual", DINO, {"geometry": "area", "image_size": 224,
                                                                 "min_side": 224}, None, 1),
    "mutual dinov2 zero-shot area 224 min 224 down 4": ("mutual", DINO, {"geometry": "area", "image_size": 224,
                                                                        "min_side": 224, "max_downscale": 4},
                                                        None, 1),
    "mutual dinov2 zero-shot area 224 min 224 down 3": ("mutual", DINO, {"geometry": "area", "image_size": 224,
                                                                        "min_side": 224, "max_downscale": 3},
                                                        None, 1),
    "mutual effnet zero-shot area 224": ("mutual", EFF, {"geometry": "area", "image_size": 224}, None, 1),
    "mutual dinov2 zero-shot aspect 308": ("mutual", DINO, {"geometry": "aspect", "image_size": 308}, None, 1),
    "mutual dinov2 zero-shot area 308": ("mutual", DINO, {"geometry": "area", "image_size": 308}, None, 1),
    "mutual dinov2 zero-shot aspect 448": ("mutual", DINO, {"geometry": "aspect", "image_size": 448}, None, 1),
    "mutual dinov2 zero-shot aspect 448 b7": ("mutual", DINO, {"geometry": "aspect", "image_size": 448,
                                                                "layers": ["block7"]}, None, 1),
    # issue 12's reference recipe, written apart from vlm_ad's detectors (eval/reference_patchcore.py)
    REF_EFF: ("reference", EFF, {"long_side": 256}, None, None),
    REF_DINO: ("reference", DINO, {"long_side": 448, "layers": ["block7"]}, None, None),
    REF_EFF + ", padding counted": ("reference", EFF, {"long_side": 256, "pad_counts": True}, None, None),
}
# one setting changed at a default row (the default row's settings with another value), for the choice of that
# setting's default: map smoothing (`sigma`, pixels of a 256-px long side; 4, anomalib's, every detector's default),
# PatchCore's coreset at 8 shots (the other rows keep every patch; the product keeps 10%, as the reference, whatever
# the shot count), the local neighbourhood (`pool`, the side of the average-pooling window over each layer; 3, the
# PatchCore paper's and anomalib's, chosen on magnetic_tile alone in eval/results/fewshot.md) and zero-shot mutual's
# neighbours (`frac`: a patch scores the mean of its ceil(frac x n_ref) smallest per-reference distances; 0.3 the
# default; 15 references here, the other images of a batch of 16)
_PE0, _PC0, _MU0 = ("patchcore effnet area 224", "patchcore dinov2 area 364 min 224 down 3",
                    "mutual dinov2 zero-shot area 224 min 224 down 3")
for _base, _key, _values in ((_PE0, "sigma", (2, 3, 6)), (_PC0, "sigma", (2, 3, 6)), (_MU0, "sigma", (2, 3)),
                             (_PE0, "coreset", (0.1, 0.25)), (_PC0, "coreset", (0.1, 0.25)),
                             (_PE0, "pool", (1, 5)), (_PC0, "pool", (1, 5)), (_MU0, "pool", (1,)),
                             (_MU0, "frac", (0.1, 0.5)),
                             # one window per layer (shallow, deep): pooling only one of the two layers
                             (_PE0, "pool", ((1, 3), (3, 1))), (_PC0, "pool", ((1, 3), (3, 1))),
                             (_MU0, "pool", ((3, 1),))):
    _det, _backbone, _kw, _only, _n_seeds = ROWS[_base]
    ROWS.update({f"{_base} {_key} {'+'.join(map(str, v)) if isinstance(v, tuple) else v}":
                 (_det, _backbone, _kw | {_key: v}, _only, _n_seeds) for v in _values})
N_TRAIN, N_GOOD, N_DEFECT = 16, 16, 16  # per synthetic set


# ------------------------------------------------------------------------------------------------- data
def _synthetic(name: str, source: str, shape: tuple[int, int], types: tuple[str, ...], *, size: str | None,
               window: int | None = None) -> tuple[list[Sample], list[Sample]]:
    from vlm_ad.data.synthetic import load_source, make_defect, random_crop

    texture = load_source(source)
    rng = np.random.default_rng([7, zlib.crc32(name.encode())])  # the same images every run
    train = [Sample(random_crop(texture, shape, rng), f"{name}/train/{i}", 0) for i in range(N_TRAIN)]
    test = []
    for i in range(N_GOOD):
        img = random_crop(texture, shape, rng)
        test.append(Sample(img, f"{name}/good/{i}", 0, "good", np.zeros(shape, bool)))
    for i in range(N_DEFECT):
        img, kind = random_crop(texture, shape, rng), types[i % len(types)]
        if window is None:
            out, mask, _ = make_defect(img, kind, rng, size=size)
        else:  # paint into a window, so that the defect is a tiny share of the large image
            y, x = (int(rng.integers(0, s - window)) for s in shape)
            sub, sub_mask, _ = make_defect(img[y : y + window, x : x + window], kind, rng, size=size)
            out, mask = img.copy(), np.zeros(shape, bool)
            out[y : y + window, x : x + window], mask[y : y + window, x : x + window] = sub, sub_mask
        test.append(Sample(out, f"{name}/{kind}/{i}", 1, kind, mask))
    return train, test


def _in_grey(split: tuple[list[Sample], list[Sample]]) -> tuple[list[Sample], list[Sample]]:
    """The same samples in grey (three equal channels), as a grayscale camera gives them."""
    def grey(s: Sample) -> Sample:
        g = np.round(s.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        return Sample(np.repeat(g[..., None], 3, axis=2), s.image_id, s.label, s.defect_type, s.mask)

    return [grey(s) for s in split[0]], [grey(s) for s in split[1]]


OBJECTS = ("clock", "coins", "coffee")
OBJECT_SHAPE, OBJECT_WINDOW, N_OBJECT_TEST = (600, 800), 460, 16  # N_OBJECT_TEST good + as many defective


def _object_base(name: str, shape: tuple[int, int] = OBJECT_SHAPE) -> np.ndarray:
    """The scikit-image photograph ``name``, RGB, centre-cropped to 3:4 and resized to ``shape``."""
    import cv2
    import skimage.data

    img = getattr(skimage.data, name)()
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    h, w = img.shape[:2]
    th, tw = shape
    ch, cw = (int(w * th / tw), w) if h / w > th / tw else (h, int(h * tw / th))
    y, x = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(np.ascontiguousarray(img[y : y + ch, x : x + cw]), (tw, th), interpolation=cv2.INTER_CUBIC)


def _object_view(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One aligned photograph of the object: a small random pose, gain and sensor noise."""
    import cv2

    h, w = base.shape[:2]
    centre = (w / 2 + rng.uniform(-5, 5), h / 2 + rng.uniform(-5, 5))
    m = cv2.getRotationMatrix2D(centre, float(rng.uniform(-1.5, 1.5)), float(rng.uniform(0.98, 1.02)))
    m[:, 2] += rng.uniform(-8, 8, 2)
    out = cv2.warpAffine(base, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = out.astype(np.float32) * rng.uniform(0.93, 1.07) + rng.normal(0, 3, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _object(name: str, shape: tuple[int, int] = OBJECT_SHAPE, window: int = OBJECT_WINDOW, *,
            tag: str | None = None) -> tuple[list[Sample], list[Sample]]:
    """The small-defect object set of the photograph ``name`` at ``shape``, defects painted in ``window``-px windows
    (``tag``: the set's name, default ``name``)."""
    from vlm_ad.data.synthetic import make_defect

    base, (h, w), win = _object_base(name, shape), shape, window
    name = tag or name
    rng = np.random.default_rng([11, zlib.crc32(name.encode())])  # the same images every run
    train = [Sample(_object_view(base, rng), f"{name}/train/{i}", 0) for i in range(N_TRAIN)]
    test = [Sample(_object_view(base, rng), f"{name}/good/{i}", 0, "good", np.zeros((h, w), bool))
            for i in range(N_OBJECT_TEST)]
    for i in range(N_OBJECT_TEST):
        img, kind = _object_view(base, rng), ("scratch", "hole", "crack", "stain")[i % 4]
        y, x = int(rng.integers(0, h - win + 1)), int(rng.integers(0, w - win + 1))
        sub, sub_mask, _ = make_defect(img[y : y + win, x : x + win], kind, rng, size="small")
        mask = np.zeros((h, w), bool)
        img[y : y + win, x : x + win], mask[y : y + win, x : x + win] = sub, sub_mask
        test.append(Sample(img, f"{name}/{kind}/{i}", 1, kind, mask))
    return train, test


def _magnetic(n_good: int = 40, n_defect: int = 40) -> tuple[list[Sample], list[Sample]]:
    from vlm_ad.data import MVTecDataset

    train, test = MVTecDataset(MAGNETIC, "train"), MVTecDataset(MAGNETIC, "test")
    rng = np.random.default_rng(0)
    labels = np.array(test.labels)
    pick = np.concatenate([rng.choice(np.flatnonzero(labels == 0), n_good, replace=False),
                           rng.choice(np.flatnonzero(labels == 1), n_defect, replace=False)])
    normal = rng.choice(train.normal_indices(), N_TRAIN, replace=False)
    return [train[int(i)] for i in normal], [test[int(i)] for i in pick]


def _textile(n_test: int = 60) -> tuple[list[Sample], list[Sample]]:
    from vlm_ad.data import TextileDataset

    train = TextileDataset("train", n_train=N_TRAIN, seed=0)
    test = TextileDataset("test", n_train=N_TRAIN, seed=0, limit_test=n_test)
    return list(train), list(test)


def load_suite() -> dict[str, Callable[[], tuple[list[Sample], list[Sample]]]]:
    """Dataset name -> a function that builds (train, test) (only the sets a run asks for are built)."""
    return {
        "square": lambda: _synthetic("square", "gravel", (256, 256),
                                     ("scratch", "hole", "crack", "stain", "contamination"), size=None),
        "elongated": lambda: _synthetic("elongated", "brick", (320, 800), ("crack", "scratch", "hole"), size="small"),
        "large": lambda: _synthetic("large", "grass", (1536, 2048), ("crack", "scratch", "hole"), size="small",
                                    window=512),
        "large-brick": lambda: _synthetic("large-brick", "brick", (2048, 1536), ("crack", "scratch", "hole", "stain"),
                                          size="small", window=512),
        "large-coffee": lambda: _object("coffee", (1536, 2048), 1178, tag="large-coffee"),
        "mid-gravel": lambda: _synthetic("mid-gravel", "gravel", (1200, 1200), ("scratch", "hole", "crack", "stain"),
                                         size="small", window=512),
        "mid-clock": lambda: _object("clock", (1200, 1600), 920, tag="mid-clock"),
        "gray-elongated": lambda: _in_grey(_synthetic("gray-elongated", "gravel", (500, 1250), ("crack", "scratch"),
                                                      size="small")),
        "magnetic": _magnetic,
        "textile": _textile,
        **{name: (lambda name=name: _object(name)) for name in OBJECTS},
    }


def halves(test: list[Sample]) -> list[str]:
    """``dev`` / ``unseen`` per test image: a seeded half of the normal and half of the anomalous images each."""
    rng = np.random.default_rng(1)
    out = [""] * len(test)
    for label in (0, 1):
        idx = [i for i, s in enumerate(test) if s.label == label]
        for j, i in enumerate(rng.permutation(idx)):
            out[int(i)] = "dev" if j % 2 == 0 else "unseen"
    return out


# ------------------------------------------------------------------------------------------------- rows
class ZScore:
    """Baseline: |gray - mean| / std of the normal images' pixels, blurred (sigma 1% of the long side); score max."""

    def fit(self, normal: list[Sample]) -> ZScore:
        px = np.concatenate([_gray(s.image).ravel()[::7] for s in normal])
        self.mu, self.sd = float(px.mean()), float(px.std() + 1e-6)
        return self

    def predict(self, images: list[Sample]) -> list[tuple[float, np.ndarray]]:
        out = []
        for s in images:
            g = torch.from_numpy(np.abs(_gray(s.image) - self.mu) / self.sd)
            m = gaussian_blur(g[None], 0.01 * max(g.shape))[0].numpy()
            out.append((float(m.max()), m))
        return out


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32).mean(axis=2)


def _shots(train: list[Sample], seed: int) -> list[Sample]:
    return [train[int(i)] for i in np.random.default_rng(seed).choice(len(train), SHOTS, replace=False)]


def run_row(row: str, train: list[Sample], test: list[Sample], seed: int) -> tuple[list, float, float]:
    """(per-image (score, map) pairs, fit seconds, predict seconds)."""
    detector, backbone, kw, _, _ = ROWS[row]
    normal = _shots(train, seed)
    t0 = time.perf_counter()
    if detector == "zscore":
        det = ZScore().fit(normal)
    elif detector == "reference":
        from reference_patchcore import ReferencePatchCore  # eval/, on sys.path as the script's folder

        det = ReferencePatchCore(backbone, seed=seed, **kw).fit([s.image for s in normal])
    else:
        extra = {"coreset": 1.0} if detector == "patchcore" else {}  # coreset off unless the row sets one
        det = create_detector(detector, backbone=backbone, seed=seed, **(extra | kw))
        det.fit([] if detector == "mutual" else normal)
    t1 = time.perf_counter()
    if detector == "zscore":
        out = det.predict(test)
    elif detector == "reference":
        out = det.predict([s.image for s in test])
    else:
        out = []
        for start in range(0, len(test), 16):  # mutual: batches of 16 test images score each other
            out += [(m.score, m.map) for m in det.predict(test[start : start + 16])]
    return out, t1 - t0, time.perf_counter() - t1


def _small(a: np.ndarray, limit: int = 1024) -> np.ndarray:
    """Downsample a map (area average) or mask (any pixel) so that its long side is at most ``limit``."""
    f = int(np.ceil(max(a.shape) / limit))
    if f <= 1:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    t = F.avg_pool2d(t, f, ceil_mode=True)[0, 0].numpy()
    return t > 0 if a.dtype == bool else t


def score(test: list[Sample], preds: list, which: list[bool]) -> dict[str, float | None]:
    sel = [i for i, w in enumerate(which) if w]
    labels = [test[i].label for i in sel]
    scores = [preds[i][0] for i in sel]
    if test[0].mask is None and all(test[i].mask is None for i in sel if test[i].label == 1):
        res = evaluate(labels, scores)  # image labels only (textile)
    else:
        masks = [_small(test[i].mask if test[i].mask is not None else np.zeros(test[i].image.shape[:2], bool))
                 for i in sel]
        res = evaluate(labels, scores, masks=masks, maps=[_small(preds[i][1]) for i in sel])
    return {k: res.get(k) for k in METRICS}


# ------------------------------------------------------------------------------------------------- tables
def _cell(rows: list[dict], metric: str) -> str:
    vals = [r[metric] for r in rows if r.get(metric) is not None]
    if not vals:
        return "-"
    spread = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""
    return f"{statistics.mean(vals):.3f}{spread}"


def table(rows: list[dict], half: str, datasets: list[str]) -> list[str]:
    head = "| row | " + " | ".join(f"{d} img / pix / pro" for d in datasets) + " |"
    lines = [head, "|---|" + "---|" * len(datasets)]
    for name in ROWS:
        cells = []
        for d in datasets:
            g = [r for r in rows if r["row"] == name and r["dataset"] == d and r["half"] == half]
            cells.append(" / ".join(_cell(g, m) for m in METRICS) if g else "n/a")
        if any(c != "n/a" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def speed_table(rows: list[dict], datasets: list[str]) -> list[str]:
    lines = ["| row | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name in ROWS:
        cells = []
        for d in datasets:
            g = [r["images_per_second"] for r in rows if r["row"] == name and r["dataset"] == d and r["half"] == "all"]
            cells.append(f"{statistics.median(g):.1f}" if g else "n/a")
        if any(c != "n/a" for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _cells(rows: list[dict], new: str, old: str, half: str, *, common_seeds: bool):
    """(dataset, metric, new - old seed-mean difference, seed spread) per cell both rows ran; the spread is the larger
    of the two rows' seed standard deviations (0 for a single seed). ``common_seeds``: means over the seeds both rows
    ran on that set, else over every seed each ran."""
    for d in sorted({r["dataset"] for r in rows}):
        mine = {n: {r["seed"]: r for r in rows if r["row"] == n and r["dataset"] == d and r["half"] == half}
                for n in (new, old)}
        seeds = set(mine[new]) & set(mine[old])
        for m in METRICS:
            a, b = ([r[m] for s, r in sorted(mine[n].items()) if (s in seeds or not common_seeds) and r[m] is not None]
                    for n in (new, old))
            if a and b:
                spread = max(statistics.stdev(a) if len(a) > 1 else 0.0, statistics.stdev(b) if len(b) > 1 else 0.0)
                yield d, m, statistics.mean(a) - statistics.mean(b), spread


# differences below the tables' printed precision are ties: the same computation on another CPU type (AVX2 vs AVX-512
# kernels) moves a metric by about 1e-4, e.g. a zero-shot row on square images that two geometries see alike
TIE = 0.0005


def compare(rows: list[dict], new: str, old: str, half: str) -> str:
    """Wins / losses of ``new`` vs ``old`` over (dataset, metric) cells, seed means, with the seed spread."""
    cells = list(_cells(rows, new, old, half, common_seeds=False))
    wins, losses = sum(c[2] >= TIE for c in cells), sum(c[2] <= -TIE for c in cells)
    worst, spread_at_worst = min(((c[2], c[3]) for c in cells if c[2] <= -TIE), default=(0.0, 0.0))
    return (f"{new} vs {old} ({half}): better on {wins}, worse on {losses} (dataset, metric) cells; largest loss "
            f"{worst:+.3f} (seed spread there {spread_at_worst:.3f})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), help="row names to run (default: all)")
    ap.add_argument("--datasets", nargs="+", default=None, help="dataset names to run (default: all)")
    ap.add_argument("--update", action="store_true",
                    help="keep the jsonl rows of other (row, dataset, seed) triples and rewrite the tables from all of "
                         "them")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from generalization.jsonl")
    args = ap.parse_args(argv)
    if args.render:
        rows = [json.loads(x) for x in (RESULTS / "generalization.jsonl").read_text().splitlines() if x.strip()]
        write_markdown(rows, list(dict.fromkeys(r["dataset"] for r in rows)), args)
        return 0
    torch.set_num_threads(args.threads)
    suite = load_suite()
    datasets = args.datasets or list(suite)
    out = RESULTS / "generalization.jsonl"
    rows = []
    if args.update and out.is_file():
        redo = {(r, d, seed) for r in args.rows for d in datasets for seed in args.seeds[: ROWS[r][4] or None]}
        rows = [r for r in map(json.loads, out.read_text().splitlines())
                if (r["row"], r["dataset"], r["seed"]) not in redo]
        datasets = list(dict.fromkeys([r["dataset"] for r in rows] + datasets))
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    command = shlex.join(["PYTHONPATH=.", "nice", "python", "eval/bench_generalization.py", *(argv or sys.argv[1:])])
    for d in args.datasets or list(suite):
        train, test = suite[d]()
        half = halves(test)
        for name in args.rows:
            _, backbone, kw, only, n_seeds = ROWS[name]
            if only and d not in only:
                continue
            for seed in args.seeds[: n_seeds or None]:
                preds, fit_s, pred_s = run_row(name, train, test, seed)
                base = {"command": command, "row": name, "dataset": d, "seed": seed,
                        "shots": 0 if name.startswith("mutual") else SHOTS,
                        "backbone": backbone, **kw, "n_test": len(test), "fit_seconds": round(fit_s, 2),
                        "images_per_second": round(len(test) / pred_s, 2)}
                for h in ("all", "dev", "unseen"):
                    row = base | {"half": h} | score(test, preds, [h == "all" or x == h for x in half])
                    rows.append(row)
                    with out.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                print(d, name, seed, {k: None if rows[-3][k] is None else round(rows[-3][k], 3) for k in METRICS},
                      f"{base['images_per_second']} img/s", file=sys.stderr, flush=True)
    write_markdown(rows, datasets, args)
    return 0


def _seed_note(rows: list[dict]) -> str:
    """Which rows ran on which seeds, e.g. 'seeds 0, 1, 2: patchcore effnet ...; seeds 0, 1: ...'."""
    seeds: dict[str, set] = {}
    for r in rows:
        seeds.setdefault(r["row"], set()).add(r["seed"])
    by: dict[tuple, list[str]] = {}
    for name in ROWS:
        if len(seeds.get(name, ())) > 1:
            by.setdefault(tuple(sorted(seeds[name])), []).append(name)
    return "; ".join(f"seeds {', '.join(map(str, k))}: {', '.join(v)}" for k, v in by.items()) or "none"


def objects_target(rows: list[dict]) -> list[str]:
    """Pixel AUROC of the DINOv2 rows on the small-defect object sets against the issue's target of 0.95."""
    out = []
    for name in ROWS:
        if "dinov2" not in name:
            continue
        cells = []
        for d in OBJECTS:
            v = [r["pixel_auroc"] for r in rows if r["row"] == name and r["dataset"] == d and r["half"] == "all"]
            if v:
                cells.append(f"{d} {statistics.mean(v):.3f}")
        if cells:
            low = min(float(c.split()[1]) for c in cells)
            out.append(f"- {name}: " + ", ".join(cells) + (" (all >= 0.95)" if low >= 0.95 else " (below 0.95)"))
    return out


def verdict(rows: list[dict], new: str, old: str, half: str) -> str | None:
    """The rule defaults are chosen by: ``new`` replaces ``old`` only if it is better on most of the (dataset, metric)
    cells both ran and worse nowhere by more than the seed spread there (means over the seeds both rows ran on that
    set; a set run on one seed, or a deterministic row such as zero-shot ``mutual``, has no spread, so any loss
    counts; differences under ``TIE`` are ties). None if nothing to compare."""
    cells = list(_cells(rows, new, old, half, common_seeds=True))
    wins, losses = sum(c[2] >= TIE for c in cells), sum(c[2] <= -TIE for c in cells)
    beyond = [f"{d} {m.replace('_auroc', '')} {diff:+.3f} (spread {spread:.3f})" for d, m, diff, spread in cells
              if -diff >= TIE and -diff > spread]
    if not cells:
        return None
    ok = wins > len(cells) / 2 and not beyond
    return (f"{new} vs {old} ({half}): better on {wins} of {len(cells)} cells, worse on {losses}; losses beyond the "
            f"seed spread: {', '.join(beyond) or 'none'} -> {'qualifies' if ok else 'does not qualify'} under the rule")


def verdict_lines(rows: list[dict], pairs, *, acting: str = "") -> list[str]:
    """The rule's verdict per (new, old) pair and half, as bullet lines; with ``acting`` (the label of the list),
    judged over the sets where ``new`` changes a map (:func:`acting_sets`), which the line names."""
    out = []
    for new, old in pairs:
        sel, named = rows, ""
        if acting:
            sets = acting_sets(rows, new, old)
            sel, named = [r for r in rows if r["dataset"] in sets], f" ({acting}: {', '.join(sorted(sets))})"
        for h in ("dev", "unseen"):
            v = verdict(sel, new, old, h)
            if v:
                out.append(f"- {v}{named}")
    return out


DINO_DEFAULT = "patchcore dinov2 default"  # `area` 364 `min_side` 224 `max_downscale` 3 since 2026-12-03
DINO_BEFORE = "patchcore dinov2 area 280 default (before)"  # `area` 280 `min_side` 224 `max_downscale` 3
_PC_DEFAULT = "patchcore dinov2 area 364 min 224 down 3"
# sets where `area` 364 and `area` 280 give the same input (both shrink these 2,048-px images 3x, to 518 x 686)
SAME_INPUT_364_280 = ("large", "large-brick", "large-coffee")


MUTUAL_DEFAULT = "mutual dinov2 zero-shot default"


def default_rows(rows: list[dict], base: str = "", name: str = DINO_BEFORE) -> list[dict]:
    """A DINOv2 default per set as one row (PatchCore's unless ``base`` says): ``<base> down 3`` where it ran, else
    ``<base>`` (``max_downscale`` 3 leaves those sets' inputs as they were)."""
    base = base or _PC
    down = {r["dataset"] for r in rows if r["row"] == f"{base} down 3"}
    return [r | {"row": name} for r in rows
            if r["row"] == (f"{base} down 3" if r["dataset"] in down else base)]


def dino_default_rows(rows: list[dict]) -> list[dict]:
    """PatchCore's DINOv2 default per set as one row: the `area 364 min 224 down 3` rows where they ran, else the
    `area` 280 default's rows on the sets where both inputs are the same (SAME_INPUT_364_280)."""
    have = {r["dataset"] for r in rows if r["row"] == _PC_DEFAULT}
    return [r | {"row": DINO_DEFAULT} for r in rows if r["row"] == _PC_DEFAULT] + [
        r | {"row": DINO_DEFAULT} for r in default_rows(rows)
        if r["dataset"] not in have and r["dataset"] in SAME_INPUT_364_280]


def acting_sets(rows: list[dict], new: str, old: str) -> set[str]:
    """Sets where ``new`` changes some metric of some seed against ``old`` (an option that leaves every map of a set
    as it was, e.g. border rings whose factors are all capped at 1 there, says nothing about it either way, like
    ``max_downscale`` on images it does not shrink)."""
    def values(name: str) -> dict:
        return {(r["dataset"], r["seed"], r["half"]): tuple(r.get(m) for m in METRICS) for r in rows
                if r["row"] == name}

    a, b = values(new), values(old)
    return {k[0] for k in a.keys() & b.keys() if a[k] != b[k]}


GEOMETRY_LADDER = {  # DINOv2 long sides compared per set, the square 224 default first
    "patchcore": ("patchcore dinov2 square 224", "patchcore dinov2 area 224 min 224", "patchcore dinov2 area 280",
                  "patchcore dinov2 area 280 min 224",
                  "patchcore dinov2 aspect 308", "patchcore dinov2 area 308", "patchcore dinov2 aspect 448"),
    "mutual": ("mutual dinov2 zero-shot square 224", "mutual dinov2 zero-shot area 224 min 224",
               "mutual dinov2 zero-shot area 280",
               "mutual dinov2 zero-shot area 280 min 224", "mutual dinov2 zero-shot aspect 308",
               "mutual dinov2 zero-shot area 308", "mutual dinov2 zero-shot aspect 448"),
}


_PC = "patchcore dinov2 area 280 min 224"
_PE = "patchcore effnet area 224"  # the efficientnet-lite0 default
_MU = "mutual dinov2 zero-shot area 224 min 224"  # mutual's DINOv2 default
BORDER_PAIRS = tuple((f"{_PE} {v}", _PE) for v in ("pool exclude", "pool reflect", "rings 3 uncapped",
                                                     "pool exclude rings 3 uncapped", "rings 3", "pool sqrt",
                                                     "pool sqrt rings 3")) + (
    (f"{_PC} down 3 rings 3", _PC),)  # DINOv2: down 3 acts on none of the sets this row ran on
DOWNSCALE_PAIRS = tuple((f"{base} down {a}", f"{base} down {b}" if b else base)
                        for base in (_PC, _PE, _MU) for a, b in ((4, None), (3, None), (3, 4)))


def geometry_ladder(rows: list[dict]) -> list[str]:
    """Pixel AUROC per set of the DINOv2 rows of GEOMETRY_LADDER, each half, with images/s (sets where the square
    224 row and another ran)."""
    out = []
    for names in GEOMETRY_LADDER.values():
        ran = {(r["row"], r["dataset"]) for r in rows}
        sets = [d for d in dict.fromkeys(r["dataset"] for r in rows)
                if (names[0], d) in ran and any((n, d) in ran for n in names[1:])]
        if not sets:
            continue
        out += ["| row | half | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
        for half in ("dev", "unseen", "all"):
            for n in names:
                cells = [_cell(g, "pixel_auroc") if g else "n/a" for d in sets for g in [
                    [r for r in rows if r["row"] == n and r["dataset"] == d and r["half"] == half]]]
                out.append(f"| {n} | {half} | " + " | ".join(cells) + " |")
        for n in names:
            cells = [f"{statistics.median(g):.1f}" if g else "n/a" for d in sets for g in [[
                r["images_per_second"] for r in rows if r["row"] == n and r["dataset"] == d and r["half"] == "all"]]]
            out.append(f"| {n} | images/s | " + " | ".join(cells) + " |")
        out.append("")
    return out


def speed_ratios() -> list[str]:
    """The cost-ratio tables of the interleaved DINOv2 speed runs (eval/bench_geometry_speed.py), where present."""
    out = []
    for name, what in (("geometry_speed_dinov2.md", "PatchCore"), ("geometry_speed_dinov2_mutual.md", "mutual")):
        path = RESULTS / name
        if path.is_file() and "Cost relative" in (text := path.read_text()):
            table = text[text.index("Cost relative"):].strip().splitlines()
            out += [f"{what}, from {name} (interleaved rounds): " + table[0], *table[1:], ""]
    return out


# (vlm-ad row, reference row): the defaults, and one vlm-ad row at the reference's own settings (a check that the two
# implementations agree where their settings do; they still differ in coreset 100% vs 10%), and the reference with
# vlm-ad's border pooling against itself (what that one difference does)
REFERENCE_PAIRS = (("patchcore effnet area 224", REF_EFF), ("patchcore effnet area 256", REF_EFF),
                   ("patchcore effnet area 288", REF_EFF), ("patchcore effnet area 224 down 4", REF_EFF),
                   ("patchcore effnet area 224 down 3", REF_EFF), ("patchcore dinov2 square 224", REF_DINO),
                   ("patchcore dinov2 area 280", REF_DINO), ("patchcore dinov2 area 280 min 224", REF_DINO),
                   ("patchcore dinov2 area 224 min 224", REF_DINO),
                   ("patchcore dinov2 area 280 min 224 down 4", REF_DINO),
                   ("patchcore dinov2 area 280 min 224 down 3", REF_DINO),
                   (DINO_BEFORE, REF_DINO),
                   (DINO_DEFAULT, REF_DINO),
                   ("patchcore dinov2 area 336 min 224 down 3", REF_DINO),
                   ("patchcore dinov2 area 364 min 224 down 3", REF_DINO),
                   ("patchcore dinov2 area 364 min 224 down 3 b7", REF_DINO),
                   ("patchcore dinov2 aspect 448 b7", REF_DINO),
                   *((f"{_PE} sigma {s}", REF_EFF) for s in (2, 3, 6)),
                   *((f"{_PC_DEFAULT} sigma {s}", REF_DINO) for s in (2, 3, 6)),
                   (f"{_PE} coreset 0.1", REF_EFF), (f"{_PC_DEFAULT} coreset 0.1", REF_DINO),
                   *((f"{_PE} pool {w}", REF_EFF) for w in (1, 5)),
                   *((f"{_PC_DEFAULT} pool {w}", REF_DINO) for w in (1, 5)),
                   ("patchcore dinov2 square 364", REF_DINO), ("patchcore dinov2 area 392 min 224 down 3", REF_DINO),
                   *((f"{_PE} pool {w}", REF_EFF) for w in ("1+3", "3+1")),
                   *((f"{_PC_DEFAULT} pool {w}", REF_DINO) for w in ("1+3", "3+1")),
                   (f"{_PE} pool exclude", REF_EFF), (f"{_PE} pool sqrt", REF_EFF),
                   (f"{_PE} pool sqrt rings 3", REF_EFF),
                   (REF_EFF + ", padding counted", REF_EFF))


def against_reference(rows: list[dict]) -> list[str]:
    """Per set, the first row of each pair minus the second (seed means over the seeds both ran, all test images),
    losses beyond the seed spread in bold; a summary line per pair."""
    out = []
    for new, ref in REFERENCE_PAIRS:
        cells = list(_cells(rows, new, ref, "all", common_seeds=True))
        if not cells:
            continue
        by_set: dict[str, list[str]] = {}
        for d, _m, diff, spread in cells:
            text = f"{diff:+.3f}"
            by_set.setdefault(d, []).append(f"**{text}**" if -diff > spread and -diff >= TIE else text)
        behind = [f"{d} {m.split('_')[0]} {diff:+.3f} (spread {spread:.3f})" for d, m, diff, spread in cells
                  if -diff > spread and -diff >= TIE]
        out += [f"### {new} minus {ref}", "", "| set | image / pixel / AUPRO |", "|---|---|",
                *(f"| {d} | {' / '.join(v)} |" for d, v in by_set.items()), "",
                f"At least as good on {sum(c[2] > -TIE for c in cells)} of {len(cells)} (set, metric) cells; behind "
                f"by more than the seed spread: {', '.join(behind) or 'none'}.", ""]
    return out


def write_markdown(rows: list[dict], datasets: list[str], args) -> None:
    sizes = {d: rows_n for d, rows_n in {r["dataset"]: r["n_test"] for r in rows}.items()}
    first = "PYTHONPATH=. nice python eval/bench_generalization.py --seeds 0 1 2 --threads 2"  # rows of the first
    cmd = "`, then `".join(dict.fromkeys(r.get("command", first) for r in rows))  # run did not record their command
    text = [
        "# Generalization: input geometry across a varied suite",
        "",
        f"Produced by `{cmd}` (2 shared CPU cores). 8 normal shots drawn from {N_TRAIN} training images with each "
        "seed (PatchCore coreset off; mutual is zero-shot: batches of 16 test images score each other); cells with ± "
        "are mean ± std over the seeds run for that cell (" + _seed_note(rows) + "), the others seed 0 only. Test "
        "images per set: "
        + ", ".join(f"{d} {n}" for d, n in sizes.items())
        + " (halves: seeded, half of the normal and half of the anomalous images each). Datasets: see the module "
        "docstring of eval/bench_generalization.py. Cells: image AUROC / pixel AUROC / AUPRO@0.3 (textile: image "
        "labels only).",
        "",
        "## dev half (used to choose the defaults)",
        "",
        *table(rows, "dev", datasets),
        "",
        "## unseen half (kept out of the choice)",
        "",
        *table(rows, "unseen", datasets),
        "",
        "## all test images",
        "",
        *table(rows, "all", datasets),
        "",
        "## images/s at predict (median over seeds; includes preprocessing, backbone, search and map resizing)",
        "",
        *speed_table(rows, datasets),
        "",
        "## small-defect objects: DINOv2 pixel AUROC against the target of 0.95 (all test images, seed mean)",
        "",
        *objects_target(rows),
        "",
        "## DINOv2 input size: pixel AUROC per set at square 224 / area 224 min 224 / area 280 / area 280 min 224 / "
        "aspect 308 / area 308 / aspect 448",
        "",
        "`min 224`: the short side at least 224 px (`-o min_side=224`; a 320 x 800 image is seen at 224 x 560; at area "
        "280, 3:4 and square images as without it; at area 224, 3:4 at 224 x 294). Sets where square 224 (the DINOv2 "
        "default before `area 280 min 224` became PatchCore's and `area 224 min 224` mutual's) and another of these "
        "rows ran; seed mean ± std where several seeds ran "
        "(seeds: see the top), mutual seed 0 only. The images/s lines are this file's timings on a shared machine "
        "(noisy: rows ran at different times and loads); the interleaved measure is "
        "eval/results/geometry_speed_dinov2.md.",
        "",
        *geometry_ladder(rows),
        *speed_ratios(),
        "## against the reference PatchCore (issue 12's target: every PatchCore row at least as good)",
        "",
        f"`{REF_EFF}` / `{REF_DINO}`: eval/reference_patchcore.py, the recipe issue 12 measured vlm-ad against, "
        "written apart from vlm_ad's detectors (same network weights; long side kept, aspect kept, 3 x 3 average "
        "aggregation over the cells inside the grid, greedy coreset 10%, exact kNN, max patch distance, Gaussian "
        "sigma 4 at the input); `, padding counted`: the same with the 3 x 3 average counting the zero padding at the "
        "border, as vlm_ad and anomalib pool. Cells: the first row minus the second, all test images, means over the "
        "seeds both ran; bold: behind by more than the seed spread.",
        "",
        *against_reference(rows + default_rows(rows) + dino_default_rows(rows)),
        "## decision",
        "",
    ]
    pairs = [(n, OLD) for n in ROWS if n.startswith("patchcore effnet") and n != OLD] + [
        ("patchcore dinov2 area 224", "patchcore dinov2 square 224"),
        ("patchcore dinov2 area 280", "patchcore dinov2 square 224"),
        ("patchcore dinov2 area 280 min 224", "patchcore dinov2 square 224"),
        ("patchcore dinov2 area 224 min 224", "patchcore dinov2 square 224"),
        ("patchcore dinov2 area 224 min 224", "patchcore dinov2 area 280 min 224"),
        *DOWNSCALE_PAIRS,
        ("patchcore dinov2 aspect 308", "patchcore dinov2 square 224"),
        ("patchcore dinov2 area 308", "patchcore dinov2 square 224"),
        ("patchcore dinov2 aspect 448", "patchcore dinov2 square 224"),
        ("patchcore dinov2 aspect 448 b7", "patchcore dinov2 square 224"),
        ("padim effnet area 224", "padim effnet square 224"),
        ("mutual dinov2 zero-shot area 280", "mutual dinov2 zero-shot square 224"),
        ("mutual dinov2 zero-shot area 280 min 224", "mutual dinov2 zero-shot square 224"),
        ("mutual dinov2 zero-shot area 224 min 224", "mutual dinov2 zero-shot square 224"),
        ("mutual dinov2 zero-shot aspect 308", "mutual dinov2 zero-shot square 224"),
        ("mutual dinov2 zero-shot area 308", "mutual dinov2 zero-shot square 224"),
        ("mutual dinov2 zero-shot aspect 448", "mutual dinov2 zero-shot square 224"),
        ("mutual dinov2 zero-shot aspect 448 b7", "mutual dinov2 zero-shot square 224")]
    for new, old in pairs:
        for h in ("dev", "unseen"):
            if any(r["row"] == new for r in rows) and any(r["row"] == old for r in rows):
                text.append(f"- {compare(rows, new, old, h)}")
    text += ["", "Rule for a default (issue 12): better on most of the suite and worse nowhere by more than the seed "
             f"spread (differences under {TIE} count as ties); the dev half chooses, the unseen half checks. DINOv2 "
             "input sizes against square 224 (the old default):",
             ""]
    text += verdict_lines(rows, [(new, names[0]) for names in GEOMETRY_LADDER.values() for new in names[1:]])
    text += ["", "`max_downscale` on PatchCore's input (DINOv2, efficientnet-lite0) and mutual's (it acts on images "
             "over about 3-4 x their input only: the 1,200- and 2,048-px sets; elsewhere the input and the rows are "
             "the same):", ""]
    text += verdict_lines(rows, DOWNSCALE_PAIRS)
    text += ["", "The grid's border for PatchCore against its defaults (`pool_pad`: what the 3 x 3 pooling sees past "
             "the border; `rings` 3: each of the 3 outer rings of cells scaled so that its mean leave-image-out score "
             "on the normal shots matches the interior's, at most 1x unless uncapped):", ""]
    text += verdict_lines(rows, BORDER_PAIRS, acting="sets where it changes a map")
    merged = rows + default_rows(rows)
    text += ["", "PatchCore's DINOv2 input at the reference's long side 448 or at the area of a 336- or 364-px "
             "square (aspect kept, `min_side` 224, "
             f"`max_downscale` 3) against `{DINO_BEFORE}` (`area` 280 `min_side` 224 `max_downscale` 3: the `down 3` "
             "rows where they ran, else `area 280 min 224`, the same input there), over the sets where the input "
             "differs:", ""]
    text += verdict_lines(merged, [(f"patchcore dinov2 {g} min 224 down 3", DINO_BEFORE)
                                   for g in ("aspect 448", "area 336", "area 364")], acting="sets")
    text += ["", f"`{_PC_DEFAULT}` qualifies on both halves and became PatchCore's dinov2-s14 default "
             f"(`{DINO_DEFAULT}` in the reference comparison above: its rows, and on {', '.join(SAME_INPUT_364_280)}, "
             "where both inputs are the same 518 x 686 image, the `area` 280 rows). Block 7 alone (the reference's "
             "layer) at that input, against it:", ""]
    text += verdict_lines(rows, [(f"{_PC_DEFAULT} b7", _PC_DEFAULT)])
    text += ["", f"efficientnet-lite0's input size against its `area` 224 default (`{_PE}`):", ""]
    text += verdict_lines(rows, [(f"patchcore effnet area {n}", _PE) for n in (256, 288)])
    text += ["", "Map smoothing (`sigma`: the Gaussian's std in pixels of a 256-px long side of the input; 4, "
             "anomalib's, is every detector's default and was never chosen on this suite) at 2, 3 and 6 against 4, "
             f"at each backbone's default input (`{_PE}`; `{DINO_DEFAULT}`):", ""]
    text += verdict_lines(rows, [(f"{_PE} sigma {s}", _PE) for s in (2, 3, 6)])
    text += verdict_lines(rows + dino_default_rows(rows), [(f"{_PC_DEFAULT} sigma {s}", DINO_DEFAULT)
                                                           for s in (2, 3, 6)])
    merged = rows + default_rows(rows, _MU, MUTUAL_DEFAULT)
    text += ["", f"The same for zero-shot `mutual` against `{MUTUAL_DEFAULT}` (one run: no seed spread, so every loss "
             "counts):", ""]
    text += verdict_lines(merged, [(f"{_MU} down 3 sigma {s}", MUTUAL_DEFAULT) for s in (2, 3)])
    text += ["", "Zero-shot `mutual`'s neighbours: a patch's score is the mean of its `ceil(frac x n_ref)` smallest "
             "per-reference distances (`frac` 0.3, the default; 15 references here), at 0.1 and 0.5 against 0.3:", ""]
    text += verdict_lines(merged, [(f"{_MU} down 3 frac {f}", MUTUAL_DEFAULT) for f in (0.1, 0.5)])
    text += ["", "PatchCore's coreset at 8 shots: the rows above keep every patch (coreset off), the product's "
             "`coreset` default keeps 10% (greedy k-center, as the reference) whatever the shot count. Every patch and "
             "25% against 10%, at each backbone's default input:", ""]
    text += verdict_lines(rows, [(_PE, f"{_PE} coreset 0.1"), (f"{_PE} coreset 0.25", f"{_PE} coreset 0.1")])
    text += verdict_lines(rows + dino_default_rows(rows), [(DINO_DEFAULT, f"{_PC_DEFAULT} coreset 0.1"), (
        f"{_PC_DEFAULT} coreset 0.25", f"{_PC_DEFAULT} coreset 0.1")])
    text += ["", "PatchCore's local neighbourhood (`pool`: the side of the average-pooling window over each layer; 3, "
             "the PatchCore paper's and anomalib's, had been measured on magnetic_tile alone) at 1 (no pooling) and 5 "
             "against 3, at each backbone's default input; the last line: zero-shot `mutual` (one run, every loss "
             "counts) without pooling:", ""]
    text += verdict_lines(rows, [(f"{_PE} pool {w}", _PE) for w in (1, 5)])
    text += verdict_lines(rows + dino_default_rows(rows), [(f"{_PC_DEFAULT} pool {w}", DINO_DEFAULT) for w in (1, 5)])
    text += verdict_lines(merged, [(f"{_MU} down 3 pool 1", MUTUAL_DEFAULT)])
    text += ["", "One window per layer (`pool=[shallow, deep]`): pooling only the deep layer (1+3: block4 / block5 "
             "unpooled) or only the shallow one (3+1), against 3 on both, at each backbone's default input:", ""]
    text += verdict_lines(rows, [(f"{_PE} pool {w}", _PE) for w in ("1+3", "3+1")])
    text += verdict_lines(rows + dino_default_rows(rows),
                          [(f"{_PC_DEFAULT} pool {w}", DINO_DEFAULT) for w in ("1+3", "3+1")])
    text += verdict_lines(merged, [(f"{_MU} down 3 pool 3+1", MUTUAL_DEFAULT)])
    text += ["", "Keeping the aspect ratio at equal cost: PatchCore's DINOv2 default against the old square squash at "
             "its pixel count (`square` 364; images/s: eval/results/geometry_speed_dinov2_square364.md; on the 1,200- "
             "and 2,048-px sets the default's `max_downscale` 3 gives it more pixels, so those cells cost more):", ""]
    text += verdict_lines(rows + dino_default_rows(rows), [(DINO_DEFAULT, "patchcore dinov2 square 364")])
    text += ["", "A larger DINOv2 input, the pixel count of a 392-px square (340 x 453 on 3:4 images, about the "
             "reference's 336 x 448; the 1,200- and 2,048-px sets barely change, `max_downscale` 3 already holds them "
             "at 400 px or more), against the default:", ""]
    text += verdict_lines(rows + dino_default_rows(rows), [("patchcore dinov2 area 392 min 224 down 3", DINO_DEFAULT)])
    text += ["", f"Zero-shot `mutual` on efficientnet-lite0 against `{MUTUAL_DEFAULT}` (dinov2-s14, `area` 224 "
             "`min_side` 224 `max_downscale` 3; the `down 3` rows where they ran): which backbone `vlm-ad fit "
             "--detector mutual` takes when none is given:", ""]
    text += verdict_lines(merged, [("mutual effnet zero-shot area 224", MUTUAL_DEFAULT)])
    (RESULTS / "generalization.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    raise SystemExit(main())
