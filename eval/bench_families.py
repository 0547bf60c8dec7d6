"""Benchmark of the survey's other method families: generative, input perturbation, attention (issue 6).

Runs on ``../shared/data/magnetic_tile`` (pixel masks) and the simulated textile set (image labels only) and
appends one JSON line per (detector, map) to ``eval/results/families.jsonl`` (resumable: finished rows are
skipped), then rewrites ``eval/results/families.md``.

Rows (``map`` says which map is scored as the explanation; the image score is always the detector's own):

    ae, vae              pixels at 128 px, map = reconstruction error; ``+gradcam``: Grad-CAM of that error
    cavga                VAE + attention expansion, map = 1 - attention (score = reconstruction)
    feature-ae           autoencoder over efficientnet-lite0 features (224 px, cached), map = feature error
    mahalanobis, odin    efficientnet-lite0 features (224 px); map ``plain`` (no perturbation, epsilon=0),
                         ``perturbed`` (score after the gradient-sign step), ``change`` (score(x) - score(x'))
                         and, with masks, ``gradcam`` (Grad-CAM of the mean patch score)

Every detector fits on at most ``--max-train`` normal images (a seeded subsample; ``split`` says how many of how
many), the test split can be subsampled with ``--test-limit`` (seeded); the autoencoders stop early on a held-out
15 % or at the per-model budget ``--train-seconds``. Feature detectors fit from cached features, so their
``fit_seconds`` excludes the backbone (``backbone_ms_per_image`` is reported beside it).

    python eval/bench_families.py                    # both datasets, every family (~20 min on 2 cores)
    python eval/bench_families.py --data magnetic_tile --detector ae vae
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

from vlm_ad.data import open_data
from vlm_ad.detectors import create_detector
from vlm_ad.evaluation.detection import evaluate
from vlm_ad.evaluation.run import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
DATASETS = {"magnetic_tile": ROOT.parent / "shared" / "data" / "magnetic_tile", "textile": "textile"}
TEXTILE_TEST = 600
BACKBONE = "efficientnet-lite0"
PIXEL = ("ae", "vae", "cavga")
PERTURB = ("mahalanobis", "odin")
DETECTORS = (*PERTURB, "feature-ae", *PIXEL)


def load(dataset) -> tuple[list[np.ndarray], list[str], list[int], list | None]:
    """Images, ids, labels and masks (None without masks) of a whole split."""
    samples = [dataset[i] for i in tqdm(range(len(dataset)), desc="loading", file=sys.stderr)]
    masks = [s.mask for s in samples] if dataset.has_masks else None
    return [s.image for s in samples], [s.image_id for s in samples], [s.label for s in samples], masks


def score(maps, labels, masks) -> dict:
    """The metric suite on a list of AnomalyMaps."""
    return evaluate(labels, [m.score for m in maps], masks=masks, maps=[m.map for m in maps] if masks else None)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def pixel_rows(name, train, test, labels, masks, args):
    """Fit a pixel-space autoencoder on a subsample; rows for its map and (not cavga) its Grad-CAM map."""
    idx = list(range(len(train)))
    det = create_detector(name, image_size=args.pixel_size, seed=args.seed, max_seconds=args.train_seconds,
                          epochs=args.epochs, patience=args.patience)
    _, fit_s = timed(lambda: det.fit([train[i] for i in idx]))
    maps, pred_s = timed(lambda: det.predict(test))
    base = {"backbone": "pixels", "image_size": args.pixel_size, "shots": len(idx), "n_train": len(idx),
            "fit_seconds": fit_s, "epochs_run": len(det.history_.train_loss), "stopped": det.history_.stopped,
            "train_loss_first_last": [det.history_.train_loss[0], det.history_.train_loss[-1]]}
    rows = [{**base, "detector": name, "map": "recon" if name != "cavga" else "1-attention",
             "images_per_second": len(test) / pred_s, **score(maps, labels, masks)}]
    if masks is not None and name != "cavga":
        att, att_s = timed(lambda: det.attention_maps(test))
        rows.append({**base, "detector": name, "map": "gradcam", "images_per_second": len(test) / att_s,
                     **score(att, labels, masks)})
    return rows


def feature_rows(name, train, test, labels, masks, args, cache):
    """Backbone-feature detectors: fit on cached features; perturbation rows run the backbone with gradients."""
    from vlm_ad.backbones import create_backbone

    if "train" not in cache:
        net = create_backbone(BACKBONE, image_size=224)
        cache["train"], _ = timed(lambda: net.extract(train, batch_size=16).layers)
        cache["test"], secs = timed(lambda: net.extract(test, batch_size=16).layers)
        cache["ms"] = 1000 * secs / len(test)
    train_kw = ({"max_seconds": args.train_seconds, "epochs": args.epochs, "patience": args.patience}
                if name == "feature-ae" else {})
    det = create_detector(name, backbone=BACKBONE, seed=args.seed, **train_kw)
    ids = [str(i) for i in range(len(train))]
    _, fit_s = timed(lambda: det.fit_layers(cache["train"], ids))
    sizes = [t.shape[:2] for t in test]
    plain, plain_s = timed(lambda: det.predict_layers(cache["test"], sizes, [str(i) for i in range(len(test))]))
    base = {"backbone": BACKBONE, "image_size": 224, "shots": len(train), "n_train": len(train), "fit_seconds": fit_s,
            "backbone_ms_per_image": cache["ms"]}
    ips = len(test) / (plain_s + cache["ms"] * len(test) / 1000)
    rows = [{**base, "detector": name, "map": "recon" if name == "feature-ae" else "plain", "images_per_second": ips,
             **score(plain, labels, masks)}]
    if name == "feature-ae" and masks is not None:
        att, att_s = timed(lambda: det.attention_maps(test))
        rows.append({**base, "detector": name, "map": "gradcam", "images_per_second": len(test) / att_s,
                     **score(att, labels, masks)})
    if name in PERTURB:
        (moved, change), pert_s = timed(lambda: perturbed_maps(det, test))
        for kind, maps in (("perturbed", moved), ("change", change)):
            rows.append({**base, "detector": name, "map": kind, "epsilon": det.hyper["epsilon"],
                         "images_per_second": len(test) / pert_s, **score(maps, labels, masks)})
        if masks is not None:
            att, att_s = timed(lambda: det.attention_maps(test))
            rows.append({**base, "detector": name, "map": "gradcam", "images_per_second": len(test) / att_s,
                         **score(att, labels, masks)})
    return rows


def perturbed_maps(det, images):
    """One perturbation pass giving both the 'perturbed' and the 'change' maps."""
    net, moved, change = det.embedder.net.eval(), [], []
    for start in tqdm(range(0, len(images), 8), desc=f"{det.name} perturbed", file=sys.stderr):
        chunk = images[start : start + 8]
        clean, pert = det.perturbed_grids(net.preprocess(chunk))
        moved += [det._to_map(g, a, str(start + j), []) for j, (g, a) in enumerate(zip(pert, chunk))]
        change += [det._to_map(g, a, str(start + j), []) for j, (g, a) in enumerate(zip(clean - pert, chunk))]
    return moved, change


KEYS = ("image_auroc", "pixel_auroc", "aupro", "iou", "pointing_game", "fit_seconds", "images_per_second")


def write_table(path: Path) -> None:
    """families.md: one line per row, with the data/split/backbone/shots/seed beside every number."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    head = "| data | split | detector | map | backbone | shots | seed | " + " | ".join(KEYS) + " | trained on |"
    lines = [head, "|" + " --- |" * (8 + len(KEYS))]
    for r in rows:
        vals = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, "-")) for k in KEYS]
        lines.append(f"| {r['data']} | {r['split']} | {r['detector']} | {r['map']} | {r['backbone']} "
                     f"| {r['shots']} | {r['seed']} | " + " | ".join(vals) + f" | {r.get('train_device', '-')} |")
    md = path.with_suffix(".md")
    notes = md.read_text().split("<!-- table -->")[-1] if md.exists() and "<!-- table -->" in md.read_text() else ""
    md.write_text("# Method families (eval/bench_families.py)\n\n" + "\n".join(lines) + "\n\n<!-- table -->" + notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--detector", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    ap.add_argument("--max-train", type=int, default=200, help="normal training images used (seeded subsample)")
    ap.add_argument("--train-seconds", type=float, default=60.0, help="time budget per trained model")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--pixel-size", type=int, default=128)
    ap.add_argument("--patience", type=int, default=4, help="autoencoders: epochs without validation improvement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=None, help="seeded random subsample of the test split")
    ap.add_argument("--out", type=Path, default=RESULTS / "families.jsonl")
    ap.add_argument("--tile-dir", type=Path, default=DATASETS["magnetic_tile"],
                    help="the magnetic_tile folder (default ../shared/data/magnetic_tile)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args(argv)
    DATASETS["magnetic_tile"] = args.tile_dir
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    done = set()
    if args.out.exists():
        done = {(r["data"], r["detector"]) for r in map(json.loads, args.out.read_text().splitlines())}
    for data in args.data:
        todo = [d for d in args.detector if (data, d) not in done]
        if not todo or (data == "magnetic_tile" and not Path(DATASETS[data]).is_dir()):
            continue
        train_ds, test_ds = open_data(DATASETS[data], textile_test=TEXTILE_TEST, seed=0)
        n_test = len(test_ds)
        if args.test_limit and len(test_ds) > args.test_limit:
            test_ds = test_ds.subset(sorted(np.random.default_rng(0).permutation(len(test_ds))[: args.test_limit]))
        keep = sorted(np.random.default_rng(args.seed).permutation(len(train_ds))[: args.max_train].tolist())
        train = load(train_ds.subset(keep))[0]
        test, _, labels, masks = load(test_ds)
        cache: dict = {}
        for name in todo:
            t0 = time.perf_counter()
            rows = (pixel_rows(name, train, test, labels, masks, args) if name in PIXEL
                    else feature_rows(name, train, test, labels, masks, args, cache))
            for r in rows:
                split = f"train={len(train)} of {len(train_ds)} test={len(test)} of {n_test}"
                r = {"data": data, "split": split, "seed": args.seed, **r,
                     "peak_rss_mb": peak_rss_mb(), "train_device": device if name in (*PIXEL, "feature-ae") else "-",
                     "cpu_threads": args.threads}
                with args.out.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
                print(f"{data} {name} {r['map']}: img {r['image_auroc']:.3f} pix {r.get('pixel_auroc')} "
                      f"pro {r.get('aupro')} pg {r.get('pointing_game')} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr)
    write_table(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
