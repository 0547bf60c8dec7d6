"""Can the fit images alone tell when PatchCore should skip its 3 x 3 pooling?

PatchCore's DINOv2 default pools each layer over 3 x 3 cells. Without pooling (``pool`` 1) it is the only row of
eval/bench_generalization.py at least as good as the reference PatchCore on every cell (coins image AUROC 0.958 ->
0.992, magnetic_tile AUPRO 0.626 -> 0.731), but it loses beyond the seed spread on textures (mid-gravel image AUROC,
gray-elongated pixel AUROC / AUPRO, the 2,048-px coffee set), so it is not the default. A per-dataset choice made at fit
time, on normal images only, could keep both. This probe measures whether the validation set that ``adapted`` chooses
its fusion on (the fit images leave-image-out, plus synthetic-anomaly copies of them: painted defects and cut-paste;
no test labels) prefers the same pooling as the test images do: for each set and seed it fits PatchCore at the
dinov2-s14 default input with pool 3 and pool 1 (8 shots, coreset off, as the suite), scores both on that validation
set (image AUROC of the smoothed map maximum, patch AUROC; the paired bootstrap of
:mod:`vlm_ad.detectors.fuse_choice` for how sure pool 1's gain in their mean is), then on the suite's test images.

    PYTHONPATH=. python eval/probe_pool_choice.py [--seeds 0 1 2] [--datasets ...] [--backbone dinov2-s14]

Writes eval/results/probe_pool_choice.jsonl (one line per set, seed and pool; validation and test figures per half).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalization as bg  # noqa: E402

from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.detectors.adapted import patch_labels, synthetic_validation  # noqa: E402
from vlm_ad.detectors.fuse_choice import fuse_table  # noqa: E402

OUT = bg.RESULTS / "probe_pool_choice.jsonl"
POOLS = (3, 1)  # the default first: fuse_table's base key 1.0 is pool 3, its challenger 0.0 pool 1


def validation(det, shots) -> dict:
    """Leave-image-out grids of the fit images and of synthetic-anomaly copies of them, with labels."""
    arrays = [np.asarray(s.image) for s in shots]
    ids = [s.image_id for s in shots]
    normal = [det.leave_image_out_scores(g[None], [i])[0] for g, i in zip(det._embed(arrays, None), ids)]
    syn, masks, src = synthetic_validation(arrays, seed=det.hyper["seed"])
    anomalous = [det.leave_image_out_scores(g[None], [ids[j]])[0] for g, j in zip(det._embed(syn, None), src)]
    fill = float(torch.cat([g[~torch.isnan(g)] for g in normal]).mean())
    grids = [torch.nan_to_num(g, nan=fill) for g in normal + anomalous]
    labels = [patch_labels(m, tuple(g.shape)) for m, g in zip(masks, anomalous)]
    return {"image": np.array([det.image_score(g) for g in grids]),
            "patch": [g.reshape(-1).numpy() for g in grids],
            "image_labels": np.r_[np.zeros(len(normal), bool), np.ones(len(anomalous), bool)],
            "patch_labels": [np.zeros(g.numel(), bool) for g in normal] + [m.reshape(-1).numpy() for m in labels]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--datasets", nargs="+", default=list(bg.load_suite()))
    ap.add_argument("--backbone", default="dinov2-s14")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = bg.load_suite()
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["seed"], r["backbone"]))
    for d in args.datasets:
        train, test = suite[d]()
        half = bg.halves(test)
        for seed in args.seeds:
            if (d, seed, args.backbone) in done:
                continue
            shots = bg._shots(train, seed)
            val, rows = {}, []
            for pool in POOLS:
                t0 = time.perf_counter()
                det = create_detector("patchcore", backbone=args.backbone, seed=seed, coreset=1.0, pool=pool)
                det.fit(shots)
                val[pool] = validation(det, shots)
                preds = []
                for start in range(0, len(test), 16):
                    preds += [(m.score, m.map) for m in det.predict([s.image for s in test[start : start + 16]])]
                rows.append({"dataset": d, "seed": seed, "backbone": args.backbone, "pool": pool,
                             "seconds": round(time.perf_counter() - t0, 1),
                             "test": {h: bg.score(test, preds, [h == "all" or x == h for x in half])
                                      for h in ("all", "dev", "unseen")}})
            table = fuse_table({1.0: val[3]["image"], 0.0: val[1]["image"]},
                               {1.0: val[3]["patch"], 0.0: val[1]["patch"]},
                               val[3]["image_labels"], val[3]["patch_labels"], seed=seed)
            for r in rows:
                r["validation"] = table
            with args.out.open("a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
            print(d, seed, json.dumps(table), {r["pool"]: {k: round(v, 3) if v is not None else None
                                                             for k, v in r["test"]["all"].items()} for r in rows},
                  file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
