"""Per-image feature time of each offline backbone (median of repeated runs), written to eval/results/backbones.md.

    python eval/bench_backbones.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vlm_ad.backbones import create_backbone

RESULTS = Path(__file__).resolve().parent / "results"


def time_backbone(name: str, size: int, batch: int, repeats: int) -> dict:
    """Median and spread of seconds per image for ``extract`` on random uint8 images of ``size`` px."""
    net = create_backbone(name, image_size=size)
    imgs = [np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(batch)]
    net.extract(imgs)  # warm-up
    per_image = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net.extract(imgs, batch_size=batch)
        per_image.append((time.perf_counter() - t0) / batch)
    q1, _, q3 = statistics.quantiles(per_image, n=4)
    return {"backbone": name, "image_size": size, "batch": batch, "layers": list(net.layers),
            "median_ms": 1000 * statistics.median(per_image), "iqr_ms": 1000 * (q3 - q1), "repeats": repeats,
            "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [time_backbone(n, s, b, args.repeats)
            for n, s in (("efficientnet-lite0", 224), ("dinov2-s14", 224), ("dinov2-s14", 448))
            for b in (1, 8)]
    lines = ["| backbone | image size | batch | layers | median ms/image | IQR ms |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['backbone']} | {r['image_size']} | {r['batch']} | {', '.join(r['layers'])} | "
              f"{r['median_ms']:.1f} | {r['iqr_ms']:.1f} |" for r in rows]
    text = ("# Backbone feature time\n\nProduced by `python eval/bench_backbones.py` "
            f"(--repeats {args.repeats} --threads {args.threads}, CPU, torch "
            "2.14.1, timed runs after a warm-up; random 224/448 px inputs, preprocessing included; "
            "check the machine was otherwise idle)."
            "\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "backbones.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "backbones.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
