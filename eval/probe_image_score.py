"""Image score from the smoothed map's maximum (the product) or from the raw patch grid's (the reference's)?

PatchCore's image score is the maximum of its smoothed map, so that a score above the threshold always comes with a
map region above it. The reference PatchCore of issue 12 (eval/reference_patchcore.py) scores an image by its largest
patch distance before any smoothing. The one cell where PatchCore's DINOv2 default stays behind the reference is
coins image AUROC (0.958 vs 0.988). This probe scores the same predictions both ways: PatchCore at each backbone's
default input, 8 shots per seed, coreset off, the sets and halves of eval/bench_generalization.py.

    PYTHONPATH=. python eval/probe_image_score.py [--seeds 0 1 2] [--datasets ...] [--backbones ...]

Writes eval/results/probe_image_score.jsonl; eval/render_probes.py renders it into probes.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalization as bg  # noqa: E402

from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.detectors.base import Detector  # noqa: E402
from vlm_ad.evaluation.detection import evaluate  # noqa: E402

OUT = bg.RESULTS / "probe_image_score.jsonl"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=["coins", "coffee", "clock", "square", "magnetic", "elongated",
                                                      "gray-elongated"])
    ap.add_argument("--backbones", nargs="+", default=["dinov2-s14", "efficientnet-lite0"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    raw: dict[str, float] = {}
    original = Detector._to_maps

    def to_maps(self, grids, sizes, ids, hits):  # record each image's raw patch-grid maximum, then go on as before
        for i, g in zip(ids, grids):
            raw[i] = float(g.max())
        return original(self, grids, sizes, ids, hits)

    Detector._to_maps = to_maps
    suite = bg.load_suite()
    rows = []
    try:
        for d in args.datasets:
            train, test = suite[d]()
            half = bg.halves(test)
            for backbone in args.backbones:
                for seed in args.seeds:
                    det = create_detector("patchcore", backbone=backbone, seed=seed, coreset=1.0)
                    det.fit(bg._shots(train, seed))
                    raw.clear()
                    maps = []
                    for start in range(0, len(test), 16):
                        maps += det.predict(test[start : start + 16])
                    smoothed = [m.score for m in maps]
                    unsmoothed = [raw[m.image_id] for m in maps]
                    for h in ("all", "dev", "unseen"):
                        sel = [i for i, x in enumerate(half) if h == "all" or x == h]
                        labels = [test[i].label for i in sel]
                        rows.append({"dataset": d, "backbone": backbone, "seed": seed, "half": h,
                                     "smoothed max": evaluate(labels, [smoothed[i] for i in sel])["image_auroc"],
                                     "raw patch max": evaluate(labels, [unsmoothed[i] for i in sel])["image_auroc"]})
                    print(d, backbone, seed, {k: round(v, 3) for k, v in rows[-3].items() if isinstance(v, float)},
                          file=sys.stderr, flush=True)
    finally:
        Detector._to_maps = original
    OUT.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
