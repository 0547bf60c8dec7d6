"""How many of each suite set's defect regions touch the image border?

efficientnet-lite0's PatchCore trails the reference PatchCore on magnetic_tile AUPRO (0.624 vs 0.684 at 8 shots) and
on no other set's; the reference averages its 3 x 3 window over the cells inside the grid, vlm-ad (as anomalib)
counts the zero padding, which damps the border cells. This probe counts, per set of eval/bench_generalization.py,
the connected defect regions of the anomalous test images' masks and the share that reach the outer band of the
image (4 % of the short side, at least 2 px), with the share of defect pixels in those regions.

    PYTHONPATH=. python eval/probe_border_defects.py [--datasets ...] [--band 0.04]

Writes eval/results/probe_border_defects.jsonl; eval/render_probes.py renders it into probes.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_generalization as bg  # noqa: E402

OUT = bg.RESULTS / "probe_border_defects.jsonl"


def border_stats(masks: list[np.ndarray], band: float) -> dict[str, float | int]:
    """Regions, the share touching the border band, and the share of defect pixels in those regions."""
    regions = touching = 0
    pixels = pixels_touching = 0
    for mask in masks:
        lab, k = ndimage.label(mask)
        h, w = mask.shape
        m = max(2, int(band * min(h, w)))
        edge = np.zeros((h, w), bool)
        edge[:m], edge[-m:], edge[:, :m], edge[:, -m:] = True, True, True, True
        for i in range(1, k + 1):
            region = lab == i
            t = bool((region & edge).any())
            regions, touching = regions + 1, touching + t
            pixels, pixels_touching = pixels + int(region.sum()), pixels_touching + int(region.sum()) * t
    return {"regions": regions, "touching": touching / max(regions, 1),
            "pixels_touching": pixels_touching / max(pixels, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    suite = bg.load_suite()
    ap.add_argument("--datasets", nargs="+", default=[d for d in suite if d != "textile"])  # textile: no masks
    ap.add_argument("--band", type=float, default=0.04)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rows = []
    for d in args.datasets:
        _, test = suite[d]()
        masks = [s.mask for s in test if s.label == 1 and s.mask is not None]
        rows.append({"dataset": d, "band": args.band, "images": len(masks), **border_stats(masks, args.band)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
