"""Benchmark of the detectors (issue: retrieval store, detectors, metric suite).

Runs PatchCore and PaDiM on ``dinov2-s14`` and ``efficientnet-lite0`` at 1, 4, 8 shots (seeds 0, 1, 2) and
full-shot, plus zero-shot ``mutual``, on ``../shared/data/magnetic_tile`` and on the simulated textile set,
and writes one JSON line per run to ``eval/results/detectors.jsonl`` (resumable: finished rows are kept and
skipped). ``eval/make_tables.py`` turns the rows into ``eval/results/detectors.md``.

Backbone features of every train and test image are extracted once per (data, backbone) and reused by all
rows, so ``fit_seconds`` here excludes the backbone; ``backbone_ms_per_image`` is reported beside it.

    python eval/bench_detectors.py                       # everything (tens of minutes on 2 cores)
    python eval/bench_detectors.py --data textile --backbone efficientnet-lite0 --detector patchcore
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlm_ad.backbones import create_backbone
from vlm_ad.data import open_data
from vlm_ad.detectors import create_detector
from vlm_ad.detectors.base import DEFAULT_LAYERS
from vlm_ad.evaluation.detection import evaluate
from vlm_ad.evaluation.run import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "eval" / "results"
DATASETS = {"magnetic_tile": SHARED / "magnetic_tile", "textile": "textile"}
TEXTILE_TEST = 600  # balanced subsample of the 1,800 textile test images (200 per class), seed 0
SHOTS = (1, 4, 8)
SEEDS = (0, 1, 2)


def extract(backbone_name: str, dataset, desc: str) -> tuple[dict[str, torch.Tensor], list, list, float]:
    """Layer features of every image (CPU), sizes, ids, and the median backbone time per image (ms)."""
    net = create_backbone(backbone_name, layers=DEFAULT_LAYERS[backbone_name])
    feats: dict[str, list[torch.Tensor]] = {}
    sizes, ids, times = [], [], []
    for i in tqdm(range(len(dataset)), desc=desc, file=sys.stderr):
        s = dataset[i]
        t0 = time.perf_counter()
        out = net.extract([s.image])
        times.append(time.perf_counter() - t0)
        for k, v in out.layers.items():
            feats.setdefault(k, []).append(v)
        sizes.append(s.image.shape[:2])
        ids.append(s.image_id)
    return {k: torch.cat(v) for k, v in feats.items()}, sizes, ids, 1000 * float(np.median(times))


def ground_truth(dataset) -> tuple[list[int], list | None]:
    """Labels and masks (None when the split has no masks) without keeping the pixels."""
    labels = dataset.labels
    if not dataset.has_masks:
        return labels, None
    return labels, [dataset[i].mask for i in range(len(dataset))]


def plan(detectors, n_train):
    """(detector, shots, seed) rows: few-shot with 3 seeds, full-shot once, mutual zero-shot once."""
    rows = []
    for det in detectors:
        if det == "mutual":
            rows.append((det, 0, 0))
            continue
        rows += [(det, k, s) for k in SHOTS for s in SEEDS] + [(det, None, 0)]
    return rows


def run_row(det_name, shots, seed, train_f, train_ids, test_f, sizes, test_ids, labels, masks, backbone):
    """Fit one detector on cached features and evaluate it; returns the metrics row."""
    n_train = len(train_ids)
    if shots is None:
        idx = list(range(n_train))
    else:
        idx = sorted(np.random.default_rng(seed).permutation(n_train)[:shots].tolist())
    det = create_detector(det_name, backbone=create_backbone(backbone, layers=DEFAULT_LAYERS[backbone]), seed=seed)
    t0 = time.perf_counter()
    if det_name == "mutual":
        det.fit([])
    else:
        det.fit_layers({k: v[idx] for k, v in train_f.items()}, [train_ids[i] for i in idx])
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps = det.predict_layers(test_f, sizes, test_ids)
    score_s = time.perf_counter() - t0
    metrics = evaluate(labels, [m.score for m in maps], masks=masks, maps=[m.map for m in maps] if masks else None)
    return {"shots": "all" if shots is None else shots, "n_train": len(idx) if det_name != "mutual" else 0,
            "seed": seed, "fit_seconds": fit_s, "scoring_ms_per_image": 1000 * score_s / len(maps), **metrics}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--backbone", nargs="+", default=["efficientnet-lite0", "dinov2-s14"])
    ap.add_argument("--detector", nargs="+", default=["patchcore", "padim", "mutual"])
    ap.add_argument("--out", type=Path, default=RESULTS / "detectors.jsonl")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["data"], r["backbone"], r["detector"], str(r["shots"]), r["seed"]))
    for data in args.data:
        if data == "magnetic_tile" and not Path(DATASETS[data]).is_dir():
            print(f"skipping magnetic_tile: {DATASETS[data]} not found", file=sys.stderr)
            continue
        train, test = open_data(DATASETS[data], textile_test=TEXTILE_TEST, seed=0)
        labels, masks = ground_truth(test)
        for backbone in args.backbone:
            rows = [r for r in plan(args.detector, len(train))
                    if (data, backbone, r[0], "all" if r[1] is None else str(r[1]), r[2]) not in done]
            if not rows:
                continue
            train_f, _, train_ids, ms_train = extract(backbone, train, f"{data}/{backbone} train")
            test_f, sizes, test_ids, ms_test = extract(backbone, test, f"{data}/{backbone} test")
            for det_name, shots, seed in tqdm(rows, desc=f"{data}/{backbone} runs", file=sys.stderr):
                row = run_row(det_name, shots, seed, train_f, train_ids, test_f, sizes, test_ids, labels, masks,
                              backbone)
                row = {"data": data, "split": f"train={len(train)} test={len(test)}", "backbone": backbone,
                       "image_size": 224, "detector": det_name, **row,
                       "backbone_ms_per_image": ms_test, "peak_rss_mb": peak_rss_mb()}
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(f"{data} {backbone} {det_name} shots={row['shots']} seed={seed}: "
                      f"img {row['image_auroc']:.3f} pix {row.get('pixel_auroc')} pro {row.get('aupro')}",
                      file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
