"""Images/s of the ``adapted`` detector with its two backbone passes sharing the blocks below the first LoRA block,
against two whole passes (as before) and the DINOv2 PatchCore it adapts, measured interleaved.

``adapted`` needs the backbone twice per image: LoRA on for its head's features, LoRA off for retrieval on the frozen
backbone. The adapter's LoRA sits on blocks 6 and 7 (of the 8 that the default layers block5 + block7 run), so blocks
0-5 give the same tokens in both passes; ``Adapted.share_blocks`` (the default) runs them once. This bench fits
``adapted`` with the shipped adapter (adapters/magnetic_tile-dinov2) on 8 normal images (magnetic_tile from
../shared when present, else textured crops) and PatchCore at its dinov2-s14 default on the same images, predicts the
same test images in batches of 16 with each setting, round-robin over ``--repeats`` rounds, and reports the median
images/s, each setting's cost relative to PatchCore, and the largest map difference between the two adapted modes.

    PYTHONPATH=. nice python eval/bench_adapted_speed.py [--repeats 3] [--images 16] [--threads 1]

Writes eval/results/adapted_speed.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
ADAPTER = ROOT / "adapters" / "magnetic_tile-dinov2"
MAGNETIC = ROOT.parent / "shared" / "data" / "magnetic_tile"


def _images(n_test: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    from vlm_ad.data import MVTecDataset

    if MAGNETIC.is_dir():
        train_ds, test_ds = MVTecDataset(MAGNETIC, "train"), MVTecDataset(MAGNETIC, "test")
        train = [train_ds[int(i)].image for i in train_ds.normal_indices()[:8]]
        step = max(1, len(test_ds) // n_test)
        test = [test_ds[i].image for i in range(0, len(test_ds), step)][:n_test]
        sizes = sorted({s.shape[:2] for s in test})
        return train, test, f"magnetic_tile (../shared/data): the first 8 normal training images, {len(test)} test " \
            f"images spread over the test set ({len(sizes)} sizes, {min(sizes)} to {max(sizes)})"
    from vlm_ad.testing import texture_crops

    return texture_crops(8, size=224, seed=1), texture_crops(n_test, size=224, seed=2), \
        f"textured 224 x 224 crops (vlm_ad.testing; ../shared absent): 8 fit, {n_test} test"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "adapted_speed.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vlm_ad.detectors import create_detector

    train, test, data = _images(args.images)
    adapted = create_detector("adapted", adapter=str(ADAPTER), seed=0).fit(train)
    patchcore = create_detector("patchcore", backbone="dinov2-s14", seed=0).fit(train)

    def run(det, share: bool | None = None):
        if share is not None:
            det.share_blocks = share
        out = []
        for start in range(0, len(test), 16):
            out += det.predict(test[start : start + 16])
        return out

    settings = {"patchcore dinov2-s14 (default input)": (patchcore, None),
                "adapted, two whole passes (before)": (adapted, False),
                "adapted, blocks below LoRA shared (now)": (adapted, True)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    maps = {}
    run(patchcore), run(adapted, True)  # warm-up
    for _ in range(args.repeats):
        for name, (det, share) in settings.items():
            t0 = time.perf_counter()
            maps[name] = run(det, share)
            times[name].append(time.perf_counter() - t0)
    a, b = maps["adapted, two whole passes (before)"], maps["adapted, blocks below LoRA shared (now)"]
    diff = max(float(np.abs(x.map - y.map).max()) for x, y in zip(a, b))
    score_diff = max(abs(x.score - y.score) for x, y in zip(a, b))
    ips = {k: len(test) / statistics.median(v) for k, v in times.items()}
    base = ips["patchcore dinov2-s14 (default input)"]
    cmd = (f"PYTHONPATH=. nice python eval/bench_adapted_speed.py --repeats {args.repeats} --images {args.images} "
           f"--threads {args.threads}")
    lines = ["# Images/s of the adapted detector: shared blocks vs two whole passes", "",
             f"Produced by `{cmd}` on a CPU machine shared with other jobs (torch threads {args.threads}); median of "
             f"{args.repeats} interleaved rounds; predict in batches of 16 includes preprocessing, the backbone "
             "pass(es), the head, kNN search, smoothing and the resize to each image's resolution. Data: "
             f"{data}. adapted: the shipped adapter {ADAPTER.relative_to(ROOT)} (LoRA on blocks "
             f"{list(adapted.adapt_config_.lora_blocks)}), fit on the 8 images (fuse and score chosen at fit: "
             f"{adapted.fuse_:g} / {adapted.score_}), seed 0; PatchCore: coreset 10%, seed 0.", "",
             "| setting | images/s | time vs PatchCore |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {base / v:.2f}x |" for k, v in ips.items()]
    gain = ips["adapted, blocks below LoRA shared (now)"] / ips["adapted, two whole passes (before)"]
    lines += ["", f"Sharing the blocks: {gain:.2f}x "
              f"the images/s of two whole passes; largest difference between their maps {diff:.2e}, between their "
              f"image scores {score_diff:.2e} (the same features, up to float rounding)."]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
