"""Reduced precision on the exported network: does it keep the maps, and what does it buy?

For each backbone at its default input, PatchCore (product defaults: coreset 0.1, 8 normal shots drawn with seed 0)
is fitted with torch, exported (ONNX + OpenVINO IR), and every test image of each set is scored by:

    torch             the model folder (the reference)
    onnx              ONNX Runtime, fp32
    onnx int8         ONNX Runtime on a copy of the network whose MatMul/Gemm weights are int8
                      (``onnxruntime.quantization.quantize_dynamic``: per-channel int8 weights, activations quantised
                      per batch at run time)
    openvino          OpenVINO, fp32
    openvino bf16     OpenVINO with ``INFERENCE_PRECISION_HINT=bf16`` (``--runtime-setting precision=bf16``)

The memory bank and threshold are torch's in every row (what ``vlm-ad export`` ships). Per row: image AUROC, pixel
AUROC and AUPRO@0.3 over all test images, the largest difference of any image score from torch's (relative to the
spread of torch's scores), the share of verdicts (at the saved threshold) equal to torch's, and the backbone's ms per
image (network + aggregation on prepared inputs, median of ``--repeats`` interleaved rounds, batches of equal input
shape up to 8). Sets: the real magnetic_tile subsample and synthetic sets of eval/bench_generalization.py (shapes
and scales differ), so a precision is judged on more than one kind of image. Writes eval/results/precision.md.

    PYTHONPATH=. nice python eval/bench_precision.py [--datasets magnetic coins elongated square] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generalization import _shots, load_suite, score  # noqa: E402  (eval/ scripts share their data)
from bench_speed import fit_and_export as fit_export  # noqa: E402  (and speed.md's fit + export)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "eval" / "results" / "precision.md"
JSONL = RESULTS.with_suffix(".jsonl")
BACKBONES = ("efficientnet-lite0", "dinov2-s14")
VARIANTS = {"torch": ("torch", {}), "onnx": ("onnx", {}), "onnx int8": ("onnx-int8", {}),
            "openvino": ("openvino", {}), "openvino bf16": ("openvino", {"precision": "bf16"})}
SEED = 0


def fit_and_export(backbone: str, train: list, work: Path) -> tuple[Path, Path, Path | None]:
    """bench_speed's fit + export (PatchCore, product defaults, seed 0) on 8 shots of ``train``, plus a copy of the
    export whose ONNX network has int8 weights: (model folder, export folder, int8 export folder or None when the
    network has no MatMul/Gemm to quantise, as efficientnet-lite0, all convolutions)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vlm_ad.export import ONNX_FILE

    model, export = fit_export(backbone, _shots(train, SEED), work)
    int8 = work / "export-int8"
    shutil.copytree(export, int8)
    quantize_dynamic(export / ONNX_FILE, int8 / ONNX_FILE, weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul", "Gemm"])
    if not any(n.op_type == "MatMulInteger" for n in onnx.load(str(int8 / ONNX_FILE)).graph.node):
        return model, export, None
    return model, export, int8


def load(kind: str, settings: dict, model: Path, export: Path, int8: Path, threads: int):
    from vlm_ad.runtime import load_runtime_detector

    if kind == "torch":
        return load_runtime_detector(model, "torch")
    if kind == "onnx-int8":
        return load_runtime_detector(int8, "onnx", threads=threads)
    return load_runtime_detector(export, kind, threads=threads, settings=settings)


def backbone_ms(det, arrays: list[np.ndarray]) -> float:
    """ms per image of the network + aggregation alone, on prepared inputs in batches of equal shape (<= 8)."""
    if hasattr(det, "prepare"):  # an export: the runtime's own network
        inputs = [det.prepare(a) for a in arrays]
        groups: dict = {}
        for x in inputs:
            groups.setdefault(x.shape, []).append(x)
        t0 = time.perf_counter()
        for xs in groups.values():
            for i in range(0, len(xs), 8):
                det.embed(xs[i : i + 8])
        return (time.perf_counter() - t0) * 1000 / len(arrays)
    emb = det.embedder
    with torch.inference_mode():
        t0 = time.perf_counter()
        for group in emb.groups(arrays):
            for i in range(0, len(group), 8):
                emb([arrays[j] for j in group[i : i + 8]])
        return (time.perf_counter() - t0) * 1000 / len(arrays)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["magnetic", "coins", "elongated", "square"])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render", action="store_true", help=f"redraw the table from {JSONL.name}, running nothing")
    args = ap.parse_args(argv)
    if args.render:
        write([json.loads(line) for line in JSONL.read_text().splitlines() if line.strip()], args)
        return
    torch.set_num_threads(args.threads)
    suite = load_suite()
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench_precision_"))
    try:
        for name in args.datasets:
            train, test = suite[name]()
            arrays = [s.image for s in test]
            for backbone in args.backbones:
                folder = work / f"{name}-{backbone}"
                model, export, int8 = fit_and_export(backbone, train, folder)
                dets = {v: load(*VARIANTS[v], model, export, int8, args.threads) for v in VARIANTS
                        if int8 is not None or VARIANTS[v][0] != "onnx-int8"}
                preds = {}
                for v, det in dets.items():
                    maps = []
                    for i in range(0, len(test), 8):
                        maps += det.predict(arrays[i : i + 8])
                    preds[v] = maps
                    backbone_ms(det, arrays[:8])  # warm-up (OpenVINO compiles per shape)
                times: dict = {v: [] for v in dets}
                for _ in range(args.repeats):
                    for v, det in dets.items():
                        times[v].append(backbone_ms(det, arrays))
                ref = np.array([m.score for m in preds["torch"]])
                spread = float(ref.max() - ref.min()) or 1.0
                thr = dets["torch"].threshold_ if hasattr(dets["torch"], "threshold_") else None
                for v in dets:
                    s = np.array([m.score for m in preds[v]])
                    res = score(test, [(m.score, m.map) for m in preds[v]], [True] * len(test))
                    same = float(np.mean((s > thr) == (ref > thr))) if thr is not None else float("nan")
                    row = {"set": name, "backbone": backbone, "variant": v, **res,
                           "score_diff": float(np.abs(s - ref).max() / spread), "same_verdict": same,
                           "ms": statistics.median(times[v]), "load": os.getloadavg()[0], "images": len(test)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                shutil.rmtree(folder, ignore_errors=True)
                JSONL.write_text("".join(json.dumps(r) + "\n" for r in rows))  # kept as it goes: --render redraws
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write(rows, args)


def _f(x, fmt="{:.4f}") -> str:
    return "-" if x is None else fmt.format(x)


METRICS = ("image_auroc", "pixel_auroc", "aupro")


def write(rows: list[dict], args) -> None:
    cmd = "PYTHONPATH=. nice python eval/bench_precision.py " + " ".join(
        [f"--datasets {' '.join(args.datasets)}", f"--repeats {args.repeats}", f"--threads {args.threads}"])
    ref = {(r["set"], r["backbone"]): r for r in rows if r["variant"] == "torch"}
    ms = {(r["set"], r["backbone"], r["variant"]): r["ms"] for r in rows}
    lines = ["# Reduced precision on the exported network: maps kept, time bought", "",
             f"Command: `{cmd}`. PatchCore, product defaults (coreset 0.1), each backbone's default input, 8 normal "
             f"shots drawn with seed {SEED}; every test image of each set (see eval/bench_generalization.py; "
             "magnetic = the real magnetic_tile subsample). The memory bank and threshold are torch's in every row. "
             "`largest AUROC change`: the largest |row - torch| over image AUROC, pixel AUROC and AUPRO@0.3; "
             "`score diff`: the largest |score - torch score| over the spread of torch's scores; `same verdict`: "
             "share of images on the same side of the saved threshold as torch; `backbone ms`: network + "
             f"aggregation per image on prepared inputs, median of {args.repeats} interleaved rounds, {args.threads} "
             "threads, 2 shared cores (load = 1-minute load average). `onnx int8` only where the network has "
             "MatMul/Gemm weights to quantise (dinov2-s14; efficientnet-lite0 is all convolutions).", "",
             "| set | backbone | variant | image AUROC | pixel AUROC | AUPRO | largest AUROC change | score diff | "
             "same verdict | backbone ms | vs fp32, same runtime | load |",
             "|" + " --- |" * 12]
    for r in rows:
        base = ref[(r["set"], r["backbone"])]
        change = max((abs(r[m] - base[m]) for m in METRICS if r.get(m) is not None and base.get(m) is not None),
                     default=None)
        fp32 = {"onnx int8": "onnx", "openvino bf16": "openvino"}.get(r["variant"])
        ratio = f"{ms[(r['set'], r['backbone'], fp32)] / r['ms']:.2f}x faster" if fp32 else ""
        lines.append(f"| {r['set']} | {r['backbone']} | {r['variant']} | "
                     + " | ".join(_f(r.get(m)) for m in METRICS)
                     + f" | {_f(change)} | {_f(r['score_diff'], '{:.1e}')} | {_f(r['same_verdict'], '{:.3f}')} | "
                     f"{r['ms']:.1f} | {ratio} | {r['load']:.1f} |")
    lines += ["", "## Summary", ""] + summary(rows, ref, ms)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


def summary(rows: list[dict], ref: dict, ms: dict) -> list[str]:
    """Per (backbone, reduced variant): the range of speed-ups, the largest AUROC change and the verdicts kept."""
    out = []
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        for variant, fp32 in (("openvino bf16", "openvino"), ("onnx int8", "onnx")):
            sel = [r for r in rows if r["backbone"] == backbone and r["variant"] == variant]
            if not sel:
                continue
            speed = [ms[(r["set"], backbone, fp32)] / r["ms"] for r in sel]
            change = max(abs(r[m] - ref[(r["set"], backbone)][m]) for r in sel for m in METRICS
                         if r.get(m) is not None)
            flips = sum(round((1 - r["same_verdict"]) * r["images"]) for r in sel)
            out.append(f"- {backbone}, {variant}: {min(speed):.2f}-{max(speed):.2f}x faster than {fp32} fp32 on "
                       f"{len(sel)} sets; largest AUROC change {change:.4f}; verdicts changed on {flips} of "
                       f"{sum(r['images'] for r in sel)} images")
    return out


if __name__ == "__main__":
    main()
