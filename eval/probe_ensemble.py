"""Probe: does averaging the maps of two backbones (efficientnet-lite0 and DINOv2-S/14 PatchCore) beat either one?

Each backbone's PatchCore sees the world differently (a CNN's local texture vs a ViT's patch semantics), so where one
errs the other may not. The probe fits both with the product's defaults (input geometry per backbone, coreset off,
the 8 shots of eval/bench_generalization.py) and scores the test images with each alone and with two mixes that need
no test label: each detector's map and image score put on a common scale by its own normal data, then averaged.

- ``mean z``: (x - mean) / sd of the detector's leave-image-out scores of its normal shots (what its threshold uses).
- ``mean ratio``: x / mean of those scores (a scale only: an 8-shot sd can be small).
- ``ensemble detector``: what was built from it, :mod:`vlm_ad.detectors.ensemble` (``mean ratio``'s maps, scaled by
  the normal shots' leave-image-out maps at image resolution; its score is the mixed map's maximum, not the mean of
  the members' scaled scores).

Writes one JSON line per (set, seed) with image AUROC / pixel AUROC / AUPRO of each row on the dev half, the unseen
half and all test images; eval/render_probes.py renders it into eval/results/probes.md.

    PYTHONPATH=. python eval/probe_ensemble.py --seeds 0 1 2 --out eval/results/probe_ensemble.jsonl
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalization as bg  # noqa: E402
from probe_patch_naming import suite_main  # noqa: E402

from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.types import Sample  # noqa: E402

ROWS = ("effnet", "dinov2", "mean z", "mean ratio", "ensemble detector")


def _fit_predict(backbone: str, normal: list[Sample], test: list[Sample], seed: int):
    det = create_detector("patchcore", backbone=backbone, seed=seed, coreset=1.0)
    det.fit(normal)
    preds = []
    for start in range(0, len(test), 16):
        preds += [(m.score, m.map) for m in det.predict(test[start : start + 16])]
    return preds, np.asarray(det.calibration_scores_, dtype=np.float64)


def _scaled(preds, cal: np.ndarray, how: str):
    if how == "z":
        mu, sd = float(cal.mean()), float(cal.std() + 1e-12)
        return [((s - mu) / sd, (m - mu) / sd) for s, m in preds]
    mu = float(cal.mean())
    return [(s / mu, m / mu) for s, m in preds]


def run(train: list[Sample], test: list[Sample], seed: int) -> dict:
    normal = bg._shots(train, seed)
    eff, cal_e = _fit_predict(bg.EFF, normal, test, seed)
    dino, cal_d = _fit_predict(bg.DINO, normal, test, seed)
    rows = {"effnet": eff, "dinov2": dino}
    for how in ("z", "ratio"):
        a, b = _scaled(eff, cal_e, how), _scaled(dino, cal_d, how)
        rows[f"mean {how}"] = [((sa + sb) / 2, (ma + mb) / 2) for (sa, ma), (sb, mb) in zip(a, b)]
    det = create_detector("ensemble", seed=seed, coreset=1.0).fit(normal)
    rows["ensemble detector"] = []
    for start in range(0, len(test), 16):
        rows["ensemble detector"] += [(m.score, m.map) for m in det.predict(test[start : start + 16])]
    half = bg.halves(test)
    return {row: {h: bg.score(test, preds, [h in ("all", x) for x in half]) for h in ("dev", "unseen", "all")}
            for row, preds in rows.items()}


def main(argv: list[str] | None = None) -> None:
    suite_main(lambda train, test, seed: [run(train, test, seed)],
               datasets=["magnetic", "square", "gray-elongated", "elongated", "coins", "clock", "coffee", "mid-gravel",
                         "textile"], description=__doc__.split("\n\n")[0], argv=argv)


if __name__ == "__main__":
    main()
