"""Probe: do flipped copies of the few normal shots make a better PatchCore memory bank?

A common few-shot trick: add each normal shot flipped left-right, top-bottom and both (4 x the bank) so that normal
variation the 8 shots miss (a tile's texture at another orientation) is no longer scored as anomalous. The probe runs
PatchCore (efficientnet-lite0, the product's input geometry `area 224`, coreset off) on the 8 shots of
eval/bench_generalization.py and on the same shots with their flips, over the suite's sets, and writes one JSON line
per (set, seed, bank) with image AUROC / pixel AUROC / AUPRO on the dev half, the unseen half and all test images.
eval/render_probes.py renders it into eval/results/probes.md.

    PYTHONPATH=. python eval/probe_augment.py --datasets magnetic square gray-elongated elongated coins clock coffee \
        textile --seeds 0 1 2 --out eval/results/probe_augment.jsonl
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalization as bg  # noqa: E402
from probe_patch_naming import suite_main  # noqa: E402

from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.types import Sample  # noqa: E402

FLIPS = {"left-right": (1,), "top-bottom": (0,), "both": (0, 1)}


def flipped(s: Sample, axes: tuple[int, ...]) -> Sample:
    return dataclasses.replace(s, image=np.ascontiguousarray(np.flip(s.image, axes)), mask=None)


def run(train: list[Sample], test: list[Sample], seed: int, augment: bool) -> dict:
    normal = bg._shots(train, seed)
    bank = normal + [flipped(s, axes) for s in normal for axes in FLIPS.values()] if augment else normal
    det = create_detector("patchcore", backbone=bg.EFF, seed=seed, coreset=1.0, geometry="area", image_size=224)
    det.fit(bank)
    preds = []
    for start in range(0, len(test), 16):
        preds += [(m.score, m.map) for m in det.predict(test[start : start + 16])]
    half = bg.halves(test)
    return {h: bg.score(test, preds, [h in ("all", x) for x in half]) for h in ("dev", "unseen", "all")}


def main(argv: list[str] | None = None) -> None:
    suite_main(lambda train, test, seed: ({"bank": "shots + flips" if augment else "shots",
                                           **run(train, test, seed, augment)} for augment in (False, True)),
               datasets=["magnetic", "square", "gray-elongated", "elongated", "coins", "clock", "coffee", "textile"],
               description=__doc__.split("\n\n")[0], argv=argv)


if __name__ == "__main__":
    main()
