"""Zero-shot mutual on one call of several large images: each pair compared once and read both ways (the product)
vs every (query, reference) pair compared on its own (the path before), alternating rounds in one process.

    PYTHONPATH=. python eval/bench_mutual_pairs.py [--images 16] [--rounds 2] [--threads 2] [--dataset large-coffee]

Writes eval/results/mutual_pairs.md: seconds per call split into embedding and scoring (``Detector.timings_``), and
the largest map difference between the two paths over the map's range.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generalization import RESULTS, load_suite  # noqa: E402

from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.detectors.mutual import Mutual  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dataset", default="large-coffee")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, test = load_suite()[args.dataset]()
    images = [s.image for s in test[: args.images]]
    shared = Mutual._mutual

    def each_pair(self, q, refs, h, w, **_):  # no sharing: one distance matrix per (query, reference)
        return shared(self, q, refs, h, w)

    runs, maps = [], {}
    for _ in range(args.rounds):
        for name, impl in (("each pair once, read both ways", shared), ("every (query, reference) on its own",
                                                                        each_pair)):
            Mutual._mutual = impl
            try:
                det = create_detector("mutual").fit([])
                t0 = time.perf_counter()
                out = det.predict(images)
                runs.append((name, time.perf_counter() - t0, det.timings_["embed"], det.timings_["score"]))
            finally:
                Mutual._mutual = shared
            maps[name] = [m.map for m in out]
    a, b = maps.values()
    diff = max(float(np.abs(x - y).max() / (np.abs(y).max() or 1.0)) for x, y in zip(a, b))
    shape = images[0].shape
    command = " ".join(["PYTHONPATH=. python eval/bench_mutual_pairs.py", *map(shlex.quote, sys.argv[1:])])
    lines = ["# Zero-shot mutual: comparing each pair of a call's images once", "",
             f"Command: `{command}`. "
             f"{len(images)} test images of the `{args.dataset}` set of eval/bench_generalization.py "
             f"({shape[0]} x {shape[1]}), one `predict` call each, mutual's dinov2-s14 default, {args.threads} "
             f"threads, {args.rounds} alternating rounds. Largest map difference between the paths: {diff:.1e} of the "
             "map's range.", "",
             "| path | seconds per call | embed | score |", "|---|---|---|---|",
             *(f"| {n} | {t:.2f} | {e:.2f} | {s:.2f} |" for n, t, e, s in runs)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutual_pairs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
