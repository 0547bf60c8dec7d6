"""Probe: do the detector's own cells, where its map is strongest, name a detected defect better with the DINOv2
patch votes of the library's ``patches`` mode?

Per dataset (MVTec layout): PatchCore (efficientnet-lite0, 8 shots, seed 0, coreset 1.0) and a library of 3
labelled examples per defect type (``--library-seed``). For every other anomalous test image with a type, the type
named from the map's core (the cells at 0.7 of the map's range, the component holding its maximum, as in
eval/probe_patch_naming.py) by:

    patches            the core's DINOv2 patches voting (the library's ``patches`` mode)
    cells, top scores  the detector's 5 highest patch scores: their efficientnet-lite0 features vote against the
                       examples' cells (probe_patch_naming's (c))
    cells, top map     the 5 strongest cells of the map (averaged onto the cell grid) vote the same way: what a
                       library can do without the detector's internals
    patches + cells, top scores / top map
                       both votes, each as shares of its own sum, added (``top map``: the library's ``patches+cells``)

One JSON line per dataset. eval/render_probes.py renders them into eval/results/probes.md.

    PYTHONPATH=. python eval/probe_cell_votes.py --data dev dev-more magnetic --library-seed 0 \
        --out eval/results/probe_cell_votes.jsonl
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_patch_naming import core, probe_main, tally  # noqa: E402

from vlm_ad.data import MVTecDataset, open_data  # noqa: E402
from vlm_ad.evaluation.run import fit_detector  # noqa: E402
from vlm_ad.naming import DeepRegionEncoder, DefectLibrary, region_cells  # noqa: E402

TOP = 5


def _grid(det, image: np.ndarray) -> torch.Tensor:
    emb = det._embed([image], None)
    return emb[0] if isinstance(emb, list) else emb[0]  # (h, w, C)


def run(name: str, root: Path, library_seed: int) -> dict:
    train, test = open_data(root)
    det, _ = fit_detector(train, detector="patchcore", backbone="efficientnet-lite0", shots=8, seed=0, coreset=1.0)
    enc = DeepRegionEncoder()
    lib = DefectLibrary(features="patches", encoder=enc).add_mvtec(root, per_type=3, seed=library_seed)
    held = set(lib.example_ids)
    mv = MVTecDataset(root, "test")
    bank, labels, dino_bank, dino_labels = [], [], [], []
    for i in range(len(mv)):
        s = mv[i]
        if s.image_id not in held or s.mask is None:
            continue
        g = _grid(det, s.image)
        cells, _ = region_cells(s.mask, tuple(g.shape[:2]))
        bank.append(g.reshape(-1, g.shape[-1])[cells].numpy())
        labels += [s.defect_type] * len(cells)
        d = enc.grids(s.image)
        cells, _ = region_cells(s.mask, d.shape[:2])
        dino_bank.append(d.reshape(-1, d.shape[-1])[cells])
        dino_labels += [s.defect_type] * len(cells)
    bank_a, labels_a = np.concatenate(bank).astype(np.float32), np.array(labels)
    dino_a, dino_l = np.concatenate(dino_bank).astype(np.float32), np.array(dino_labels)
    asked = [test[i] for i in range(len(test))]
    asked = [s for s in asked if s.label == 1 and s.defect_type and s.image_id not in held]
    right: dict[str, list[bool]] = defaultdict(list)
    for s, m in zip(asked, det.predict(asked)):
        region = core(m.map)
        d = enc.grids(s.image)
        cells, cover = region_cells(region, d.shape[:2])
        patches = tally(d.reshape(-1, d.shape[-1])[cells], cover, dino_a, dino_l)
        g = _grid(det, s.image)
        flat = g.reshape(-1, g.shape[-1])
        scores = det._score_groups([g[None]])[0][0][0].reshape(-1)
        best = torch.topk(scores, min(TOP, scores.numel()))
        by_scores = tally(flat[best.indices].numpy(), best.values.numpy(), bank_a, labels_a)
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(m.map)[None, None].float(),
                                                         tuple(g.shape[:2])).reshape(-1)
        best = torch.topk(pooled, min(TOP, pooled.numel()))
        by_map = tally(flat[best.indices].numpy(), best.values.numpy(), bank_a, labels_a)
        for key, votes in {"patches": patches, "cells, top scores": by_scores, "cells, top map": by_map,
                           "patches + cells, top scores": patches + by_scores,
                           "patches + cells, top map": patches + by_map}.items():
            right[key].append(max(votes, key=votes.get) == s.defect_type)
    types = sorted({s.defect_type for s in asked})
    return {"data": name, "library_seed": library_seed, "images": len(asked), "chance": round(1 / len(types), 3),
            **{k: round(float(np.mean(v)), 3) for k, v in right.items()}}


def main() -> None:
    probe_main(run, "--library-seed", 0, data=["dev", "dev-more", "magnetic"], description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
