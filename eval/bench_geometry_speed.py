"""Images/s of each input geometry on the generalization suite, measured interleaved (round-robin over the
settings, repeated), so that the load of a shared machine hits every setting alike.

PatchCore, 8 shots (seed 0, coreset off), predict on the same test images (up to ``--images`` per set, a quarter of
that on the large set) in batches of 16; the median over ``--repeats`` rounds. Writes eval/results/geometry_speed.md.

    PYTHONPATH=. nice python eval/bench_geometry_speed.py [--repeats 3] [--images 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generalization import DINO, EFF, RESULTS, _shots, load_suite  # noqa: E402

from vlm_ad.detectors import create_detector  # noqa: E402

SETTINGS = {
    "effnet square 224 (old default)": (EFF, {"geometry": "square", "image_size": 224}, None),
    "effnet area 224": (EFF, {"geometry": "area", "image_size": 224}, None),
    "effnet aspect 256": (EFF, {"geometry": "aspect", "image_size": 256}, None),
    "effnet area 256": (EFF, {"geometry": "area", "image_size": 256}, None),
    "effnet aspect 1024 tile 256": (EFF, {"geometry": "aspect", "image_size": 1024, "tile": 256}, ("large",)),
    "dinov2 square 224": (DINO, {"geometry": "square", "image_size": 224}, None),
    "dinov2 area 224": (DINO, {"geometry": "area", "image_size": 224}, None),
    "dinov2 aspect 448": (DINO, {"geometry": "aspect", "image_size": 448}, None),
}


def n_images(dataset: str, n: int) -> int:
    """Test images timed per set: a quarter of ``n`` on the large set (2048 px images, tiled row ~0.2 images/s)."""
    return max(4, n // 4) if dataset == "large" else n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = load_suite()
    speeds: dict[tuple[str, str], list[float]] = {}
    for d, (train, test) in suite.items():
        images = [s.image for s in test[: n_images(d, args.images)]]
        dets = {name: create_detector("patchcore", backbone=bb, coreset=1.0, **kw).fit(_shots(train, 0))
                for name, (bb, kw, only) in SETTINGS.items() if not only or d in only}
        for _ in range(args.repeats):
            for name, det in dets.items():
                t0 = time.perf_counter()
                for start in range(0, len(images), 16):
                    det.predict(images[start : start + 16])
                speeds.setdefault((name, d), []).append(len(images) / (time.perf_counter() - t0))
        print(d, {n: round(statistics.median(speeds[(n, d)]), 2) for n in dets}, file=sys.stderr, flush=True)
    datasets = list(suite)
    lines = ["| setting | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name in SETTINGS:
        cells = [f"{statistics.median(speeds[(name, d)]):.2f}" if (name, d) in speeds else "n/a" for d in datasets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{d} {min(n_images(d, args.images), len(t))} images of "
                      f"{t[0].image.shape[1]}x{t[0].image.shape[0]}" + (" (sizes vary)" if d == "magnetic" else "")
                      for d, (_, t) in suite.items())
    text = ("# Images/s by input geometry (PatchCore, 8 shots)\n\nProduced by `PYTHONPATH=. nice python "
            f"eval/bench_geometry_speed.py --repeats {args.repeats} --images {args.images} --threads {args.threads}` "
            f"on a CPU machine shared with other jobs (2 cores, torch threads {args.threads}); median of "
            f"{args.repeats} interleaved rounds; predict includes preprocessing, backbone, kNN search, smoothing and "
            f"the resize to each image's resolution. Test images: {sizes}.\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "geometry_speed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
