"""Run results: fit a detector on k normal shots, predict a test split, compute the metric suite and costs."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from vlm_ad.data import ImageDataset, select_shots
from vlm_ad.detectors import Detector, create_detector
from vlm_ad.errors import ConfigError
from vlm_ad.evaluation.detection import evaluate
from vlm_ad.types import AnomalyMap, Sample

__all__ = ["EvalResult", "evaluate_detector", "fit_detector", "peak_rss_mb"]

Progress = Callable[[int], None]


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
    train: ImageDataset, *, detector: str, backbone: str | None = None, shots: int | None = None, seed: int = 0,
    progress: Progress | None = None, **kwargs: Any,
) -> tuple[Detector, float]:
    """Create and fit a detector on ``shots`` normal images; returns it and the fit wall time in seconds.
    ``backbone=None`` keeps the detector's own default (an adapted detector reads it from its adapter)."""
    normal = select_shots(train, shots, seed)
    if shots != 0 and not normal:
        raise ConfigError("no normal training images found; use --shots 0 for zero-shot detectors")
    det = create_detector(detector, seed=seed, **({"backbone": backbone} if backbone else {}), **kwargs)
    t0 = time.perf_counter()
    det.fit(normal, progress=progress)
    return det, time.perf_counter() - t0


def split_mask_problems(test: ImageDataset) -> list[str]:
    """The mask problems of a test split whose anomalous images have masks at all (none: image labels only)."""
    return test.mask_problems() if any(it.mask_path is not None for it in test.items if it.label == 1) else []


def evaluate_detector(
    det: Detector, test: ImageDataset, *, batch: int = 32, progress: Progress | None = None,
    mask_problems: list[str] | None = None,
) -> EvalResult:
    """Predict every test image and compute the metric suite. Pixel metrics need a usable mask for every anomalous
    image; otherwise they are left out and ``metrics["pixel_metrics"]`` says why (the problems are listed by
    :meth:`~vlm_ad.data.ImageDataset.mask_problems`; pass ``mask_problems`` when the caller has read them already)."""
    problems = mask_problems if mask_problems is not None else split_mask_problems(test)
    if problems:
        test.drop_masks()
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
    with_masks = test.has_masks and not problems
    metrics = evaluate(labels, [m.score for m in maps],
                       masks=[s.mask for s in samples] if with_masks else None,
                       maps=[m.map for m in maps] if with_masks else None)
    metrics.update(n_test=len(samples), predict_seconds=seconds, images_per_second=len(samples) / seconds,
                   backbone_seconds=det.timings_["embed"], scoring_seconds=det.timings_["score"],
                   peak_rss_mb=peak_rss_mb())
    n_bad = sum(s.label == 1 for s in samples)
    metrics["pixel_metrics"] = "computed" if with_masks else (
        f"skipped: {len(problems)} of {n_bad} anomalous images have no usable mask (first: {problems[0]})"
        if problems else "skipped: no anomalous image has a mask (image labels only)" if n_bad
        else "skipped: the test split has no anomalous image")
    return EvalResult(metrics, maps)
