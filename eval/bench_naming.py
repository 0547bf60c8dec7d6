"""Benchmark of defect naming with a labelled-defect library (issue 4, item 3).

Leave-image-out naming accuracy (:func:`vlm_ad.evaluation.naming.evaluate_naming`) with k = 1, 3, 5 labelled examples
per type, for descriptors only, deep features only (DINOv2-S blocks 5 + 7 pooled over the region minus its ring)
and both combined, on ``../shared/data/magnetic_tile`` (5 real defect types, ground-truth masks) and on the
synthetic generator's 7 types (``make_defect`` on 224 px crops of brick / grass / gravel, 24 per type, seed 0).
Chance (uniform guess and majority type) is reported beside each row; the confusion matrices are kept.

    python eval/bench_naming.py                 # about 3 minutes on 2 cores
    python eval/bench_naming.py --no-deep       # descriptors only, about 1 minute

Writes ``eval/results/naming.json`` and ``eval/results/naming.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.data import BUILTIN_SOURCES, DEFECT_TYPES, MVTecDataset, load_source, make_defect, random_crop
from vlm_ad.evaluation.naming import collect_regions, evaluate_naming
from vlm_ad.naming import DeepRegionEncoder
from vlm_ad.types import Sample

ROOT = Path(__file__).resolve().parents[1]
TILE = ROOT.parent / "shared" / "data" / "magnetic_tile"
RESULTS = ROOT / "eval" / "results"
SHOTS = (1, 3, 5)
PER_TYPE_SYNTH = 24


def tile_samples() -> list[Sample]:
    test = MVTecDataset(TILE, "test")
    return [test[i] for i in range(len(test)) if test.labels[i] == 1]


def synthetic_samples(seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    sources = {s: load_source(s) for s in BUILTIN_SOURCES}
    out = []
    for t in DEFECT_TYPES:
        for j in range(PER_TYPE_SYNTH):
            src = BUILTIN_SOURCES[j % len(BUILTIN_SOURCES)]
            img, mask, _ = make_defect(random_crop(sources[src], 224, rng), t, rng)
            out.append(Sample(img, f"{src}/{t}/{j:03d}", 1, t, mask))
    return out


def run(name: str, samples: list[Sample], deep: bool, encoder) -> list[dict]:
    bar = tqdm(total=len(samples), desc=f"describing {name}", file=sys.stderr)
    t0 = time.perf_counter()
    regions = collect_regions(samples, deep=deep, encoder=encoder, progress=bar.update)
    bar.close()
    describe_s = time.perf_counter() - t0
    modes = ("descriptors", "deep", "combined") if deep else ("descriptors",)
    rows = []
    for features in modes:
        for k in SHOTS:
            res = evaluate_naming(regions, shots_per_type=k, features=features, k=3, repeats=3, seed=0)
            rows.append({"data": name, "describe_seconds": describe_s, **res})
            print(f"{name:14s} {features:11s} k={k}: accuracy {res['type_accuracy']:.3f} "
                  f"(balanced {res['balanced_accuracy']:.3f}, chance {res['chance_uniform']:.3f})", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["# Defect naming with a labelled-defect library", "",
             "Leave-image-out: each defect region (its ground-truth mask) is named by 3-NN voting over a library of "
             "k labelled examples per type drawn from the other images (3 draws, seed 0). Written by "
             "`python eval/bench_naming.py`.", "",
             "| data | features | k per type | type accuracy | balanced accuracy | chance (uniform) | "
             "chance (majority) | regions |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['features']} | {r['shots_per_type']} | {r['type_accuracy']:.3f} | "
                     f"{r['balanced_accuracy']:.3f} | {r['chance_uniform']:.3f} | {r['chance_majority']:.3f} | "
                     f"{r['n_regions']} |")
    for r in rows:
        if r["shots_per_type"] == 5 and r["features"] == "descriptors":
            lines += ["", f"Confusion matrix, {r['data']}, descriptors, k = 5 (rows = truth, columns = named):", "",
                      "| truth \\ named | " + " | ".join(r["types"]) + " |",
                      "| --- " * (len(r["types"]) + 1) + "|"]
            lines += [f"| {t} | " + " | ".join(map(str, row)) + " |" for t, row in zip(r["types"], r["confusion"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-deep", action="store_true", help="descriptors only (skip DINOv2)")
    args = ap.parse_args()
    encoder = None if args.no_deep else DeepRegionEncoder()
    rows = run("magnetic_tile", tile_samples(), not args.no_deep, encoder)
    rows += run("synthetic", synthetic_samples(), not args.no_deep, encoder)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(RESULTS / "naming.json", json.dumps(rows, indent=2).encode())
    atomic_write_bytes(RESULTS / "naming.md", markdown(rows).encode())
    print(f"wrote {RESULTS / 'naming.json'} and naming.md", file=sys.stderr)


if __name__ == "__main__":
    main()
