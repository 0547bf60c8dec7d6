"""Library functions behind ``vlm-ad fit / detect / eval``: open data, fit with k shots, evaluate, write outputs."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.data import ImageDataset, MVTecDataset, TextileDataset
from vlm_ad.detectors import Detector, create_detector
from vlm_ad.errors import ConfigError
from vlm_ad.types import AnomalyMap, Sample

TEXTILE = "textile"  # the DATA name of the embedded textile benchmark

Progress = Callable[[int], None]


def open_data(data: str | Path, *, textile_test: int | None = None, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of an MVTec-layout category folder, or of the textile benchmark when ``data == "textile"``.

    Args:
        data: a category folder (``train/good``, ``test/<type>``, optional ``ground_truth``) or ``"textile"``.
        textile_test: balanced subsample size of the textile test split (None = all 1,800 test images).
        seed: seed of the textile split and subsample.
    """
    if str(data) == TEXTILE:
        return TextileDataset("train", seed=seed), TextileDataset("test", seed=seed, limit_test=textile_test)
    return MVTecDataset(data, "train"), MVTecDataset(data, "test")


def select_shots(train: ImageDataset, shots: int | None, seed: int) -> list[Sample]:
    """All normal training images (``shots=None``), none (0), or ``shots`` of them drawn with ``seed``."""
    if shots is None:
        return [train[i] for i in train.normal_indices()]
    if shots < 0:
        raise ConfigError(f"--shots must be >= 0 (0 = zero-shot), got {shots}")
    return [] if shots == 0 else [train[i] for i in train.sample_shots(shots, seed=seed)]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class EvalResult:
    """Metrics and costs of one detector on one test split."""

    metrics: dict[str, Any]
    maps: list[AnomalyMap] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return dict(self.metrics)


def fit_detector(
    train: ImageDataset, *, detector: str, backbone: str, shots: int | None = None, seed: int = 0,
    progress: Progress | None = None, **kwargs: Any,
) -> tuple[Detector, float]:
    """Create and fit a detector on ``shots`` normal images; returns it and the fit wall time in seconds."""
    normal = select_shots(train, shots, seed)
    if shots != 0 and not normal:
        raise ConfigError("no normal training images found; use --shots 0 for zero-shot detectors")
    det = create_detector(detector, backbone=backbone, seed=seed, **kwargs)
    t0 = time.perf_counter()
    det.fit(normal, progress=progress)
    return det, time.perf_counter() - t0


def evaluate_detector(
    det: Detector, test: ImageDataset, *, batch: int = 32, progress: Progress | None = None
) -> EvalResult:
    """Predict every test image and compute the metric suite (pixel metrics when every anomaly has a mask)."""
    from vlm_ad.metrics import evaluate

    samples, maps = [], []
    # a seeded shuffle, so that batches mix categories as a user's stream would (it matters to 'mutual' only)
    order = np.random.default_rng(0).permutation(len(test)).tolist()
    t0 = time.perf_counter()
    for start in range(0, len(test), batch):
        chunk = [test[i] for i in order[start : start + batch]]
        maps += det.predict(chunk, progress=progress)
        samples += [Sample(np.empty(0), s.image_id, s.label, s.defect_type, s.mask) for s in chunk]  # drop pixels
    seconds = time.perf_counter() - t0
    labels = [s.label for s in samples]
    with_masks = test.has_masks
    metrics = evaluate(labels, [m.score for m in maps],
                       masks=[s.mask for s in samples] if with_masks else None,
                       maps=[m.map for m in maps] if with_masks else None)
    metrics.update(n_test=len(samples), predict_seconds=seconds, images_per_second=len(samples) / seconds,
                   backbone_seconds=det.timings_["embed"], scoring_seconds=det.timings_["score"],
                   peak_rss_mb=peak_rss_mb())
    return EvalResult(metrics, maps)


def write_detection(amap: AnomalyMap, image: np.ndarray, out_dir: Path, stem: str, *, region_threshold: float | None
                    ) -> dict[str, Any]:
    """Write ``<stem>.json`` (score, label, threshold, regions, nearest exemplars) and ``<stem>_overlay.png``."""
    from PIL import Image

    from vlm_ad.regions import find_regions
    from vlm_ad.viz import overlay

    thr = amap.threshold if region_threshold is None else region_threshold
    amap.regions = find_regions(amap.map, thr) if thr is not None else []
    record = amap.to_json()
    vmax = max(float(thr) * 1.5 if thr else float(amap.map.max()), 1e-6)
    over = overlay(image, amap.map, vmin=0.0, vmax=vmax)
    tmp = out_dir / f".{stem}_overlay.png.tmp"
    Image.fromarray(over).save(tmp, format="PNG")
    tmp.replace(out_dir / f"{stem}_overlay.png")
    atomic_write_bytes(out_dir / f"{stem}.json", json.dumps(record, indent=2).encode())
    return record


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems made unique (``a``, ``a-2``, ...) so outputs of same-named inputs do not overwrite each other."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = seen.get(p.stem, 0) + 1
        seen[p.stem] = n
        out.append(p.stem if n == 1 else f"{p.stem}-{n}")
    return out
