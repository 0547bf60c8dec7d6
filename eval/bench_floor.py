"""The exported network alone against its FLOP floor, each runtime in its own process, at a fixed input.

``bench_speed.py`` times the network inside one process that also holds torch, faiss, OpenCV and the other runtimes'
thread pools, on magnetic_tile's many input shapes: there a runtime is timed right after another pool's threads
were busy-waiting, and each new input shape costs a plan. This script isolates the question the speed issue asks
("the backbone within Nx of its FLOP floor"): one child process per (runtime, setting) that imports nothing but
that runtime (torch only for the torch rows), feeds a fixed (batch, 3, size, size) input, warms up and times
``--repeats`` calls; the parent measures the fp32 matmul rate (2048 x 2048, same thread count; the fastest of
torch.mm, ONNX Runtime and OpenVINO: bench_speed.matmul_gflops)
between the children and counts the network's FLOPs with ``torch.utils.flop_counter`` (2 x multiply-adds of
convolutions and matmuls; norms, activations and pooling not counted). Floor = FLOPs / matmul rate.

    PYTHONPATH=. python eval/bench_floor.py [--size 224] [--batch 8] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = ROOT / "eval" / "results" / "floor.md"
BACKBONES = ("efficientnet-lite0", "dinov2-s14")
# (runtime, settings): the defaults of each runtime, then the settings that measured fastest in speed.md
RUNS = [("torch", {}), ("onnx", {}), ("onnx", {"spinning": True}), ("openvino", {}), ("openvino", {"streams": 1}),
        ("openvino", {"hint": "THROUGHPUT"}),
        ("openvino", {"precision": "bf16"})]


def child(folder: str, runtime: str, settings: dict, batch: int, size: int, repeats: int, threads: int) -> None:
    """Time one runtime's network (prints a JSON list of ms per image)."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    if runtime == "torch":
        import torch

        from vlm_ad.detectors import load_detector
        from vlm_ad.export import EmbedNet

        torch.set_num_threads(threads)
        net, t = EmbedNet(load_detector(folder).embedder).eval(), torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                net(t)
    else:
        from vlm_ad.runtime import load_runtime_detector

        net = load_runtime_detector(folder, runtime, threads=threads, settings=settings).net

        def run() -> None:
            net(x)
    for _ in range(3):
        run()
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        ms.append(1e3 * (time.perf_counter() - t0) / batch)
    assert "torch" not in sys.modules or runtime == "torch", "a runtime child imported torch"
    print(json.dumps(ms))


def gflop(model: Path, size: int) -> float:
    from bench_speed import gflop_at

    from vlm_ad.detectors import load_detector
    from vlm_ad.export import EmbedNet

    return gflop_at(EmbedNet(load_detector(model).embedder).eval(), (size, size))


def name(runtime: str, settings: dict) -> str:
    return runtime + (" " + ", ".join(f"{k}={v}" for k, v in settings.items()) if settings else " defaults")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224, help="side of the square input, px")
    ap.add_argument("--batch", type=int, default=8, help="images per network call")
    ap.add_argument("--repeats", type=int, default=7, help="timed calls per row (after 3 warm-ups)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every runtime and of the matmul probe")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated backbones")
    ap.add_argument("--out", type=Path, default=RESULTS, help="the markdown table to write")
    ap.add_argument("--child", nargs=3, metavar=("FOLDER", "RUNTIME", "SETTINGS_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        folder, runtime, settings = args.child
        return child(folder, runtime, json.loads(settings), args.batch, args.size, args.repeats, args.threads)

    from bench_speed import fit_and_export, load_data, matmul_gflops, matmul_note  # the probe of speed.md

    work = Path(tempfile.mkdtemp(prefix="bench_floor_"))
    what, shots, _, _ = load_data(8, work)
    rows, rates = [], [matmul_gflops(args.threads)]
    for backbone in args.backbones.split(","):
        model, export = fit_and_export(backbone, shots, work)
        flops = gflop(model, args.size)
        for runtime, settings in RUNS:
            folder = model if runtime == "torch" else export
            cmd = [sys.executable, __file__, "--child", str(folder), runtime, json.dumps(settings), "--size",
                   str(args.size), "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads",
                   str(args.threads)]
            load = os.getloadavg()[0]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode:
                print(f"{backbone} {name(runtime, settings)} failed: {out.stderr[-500:]}", flush=True)
                continue
            ms = json.loads(out.stdout.strip().splitlines()[-1])
            rates.append(matmul_gflops(args.threads))
            rows.append((backbone, name(runtime, settings), flops, statistics.median(ms), min(ms), max(ms), load))
            print(f"{backbone} {name(runtime, settings)}: {statistics.median(ms):.1f} ms/image "
                  f"({min(ms):.1f}-{max(ms):.1f}), {flops:.2f} GFLOP, load {load:.1f}", flush=True)
    rate = statistics.median(rates)
    args.out = args.out.resolve()
    command = f"--size {args.size} --batch {args.batch} --repeats {args.repeats} --threads {args.threads}"
    command += f" --backbones {args.backbones}" if args.backbones != ",".join(BACKBONES) else ""
    command += f" --out {os.path.relpath(args.out, ROOT)}" if args.out != RESULTS else ""  # any folder
    lines = ["# The network alone against its FLOP floor (one process per runtime)", "",
             f"Command: `PYTHONPATH=. python eval/bench_floor.py {command}"
             "`. Networks: the exported embedder of a PatchCore fitted on "
             f"{what} (8 shots, seed 0; backbone up to its deepest layer + patch aggregation, the part `vlm-ad "
             f"export` writes), fed a fixed random ({args.batch}, 3, {args.size}, {args.size}) input; each "
             "(runtime, setting) in its own process (no other runtime's threads in it), 3 warm-up calls, then "
             f"{args.repeats} timed calls: median (min-max) ms per image. fp32 matmul: **{rate:.0f} GFLOP/s** (median "
             f"of {len(rates)} probes between the children, {min(rates):.0f}-{max(rates):.0f}; 2048 x 2048, "
             f"{args.threads} threads, each probe the fastest of torch.mm, ONNX Runtime and OpenVINO; each "
             f"library's median: {matmul_note()} GFLOP/s). Floor = FLOPs / that rate. `load`: 1-minute load "
             "average before the row (the job itself adds up to 2).", "",
             "| backbone | runtime, setting | GFLOP per image | ms per image | min-max | floor ms | / floor | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for backbone, run, flops, med, lo, hi, load in rows:
        floor = flops / rate * 1e3
        lines.append(f"| {backbone} | {run} | {flops:.2f} | {med:.1f} | {lo:.1f}-{hi:.1f} | {floor:.1f} | "
                     f"{med / floor:.2f}x | {load:.1f} |")
    lines += ["", "bf16 (OpenVINO; AMX or AVX-512 BF16 units) computes below fp32 precision: its embeddings are "
              "0.5-10% off torch's (speed.md, parity column; precision.md: what that does to AUROCs and verdicts), "
              "so it is never a default and its ratio is against the fp32 floor. "
              "Depthwise convolutions (EfficientNet) cannot reach matmul speed."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
