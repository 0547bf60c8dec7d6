"""Images/s of each input geometry on the generalization suite, measured interleaved (round-robin over the
settings, repeated), so that the load of a shared machine hits every setting alike.

PatchCore, 8 shots (seed 0, coreset off; settings named ``ensemble`` run the ``ensemble`` detector), or with
``--detector mutual`` zero-shot mutual scoring, predict on the same test images (up to ``--images`` per set, a
quarter of that on the large set) in batches of 16; the median over ``--repeats`` rounds, and each setting's cost
relative to the first. Writes eval/results/geometry_speed.md (or
``--out``).

    PYTHONPATH=. nice python eval/bench_geometry_speed.py [--repeats 3] [--images 16] [--threads 1] [--settings ...]
        [--datasets ...] [--detector patchcore|mutual] [--out NAME.md]
"""

from __future__ import annotations

import argparse
import shlex
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
    "effnet area 224 down 4": (EFF, {"geometry": "area", "image_size": 224, "max_downscale": 4}, None),
    "effnet area 224 down 3": (EFF, {"geometry": "area", "image_size": 224, "max_downscale": 3}, None),
    "effnet aspect 256": (EFF, {"geometry": "aspect", "image_size": 256}, None),
    "effnet area 256": (EFF, {"geometry": "area", "image_size": 256}, None),
    "effnet aspect 1024 tile 256": (EFF, {"geometry": "aspect", "image_size": 1024, "tile": 256}, ("large",)),
    "dinov2 square 224": (DINO, {"geometry": "square", "image_size": 224}, None),
    "dinov2 area 224": (DINO, {"geometry": "area", "image_size": 224}, None),
    "dinov2 square 364": (DINO, {"geometry": "square", "image_size": 364}, None),
    "dinov2 area 280": (DINO, {"geometry": "area", "image_size": 280}, None),
    "dinov2 area 280 min 224": (DINO, {"geometry": "area", "image_size": 280, "min_side": 224}, None),
    "dinov2 area 224 min 224": (DINO, {"geometry": "area", "image_size": 224, "min_side": 224}, None),
    "dinov2 area 280 min 224 down 4": (DINO, {"geometry": "area", "image_size": 280, "min_side": 224,
                                              "max_downscale": 4}, None),
    "dinov2 area 280 min 224 down 3": (DINO, {"geometry": "area", "image_size": 280, "min_side": 224,
                                              "max_downscale": 3}, None),
    "dinov2 area 224 min 224 down 4": (DINO, {"geometry": "area", "image_size": 224, "min_side": 224,
                                              "max_downscale": 4}, None),
    "dinov2 area 224 min 224 down 3": (DINO, {"geometry": "area", "image_size": 224, "min_side": 224,
                                              "max_downscale": 3}, None),
    "dinov2 area 364 min 224 down 3": (DINO, {"geometry": "area", "image_size": 364, "min_side": 224,
                                              "max_downscale": 3}, None),
    "dinov2 aspect 448 min 224 down 3": (DINO, {"geometry": "aspect", "image_size": 448, "min_side": 224,
                                                "max_downscale": 3}, None),
    "dinov2 aspect 308": (DINO, {"geometry": "aspect", "image_size": 308}, None),
    "dinov2 area 308": (DINO, {"geometry": "area", "image_size": 308}, None),
    "dinov2 aspect 448": (DINO, {"geometry": "aspect", "image_size": 448}, None),
    # the ensemble detector: PatchCore on both backbones at each one's default input, maps scaled and averaged
    "ensemble effnet+dinov2": (f"{EFF}+{DINO}", {}, None),
    "effnet area 224, one search per input shape (before)": (EFF, {"geometry": "area", "image_size": 224}, None),
    "dinov2 aspect 448, one search per input shape (before)": (DINO, {"geometry": "aspect", "image_size": 448}, None),
}
PER_SHAPE = "one search per input shape (before)"  # settings that search each input shape's patches in its own call


def per_shape_search(det):
    """Make ``det`` search the patches of each input-shape group in its own call, as predict did before one search
    served all groups (the maps are the same to float rounding; tests/test_geometry.py)."""
    from vlm_ad.detectors.patchcore import PatchCore

    det._score_groups = lambda embs: [PatchCore._score_groups(det, [e])[0] for e in embs]
    return det


def n_images(dataset: str, n: int) -> int:
    """Test images timed per set: a quarter of ``n`` on the large set (2048 px images, tiled row ~0.2 images/s)."""
    return max(4, n // 4) if dataset == "large" else n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), help="settings to time (default: all)")
    ap.add_argument("--datasets", nargs="+", default=["square", "elongated", "large", "magnetic", "textile"],
                    help="sets of eval/bench_generalization.py to time")
    ap.add_argument("--out", default="geometry_speed.md", help="file name under eval/results/")
    ap.add_argument("--detector", choices=("patchcore", "mutual"), default="patchcore",
                    help="patchcore (8 shots, coreset off) or zero-shot mutual (the test images of a batch score each "
                         "other; fitted on nothing)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    suite = load_suite()
    speeds: dict[tuple[str, str], list[float]] = {}
    tests = {}
    for d in args.datasets:
        train, test = suite[d]()
        tests[d] = test
        images = [s.image for s in test[: n_images(d, args.images)]]
        extra, normal = ({"coreset": 1.0}, _shots(train, 0)) if args.detector == "patchcore" else ({}, [])
        dets = {name: create_detector("ensemble" if "+" in bb else args.detector, backbone=bb, **extra, **kw)
                .fit(normal)
                for name, (bb, kw, only) in SETTINGS.items() if (not only or d in only) and name in args.settings}
        dets = {name: per_shape_search(det) if PER_SHAPE in name else det for name, det in dets.items()}
        for _ in range(args.repeats):
            for name, det in dets.items():
                t0 = time.perf_counter()
                for start in range(0, len(images), 16):
                    det.predict(images[start : start + 16])
                speeds.setdefault((name, d), []).append(len(images) / (time.perf_counter() - t0))
        print(d, {n: round(statistics.median(speeds[(n, d)]), 2) for n in dets}, file=sys.stderr, flush=True)
    datasets = list(tests)
    lines = ["| setting | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name in [n for n in SETTINGS if n in args.settings]:
        cells = [f"{statistics.median(speeds[(name, d)]):.2f}" if (name, d) in speeds else "n/a" for d in datasets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    names = [n for n in SETTINGS if n in args.settings]
    ratio = ["", f"Cost relative to {names[0]} (its images/s divided by the setting's; above 1 = slower):", "",
             "| setting | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for name in names[1:]:
        cells = [f"{statistics.median(speeds[(names[0], d)]) / statistics.median(speeds[(name, d)]):.2f}x"
                 if (name, d) in speeds and (names[0], d) in speeds else "n/a" for d in datasets]
        ratio.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(names) > 1:
        lines += ratio
    sizes = ", ".join(f"{d} {min(n_images(d, args.images), len(t))} images of "
                      f"{t[0].image.shape[1]}x{t[0].image.shape[0]}" + (" (sizes vary)" if d == "magnetic" else "")
                      for d, t in tests.items())
    what = "PatchCore, 8 shots" if args.detector == "patchcore" else "mutual, zero-shot"
    text = (f"# Images/s by input geometry ({what})\n\nProduced by `PYTHONPATH=. nice python "
            f"eval/bench_geometry_speed.py {shlex.join(sys.argv[1:])}` "
            f"on a CPU machine shared with other jobs (2 cores, torch threads {args.threads}); median of "
            f"{args.repeats} interleaved rounds; predict includes preprocessing, backbone, kNN search, smoothing and "
            f"the resize to each image's resolution. Test images: {sizes}.\n\n" + "\n".join(lines) + "\n")
    (RESULTS / args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
