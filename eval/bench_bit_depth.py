"""High-bit-depth grayscale files: what reading them by their bit depth changes for PatchCore.

Industrial cameras store 12-bit frames in 16-bit PNG or TIFF files, either unshifted (0-4095) or shifted into the
16-bit range. Before, vlm-ad read every integer file over 8 bits from the full 16-bit range (value / 257), so an
unshifted 12-bit frame became 0-16: 17 grey levels. Now it reads it from the range of its bit depth (8, 12 or 16
bits, the smallest that holds the file's largest value; ``$VLM_AD_BIT_DEPTH`` overrides; vlm_ad.data.images).

Each set of eval/bench_generalization.py is made grey (channel mean), and every shot and test image is written as a
real 16-bit PNG and read back through ``vlm_ad.data.load_image``:

    8-bit PNG                   the grey image as 8-bit (the reference every other row should match)
    12-bit in 16, before        round(g * 4095 / 255) unshifted, read with VLM_AD_BIT_DEPTH=16 (the rule before)
    12-bit in 16, now           the same file, read by its bit depth (the default now)
    12-bit shifted into 16      the 12-bit value << 4, read by its bit depth (unchanged by the new rule)

PatchCore, efficientnet-lite0, the product's default input, coreset off, the suite's 8 shots. Writes
eval/results/bit_depth.{jsonl,md}.

    PYTHONPATH=. python eval/bench_bit_depth.py [--datasets ...] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalization as bg  # noqa: E402

from vlm_ad.data import load_image  # noqa: E402
from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.types import Sample  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = {  # row -> (value written to the 16-bit file from the 8-bit grey g, $VLM_AD_BIT_DEPTH when read)
    "8-bit PNG": (None, None),
    "12-bit in 16, before (read as 16-bit)": (lambda g: np.rint(g * 4095 / 255), "16"),
    "12-bit in 16, now (read by its depth)": (lambda g: np.rint(g * 4095 / 255), None),
    "12-bit shifted into 16, now": (lambda g: np.rint(g * 4095 / 255) * 16, None),
}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def through_file(s: Sample, row: str, folder: Path) -> Sample:
    """The grey version of ``s`` written as the row's file and read back by the product's loader."""
    g = s.image.astype(np.float64).mean(axis=2)
    value, depth = ROWS[row]
    path = folder / f"{abs(hash((s.image_id, row)))}.png"
    if value is None:
        Image.fromarray(np.rint(g).astype(np.uint8)).save(path)
    else:
        Image.fromarray(value(g).astype(np.uint16)).save(path)
    old = os.environ.pop("VLM_AD_BIT_DEPTH", None)
    try:
        if depth is not None:
            os.environ["VLM_AD_BIT_DEPTH"] = depth
        image = load_image(path)
    finally:
        os.environ.pop("VLM_AD_BIT_DEPTH", None)
        if old is not None:
            os.environ["VLM_AD_BIT_DEPTH"] = old
    return dataclasses.replace(s, image=image)


def run(train: list[Sample], test: list[Sample], seed: int, row: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        normal = [through_file(s, row, Path(tmp)) for s in bg._shots(train, seed)]
        images = [through_file(s, row, Path(tmp)) for s in test]
    det = create_detector("patchcore", backbone=bg.EFF, seed=seed, coreset=1.0)
    det.fit(normal)
    preds = []
    for start in range(0, len(images), 16):
        preds += [(m.score, m.map) for m in det.predict(images[start : start + 16])]
    return bg.score(test, preds, [True] * len(test))


def render(records: list[dict], args) -> str:
    sets = list(dict.fromkeys(r["dataset"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    lines = ["# High-bit-depth grayscale files: read by their bit depth", "",
             f"Command: `PYTHONPATH=. python eval/bench_bit_depth.py --datasets {' '.join(sets)} --seeds "
             f"{' '.join(map(str, seeds))}`. Sets of eval/bench_generalization.py made grey (channel mean); every "
             "shot and test image written as a PNG of the row's kind and read back by `vlm_ad.data.load_image`. "
             "PatchCore, efficientnet-lite0, the product's default input, coreset off, the suite's 8 normal shots "
             f"per seed (seeds {', '.join(map(str, seeds))}), all test images. Cells: image AUROC / pixel AUROC / "
             "AUPRO, mean over the seeds.", "",
             "| row | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for row in ROWS:
        cells = []
        for name in sets:
            rs = [r for r in records if r["dataset"] == name and r["row"] == row]
            vals = [statistics.fmean(r[m] for r in rs) if rs and rs[0].get(m) is not None else None for m in METRICS]
            cells.append(" / ".join("-" if v is None else f"{v:.3f}" for v in vals))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "`12-bit in 16, before`: the rule before this change (every integer file over 8 bits from the full "
              "16-bit range) keeps 17 grey levels of an unshifted 12-bit frame; `now`: the same files read by their "
              "bit depth give the 8-bit row's figures back (the same grey levels up to rounding).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["magnetic", "gray-elongated", "square", "coins", "clock"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = bg.load_suite()
    records = []
    for name in args.datasets:
        train, test = suite[name]()
        for seed in args.seeds:
            for row in ROWS:
                rec = {"dataset": name, "seed": seed, "row": row, **run(train, test, seed, row)}
                print(json.dumps(rec), flush=True)
                records.append(rec)
    (RESULTS / "bit_depth.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (RESULTS / "bit_depth.md").write_text(render(records, args))
    print(f"wrote {RESULTS / 'bit_depth.md'}")


if __name__ == "__main__":
    main()
