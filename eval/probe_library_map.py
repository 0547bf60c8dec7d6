"""Probe: do the labelled defect examples of a library sharpen PatchCore's map where a defect is?

Per dataset (MVTec layout): PatchCore (efficientnet-lite0, 8 shots, seed 0, coreset 1.0) as bench_qa fits it; the
QA benchmark's library (3 examples per defect type, seed 0); a bank of the library images' patch features inside
their masks. For every other anomalous test image: the map from the distance to the normal bank (d_n, PatchCore)
against maps that also use the distance to the defect bank (d_d). Prints pixel AUROC over the anomalous images and
the share whose map maximum / core centroid falls in the mask centroid's 3 x 3 cell (the QA "where" truth).
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from probe_patch_naming import probe_main  # noqa: E402

from vlm_ad.data import MVTecDataset, open_data  # noqa: E402
from vlm_ad.detectors.base import resize_map  # noqa: E402
from vlm_ad.evaluation.run import fit_detector  # noqa: E402
from vlm_ad.naming import DefectLibrary  # noqa: E402
from vlm_ad.vocabulary import location_word  # noqa: E402


def cell_fraction(mask: np.ndarray, gh: int, gw: int) -> np.ndarray:
    return cv2.resize(mask.astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)


def where(amap: np.ndarray, level: float | None) -> str:
    h, w = amap.shape
    if level is None:
        y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
        return location_word(float(x), float(y), w, h)
    lo, hi = float(amap.min()), float(amap.max())
    core = amap >= lo + level * (hi - lo)
    ys, xs = np.nonzero(core)
    return location_word(float(xs.mean()), float(ys.mean()), w, h)


def run(name: str, root: Path, min_frac: float) -> dict:
    train, test = open_data(root)
    det, _ = fit_detector(train, detector="patchcore", backbone="efficientnet-lite0", shots=8, seed=0, coreset=1.0)
    lib = DefectLibrary(features="descriptors").add_mvtec(root, per_type=3, seed=0)
    held = set(lib.example_ids)
    mv = MVTecDataset(root, "test")
    bank = []
    for i in range(len(mv)):
        s = mv[i]
        if s.image_id in held and s.mask is not None:
            emb = det._embed([s.image], None)
            emb = emb if isinstance(emb, torch.Tensor) else emb[0][None]
            _, gh, gw, c = emb.shape
            frac = cell_fraction(s.mask, gh, gw)
            keep = frac >= min(min_frac, float(frac.max()))
            bank.append(emb[0][torch.from_numpy(keep)])
    bank_t = torch.cat(bank)
    variants: dict[str, list] = {}
    masks = []
    image_scores: dict[str, list] = {}
    labels = []
    for i in range(len(test)):
        s = test[i]
        if s.image_id in held:
            continue
        has_mask = s.label == 1 and s.mask is not None and s.mask.any()
        if s.label == 1 and not has_mask:
            continue
        emb = det._embed([s.image], None)
        emb = emb if isinstance(emb, torch.Tensor) else emb[0][None]
        _, gh, gw, c = emb.shape
        d_n = det._score_groups([emb])[0][0][0]
        d_d = torch.cdist(emb[0].reshape(-1, c), bank_t).min(dim=1).values.reshape(gh, gw)
        grids = {
            "normal distance (PatchCore)": d_n,
            "ratio d_n / (d_n + d_d)": d_n / (d_n + d_d + 1e-6),
            "d_n x ratio": d_n * d_n / (d_n + d_d + 1e-6),
            "d_n - 0.5 d_d": d_n - 0.5 * d_d,
        }
        labels.append(int(s.label))
        for k, g in grids.items():
            work = det.smooth(g[None])[0]
            image_scores.setdefault(k, []).append(float(work.max()))
            if has_mask:
                variants.setdefault(k, []).append(resize_map(work, s.mask.shape))
        if has_mask:
            masks.append(s.mask)
    truth = [location_word(float(np.nonzero(m)[1].mean()), float(np.nonzero(m)[0].mean()), m.shape[1], m.shape[0])
             for m in masks]
    out = {"data": name, "images": len(labels), "anomalous_with_mask": len(masks), "bank_patches": int(len(bank_t))}
    for k, maps in variants.items():
        pix = roc_auc_score(np.concatenate([m[::2, ::2].ravel() for m in masks]),
                            np.concatenate([a[::2, ::2].ravel() for a in maps]))
        w_max = float(np.mean([where(a, None) == t for a, t in zip(maps, truth)]))
        w_core = float(np.mean([where(a, 0.5) == t for a, t in zip(maps, truth)]))
        out[k] = {"image_auroc": round(roc_auc_score(labels, image_scores[k]), 3), "pixel_auroc": round(pix, 3),
                  "where_max": round(w_max, 3), "where_core0.5": round(w_core, 3)}
    return out


def main() -> None:
    probe_main(run, "--min-frac", 0.25, data=["magnetic", "dev"])


if __name__ == "__main__":
    main()
