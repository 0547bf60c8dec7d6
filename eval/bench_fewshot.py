"""Few-shot ideas for PatchCore, each measured against the same baseline (8 shots, seeds 0-2, magnetic_tile).

Ideas: L2-normalising patch features (the first default; now off for CNN backbones), augmenting the few normal
images (flips and 90-degree rotations: 8 views each), a wider local neighbourhood (5x5 pooling instead of 3x3), a
larger input (320 px), and DINOv2 features. Writes eval/results/fewshot.{jsonl,md} (the jsonl anew each run).

    python eval/bench_fewshot.py [--shots 8] [--seeds 0 1 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from vlm_ad.data import open_data
from vlm_ad.evaluation.run import evaluate_detector, fit_detector

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
DATA = ROOT.parent / "shared" / "data" / "magnetic_tile"
VARIANTS = {
    "baseline (efficientnet-lite0, 224 px, pool 3)": {},
    "+ L2-normalised patches (the default before 2026-11-28)": {"normalize": True},
    "+ flips/rotations x8": {"augment": "flips"},
    "+ pool 5": {"pool": 5},
    "+ 320 px input": {"image_size": 320},
    "dinov2-s14 blocks 5+7 instead": {"backbone": "dinov2-s14"},
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = open_data(DATA)
    out = RESULTS / "fewshot.jsonl"
    out.write_text("")
    rows = []
    for name, kw in VARIANTS.items():
        kw = dict(kw)
        backbone = kw.pop("backbone", "efficientnet-lite0")
        for seed in args.seeds:
            det, fit_s = fit_detector(train, detector="patchcore", backbone=backbone, shots=args.shots, seed=seed,
                                      coreset=1.0, **kw)
            res = evaluate_detector(det, test)
            row = {"variant": name, "data": "magnetic_tile", "split": f"train={len(train)} test={len(test)}",
                   "backbone": backbone, "shots": args.shots, "seed": seed, "fit_seconds": fit_s,
                   **{k: res.metrics[k] for k in METRICS}, "images_per_second": res.metrics["images_per_second"]}
            rows.append(row)
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(name, seed, {k: round(row[k], 3) for k in METRICS}, file=sys.stderr)
    lines = ["| variant | shots | seeds | " + " | ".join(METRICS) + " |", "|---|---|---|" + "---|" * len(METRICS)]
    for name in VARIANTS:
        g = [r for r in rows if r["variant"] == name]
        cells = []
        for m in METRICS:
            vals = [r[m] for r in g]
            spread = f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else ""  # one seed: no spread to show
            cells.append(f"{statistics.mean(vals):.3f}{spread}")
        lines.append(f"| {name} | {args.shots} | {','.join(str(r['seed']) for r in g)} | " + " | ".join(cells) + " |")
    seeds = " ".join(str(x) for x in args.seeds)
    text = ("# Few-shot ideas (PatchCore, magnetic_tile)\n\nProduced by `python eval/bench_fewshot.py --shots "
            f"{args.shots} --seeds {seeds} --threads {args.threads}` "
            f"({args.shots} shots drawn from train/good with each seed, full test split, coreset off).\n\n"
            + "\n".join(lines) + "\n")
    (RESULTS / "fewshot.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
