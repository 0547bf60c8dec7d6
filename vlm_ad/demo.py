"""The offline demo: few-shot PatchCore on the simulated textile benchmark (PyPI ``conformal-clip-data``).

It fits PatchCore on a few normal textile images, scores a handful of normal and defective ones, and writes
an overlay PNG per image. Everything runs offline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vlm_ad.detectors import create_detector
from vlm_ad.types import AnomalyMap


@dataclass
class DemoResult:
    """What the demo measured: one map per test image, their truth, the threshold, the wall time."""

    maps: list[AnomalyMap]
    labels: list[int]
    defect_types: list[str]
    threshold: float | None
    seconds: float
    out_dir: Path


def run_demo(
    out_dir: Path,
    *,
    backbone: str = "dinov2-s14",
    layers: tuple[str, ...] | None = None,
    image_size: int = 448,
    shots: int = 16,
    per_class: int = 6,
    seed: int = 0,
    task: Callable[[str, int], Callable[[int], None]] | None = None,
) -> DemoResult:
    """Run the demo and write ``<out_dir>/<class>_<stem>.png`` overlays.

    Args:
        out_dir: folder for the overlays (created).
        backbone, layers, image_size: the feature extractor.
        shots: normal images to fit on.
        per_class: test images per class (normal, local defect, global defect).
        seed: seed of the image choice.
        task: ``task(description, total)`` returns a progress callback (the CLI passes rich progress bars).
    """
    from vlm_ad.data import TextileDataset
    from vlm_ad.viz import overlay, side_by_side

    t0 = time.perf_counter()
    train = TextileDataset("train", seed=seed)
    normal = [train[i] for i in train.sample_shots(shots, seed=seed)]
    test = TextileDataset("test", seed=seed, limit_test=3 * per_class)
    kw = {"layers": layers} if layers else {}
    det = create_detector("patchcore", backbone=backbone, image_size=image_size, coreset=1.0, **kw)
    det.fit(normal, progress=task("embedding normal images", len(normal)) if task else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    advance = task("scoring test images", len(test)) if task else None
    maps, labels, types = [], [], []
    for i in range(len(test)):
        s = test[i]
        amap = det.predict([s])[0]
        maps.append(amap)
        labels.append(int(s.label))
        types.append(str(s.defect_type))
        vmax = (det.threshold_ or amap.score) * 1.5
        caption = f"{s.defect_type}: score {amap.score:.3f} ({'ANOMALY' if amap.label else 'normal'})"
        name = s.image_id.replace("/", "_").rsplit(".", 1)[0] + ".png"
        side_by_side(s.image, overlay(s.image, amap.map, vmin=0.0, vmax=vmax), caption).save(out_dir / name)
        if advance:
            advance(1)
    return DemoResult(maps, labels, types, det.threshold_, time.perf_counter() - t0, out_dir)
