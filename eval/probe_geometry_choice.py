"""Probe: can PatchCore pick its DINOv2 input size per dataset from the normal shots alone?

For each set of the dev suite and seed, fit PatchCore (dinov2-s14, the 8 shots of bench_generalization) at each
candidate input and score, against the bank without the image's own patches, (a) each normal shot and (b) synthetic
defects (vlm_ad.data.make_defect) painted into copies of each shot. Prints the validation image AUROC (normal vs
defect) and the pixel AUROC over the defect images per candidate, next to the test results of the same rows in
generalization.jsonl, to see whether the validation would choose the input that wins on the test images.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generalization import RESULTS, ROWS, _shots, load_suite  # noqa: E402

from vlm_ad.data import make_defect  # noqa: E402
from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.detectors.base import resize_map  # noqa: E402

CANDS = {
    "patchcore dinov2 area 280 min 224 down 3": "default",
    "patchcore dinov2 aspect 448 min 224 down 3": "448",
}


def validate(row: str, shots, defects, seed: int) -> dict[str, float]:
    _, backbone, kw, _, _ = ROWS[row]
    det = create_detector("patchcore", backbone=backbone, seed=seed, coreset=1.0, **kw)
    det.fit(shots)
    normal = [float(s) for s in det.calibration_scores_]
    scores, pix_s, pix_y = [], [], []
    for img, mask, base in defects:
        emb = det._embed([img], None)
        emb = emb if isinstance(emb, torch.Tensor) else emb[0][None]
        grid = det.leave_image_out_scores(emb, [base])[0]
        work = det.smooth(grid[None])[0]
        scores.append(det._work_score(work))
        amap = resize_map(work, img.shape[:2])
        pix_s.append(amap[::2, ::2].ravel())
        pix_y.append(mask[::2, ::2].ravel())
    y = [0] * len(normal) + [1] * len(scores)
    img_auc = roc_auc_score(y, normal + scores)
    pix_auc = roc_auc_score(np.concatenate(pix_y), np.concatenate(pix_s))
    return {"val_image": img_auc, "val_pixel": pix_auc}


def test_results(dataset: str, seed: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in (RESULTS / "generalization.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["dataset"] == dataset and r["seed"] == seed and r["half"] == "all" and r["row"] in CANDS:
            out[CANDS[r["row"]]] = {k: r[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
        if (dataset not in ("large", "large-brick", "large-coffee", "mid-gravel", "mid-clock")
                and r["dataset"] == dataset and r["seed"] == seed and r["half"] == "all"
                and r["row"] == "patchcore dinov2 area 280 min 224" and "default" not in out):
            out["default"] = {k: r[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", nargs="+", default=["coins", "mid-gravel", "square", "clock", "coffee"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--per-shot", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "probe_geometry_choice.jsonl"))
    a = p.parse_args()
    torch.set_num_threads(2)
    suite = load_suite()
    for name in a.datasets:
        train, _ = suite[name]()
        for seed in a.seeds:
            shots = _shots(train, seed)
            rng = np.random.default_rng(1000 + seed)
            defects = []
            for s in shots:
                for _ in range(a.per_shot):
                    img, mask, _ = make_defect(s.image, None, rng)
                    defects.append((img, mask, s.image_id))
            rec = {"dataset": name, "seed": seed, "test": test_results(name, seed)}
            for row, tag in CANDS.items():
                t0 = time.perf_counter()
                rec[tag] = validate(row, shots, defects, seed)
                rec[tag]["seconds"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(rec), flush=True)
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
