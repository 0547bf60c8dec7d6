"""Speed of ``vlm-ad detect`` per backbone and runtime, against the FLOP floor, the old one-at-a-time path and
anomalib's inferencer. Writes eval/results/speed.md.

Data: ``../shared/data/magnetic_tile`` (real; PatchCore fitted on 8 normal shots drawn with seed 0, default
settings: coreset 0.1, each backbone's default input); timed on ``--images`` test images (half good, half defective,
every k-th file in sorted order), or synthetic brick-texture defects when the data is missing. ``--data SET`` times a
set of eval/bench_generalization.py's dev suite instead, written as PNG files first (a grey set as one-channel PNGs):
``coins`` (600 x 800 RGB) and ``gray-elongated`` (500 x 1250 grey) are the image shapes issue 18 measured. Per
backbone:

* **stages**: ms per image of decode (file -> RGB), resize (+ normalise), backbone (network + patch aggregation),
  search (faiss kNN over the memory bank), map (smoothing, resize to the image, hits) and write (regions, overlay,
  PNG + JSON files), for torch one image at a time (the old ``detect``), and torch / onnx / openvino in batches of 8;
* **end to end**: images/s of ``detect_images`` (what ``vlm-ad detect`` runs, files written) for the old path (torch,
  ``--batch-size 1``) and each runtime pipelined in batches of 8 (decode/resize in a thread pool), files written in
  the loop (write threads 0) or behind it (2), with the image AUROC of the scores it wrote (equal maps => equal
  AUROC);
* **runtime settings**: the exported network alone under each knob of ``vlm_ad.runtime.RUNTIME_SETTINGS`` (one
  changed at a time), its parity with torch and its ratio to the FLOP floor;
* **FLOP floor**: FLOPs of the exported network (backbone up to its deepest layer + aggregation) counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (2 x multiply-adds of convolutions and matmuls; pooling, activations
  and norms not counted) at each test image's input shape, over the fp32 matmul rate measured here (2048 x 2048,
  the same thread count, the fastest of torch.mm, ONNX Runtime and OpenVINO), i.e. the time the network would take
  at matmul speed;
* **anomalib**: anomalib 2.7's ``TorchInferencer`` on its PatchCore with the same efficientnet-lite0 weights
  (``eval/peer_anomalib.py``), per image, where it runs.

Medians of ``--repeats`` rounds in one process, the settings interleaved round-robin so that the load of the shared
machine (2 cores, other jobs running: the 1-minute load average is printed beside every row) hits them alike.

    PYTHONPATH=. nice python eval/bench_speed.py [--images 24] [--repeats 3] [--threads 2] [--data coins]
        [--runs onnx openvino] [--no-knobs] [--out eval/results/speed_coins.md]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = ROOT.parent / "shared" / "data" / "magnetic_tile"
RESULTS = ROOT / "eval" / "results" / "speed.md"
BACKBONES = ("efficientnet-lite0", "dinov2-s14")
RUNTIMES = ("torch", "onnx", "openvino")
# what the end-to-end rows run: a runtime with its default settings, or with one setting changed
RUNS = {"torch": ("torch", {}), "onnx": ("onnx", {}), "openvino": ("openvino", {}),
        "onnx spinning": ("onnx", {"spinning": True}), "openvino throughput": ("openvino", {"hint": "THROUGHPUT"}),
        "openvino bf16": ("openvino", {"precision": "bf16"})}  # opt-in: maps not equal, AUROCs are (precision.md)
SUITE_SETS = ("coins", "gray-elongated", "elongated", "clock", "coffee", "square")  # --data choices besides magnetic
NOT_EQUAL = {"openvino bf16"}  # runs whose maps are not torch's to the parity tolerance
STAGES = ("decode", "resize", "backbone", "search", "map", "write")
BATCH = 8


# ------------------------------------------------------------------------------------------------------------ data
def _write_suite_set(name: str, root: Path) -> Path:
    """A set of eval/bench_generalization.py's dev suite written as an MVTec-layout folder of PNG files (a grey set as
    one-channel files, as a grayscale camera writes them), so that decode is timed as on a user's files."""
    from bench_generalization import load_suite

    from vlm_ad.data import save_png

    def one_channel_if_grey(img: np.ndarray) -> np.ndarray:
        return img[..., 0] if (img == img[..., :1]).all() else img

    train, test = load_suite()[name]()
    out = root / name
    for i, s in enumerate(train):
        save_png(out / "train" / "good" / f"{i:03d}.png", one_channel_if_grey(s.image))
    for i, s in enumerate(test):
        kind = s.defect_type if s.label == 1 else "good"
        save_png(out / "test" / kind / f"{i:03d}.png", one_channel_if_grey(s.image))
        if s.label == 1:
            save_png(out / "ground_truth" / kind / f"{i:03d}_mask.png", s.mask > 0)
    return out


def load_data(n: int, work: Path, data: str = "magnetic") -> tuple[str, list, list[Path], list[int]]:
    """(description, 8 normal shots, test files, their labels) of magnetic_tile or of a set of the dev suite."""
    from PIL import Image

    from vlm_ad.data import generate_dataset, open_data, select_shots

    if data != "magnetic":
        root = _write_suite_set(data, work / "suite")
        first = np.asarray(Image.open(next((root / "test" / "good").iterdir())))
        what = (f"the dev suite's `{data}` set (synthetic, eval/bench_generalization.py; written as PNG files, "
                f"{first.shape[0]} x {first.shape[1]} {'grey' if first.ndim == 2 else 'RGB'})")
    elif DATA.is_dir():
        root, what = DATA, f"magnetic_tile (real, {DATA})"
    else:
        root = generate_dataset(work / "data", sources=("brick",), n_train=8, n_test_good=n // 2,
                                n_test_per_type=n // 2, types=("hole",), image_size=256, seed=0)["brick"]
        what = "synthetic brick-texture holes, 256 px (magnetic_tile missing)"
    train, test = open_data(root)
    good = [it for it in test.items if it.label == 0]
    bad = [it for it in test.items if it.label == 1]
    pick = good[:: max(1, len(good) // (n // 2))][: n // 2] + bad[:: max(1, len(bad) // (n - n // 2))][: n - n // 2]
    return what, select_shots(train, 8, 0), [it.path for it in pick], [int(it.label) for it in pick]


def fit_and_export(backbone: str, shots: list, work: Path) -> tuple[Path, Path]:
    from vlm_ad.detectors import create_detector
    from vlm_ad.export import export_model

    det = create_detector("patchcore", backbone=backbone, seed=0).fit(shots)
    det.save(work / f"{backbone}-model")
    export_model(work / f"{backbone}-model", work / f"{backbone}-export", fmt="openvino")
    return work / f"{backbone}-model", work / f"{backbone}-export"


def load(model: Path, export: Path, run: str, threads: int):
    from vlm_ad.runtime import load_runtime_detector

    runtime, settings = RUNS[run]
    return load_runtime_detector(model if runtime == "torch" else export, runtime, threads=threads, settings=settings)


# ---------------------------------------------------------------------------------------------------------- stages
def _torch_stages(det, arrays: list[np.ndarray], batch: int) -> dict[str, float]:
    """Seconds per stage of the torch detector's predict, stage by stage (what ``predict`` does inside)."""
    emb, t = det.embedder, dict.fromkeys(("resize", "backbone", "search", "map"), 0.0)
    groups = emb.groups(arrays) if batch > 1 else [[i] for i in range(len(arrays))]
    for idx in groups:
        for s in range(0, len(idx), batch):
            part = idx[s : s + batch]
            t0 = time.perf_counter()
            x = emb.net.preprocess([arrays[i] for i in part], size=emb.input_shape(arrays[part[0]]))
            t1 = time.perf_counter()
            with torch.no_grad():
                e = emb.aggregate(emb.net(x))
            t2 = time.perf_counter()
            grids, hits = det._score_embeddings(e)
            t3 = time.perf_counter()
            det._to_maps(grids, [arrays[i].shape[:2] for i in part], [str(i) for i in part], hits)
            t4 = time.perf_counter()
            for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                t[k] += v
    return t


def _runtime_stages(det, arrays: list[np.ndarray]) -> dict[str, float]:
    det.timings_ = dict.fromkeys(det.timings_, 0.0)
    det.predict(arrays)
    return dict(det.timings_)


def stages(det, runtime: str, files: list[Path], batch: int, out: Path) -> dict[str, float]:
    """ms per image of each stage."""
    from vlm_ad._cache import atomic_write_bytes
    from vlm_ad.data import load_image
    from vlm_ad.pipeline import detection_outputs

    t0 = time.perf_counter()
    arrays = [load_image(f) for f in files]
    t = {"decode": time.perf_counter() - t0}
    t |= _torch_stages(det, arrays, batch) if runtime == "torch" else _runtime_stages(det, arrays)
    maps = det.predict(arrays)
    t0 = time.perf_counter()
    for i, (amap, img) in enumerate(zip(maps, arrays)):
        record, png = detection_outputs(amap, img, region_threshold=None)
        atomic_write_bytes(out / f"{i}_overlay.png", png)
        atomic_write_bytes(out / f"{i}.json", str(record).encode())
    t["write"] = time.perf_counter() - t0
    return {k: 1e3 * v / len(files) for k, v in t.items()}


def _old_colorize(values, vmin=None, vmax=None):
    """The colormap as ``vlm_ad.viz.colorize`` computed it before its lookup table (interpolated per pixel)."""
    from vlm_ad.viz import interpolated_colors

    v = np.asarray(values, dtype=np.float32)
    lo = float(np.min(v)) if vmin is None else vmin
    hi = float(np.max(v)) if vmax is None else vmax
    return interpolated_colors((v - lo) / (hi - lo if hi > lo else 1.0))


def _old_overlay(image, amap, *, vmin=None, vmax=None, alpha=0.5, mask=None):
    """``vlm_ad.viz.overlay`` before the speed work: a float blend of the interpolated colours."""
    heat = _old_colorize(amap, vmin, vmax).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


@contextlib.contextmanager
def overlay_path(kind: str):
    """How the overlays are made: ``"old"``: as the old ``detect`` made them (colours interpolated per pixel, a float
    blend, Pillow's PNG encoder at its default zlib level 6); ``"now"``: the product's code as it is."""
    import vlm_ad.viz as viz

    saved = viz.overlay, viz.png_bytes, viz._cv2
    if kind == "old":
        viz.overlay = _old_overlay
        viz.png_bytes = functools.partial(saved[1], compress_level=6)
        viz._cv2 = lambda: None  # Pillow's encoder, as before OpenCV's
    try:
        yield
    finally:
        viz.overlay, viz.png_bytes, viz._cv2 = saved


def end_to_end(det, files: list[Path], batch: int, out: Path, write_threads: int) -> tuple[float, list[float]]:
    """(images/s of detect_images, scores in file order); ``write_threads`` 0 writes the files in the loop."""
    from vlm_ad.engines import LocalEngine
    from vlm_ad.pipeline import Pipeline, detect_images

    t0 = time.perf_counter()
    res = detect_images(files, det, out, engine=LocalEngine(Pipeline(det), batch_size=batch),
                        write_threads=write_threads)
    seconds = time.perf_counter() - t0
    return len(files) / seconds, [r.record["score"] for r in res]


# ------------------------------------------------------------------------------------------------ runtime settings
# (runtime, settings): the defaults first, then one knob changed at a time (vlm_ad.runtime.RUNTIME_SETTINGS)
KNOBS = [("onnx", {}), ("onnx", {"spinning": True}), ("onnx", {"optimization": "extended"}),
         ("openvino", {}), ("openvino", {"static": True}), ("openvino", {"static": False}),
         ("openvino", {"hint": "THROUGHPUT"}),
         ("openvino", {"streams": 1}), ("openvino", {"precision": "bf16"})]


def knob_name(rt: str, settings: dict) -> str:
    return f"{rt} " + (", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults")


def knob_inputs(det, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """The prepared inputs stacked by input shape (each a (B, 3, H, W) batch of at most BATCH images)."""
    groups: dict = {}
    for a in arrays:
        x = det.prepare(a)
        groups.setdefault(x.shape, []).append(x)
    return [np.stack(v[i : i + BATCH]) for v in groups.values() for i in range(0, len(v), BATCH)]


def knob_parity(net, torch_det, batches: list[np.ndarray]) -> float:
    """max |runtime - torch| of the patch embeddings over the largest torch value (same inputs)."""
    emb, diff, scale = torch_det.embedder, 0.0, 0.0
    for x in batches:
        with torch.no_grad():
            ref = emb.aggregate(emb.net(torch.from_numpy(x))).numpy()
        diff, scale = max(diff, float(np.abs(net(x) - ref).max())), max(scale, float(np.abs(ref).max()))
    return diff / scale


def knob_rounds(export: Path, torch_det, arrays: list[np.ndarray], threads: int, repeats: int) -> list[tuple]:
    """(name, backbone ms per image, relative parity, load) per KNOBS setting, medians of interleaved rounds."""
    from vlm_ad.runtime import load_runtime_detector

    nets = {knob_name(rt, kw): load_runtime_detector(export, rt, threads=threads, settings=kw).net for rt, kw in KNOBS}
    batches = knob_inputs(load_runtime_detector(export, "onnx", threads=threads), arrays)
    parity = {name: knob_parity(net, torch_det, batches) for name, net in nets.items()}  # also a warm-up
    for net in nets.values():  # a second pass: ONNX Runtime's first runs of each shape are still slow
        for x in batches:
            net(x)
    ms: dict = {name: [] for name in nets}
    loads: dict = {name: [] for name in nets}
    rates = []
    for _ in range(repeats):
        rates.append(matmul_gflops(threads, repeats=3))
        for name, net in nets.items():
            loads[name].append(os.getloadavg()[0])
            t0 = time.perf_counter()
            for x in batches:
                net(x)
            ms[name].append(1e3 * (time.perf_counter() - t0) / len(arrays))
    rate = statistics.median(rates)
    return [(name, statistics.median(ms[name]), parity[name], statistics.median(loads[name]), rate) for name in nets]


# ------------------------------------------------------------------------------------------------------ FLOP floor
MATMUL_LOG: dict[str, list[float]] = {}  # library -> every rate its probes measured in this process


def _rate(call, n: int, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def _matmul_model(n: int) -> bytes:
    """An ONNX graph of one fp32 (n, n) x (n, n) MatMul."""
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ABC"]
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "mm", io[:2], io[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def matmul_rates(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """fp32 GFLOP/s of an n x n matmul in each library here at ``threads`` threads: torch (``torch.mm``: its BLAS,
    MKL in the PyPI wheels, which takes a slower path on AMD CPUs), ONNX Runtime and OpenVINO (oneDNN/MLAS kernels)
    where installed. Each median of ``repeats`` calls is also appended to :data:`MATMUL_LOG`."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {"torch": _rate(lambda: torch.mm(a, b), n, repeats)}
    an, bn = a.numpy(), b.numpy()
    with contextlib.suppress(ImportError):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(_matmul_model(n), opts, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = _rate(lambda: sess.run(None, {"A": an, "B": bn}), n, repeats)
    with contextlib.suppress(ImportError):
        import openvino as ov

        core = ov.Core()
        net = core.compile_model(core.read_model(_matmul_model(n), b""), "CPU",
                                 {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
        req = net.create_infer_request()
        out["openvino"] = _rate(lambda: req.infer({0: an, 1: bn}), n, repeats)
    for lib, rate in out.items():
        MATMUL_LOG.setdefault(lib, []).append(rate)
    return out


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The floor's rate: the fastest fp32 matmul any library here reaches (:func:`matmul_rates`). torch.mm alone
    understates it where its BLAS is not the fastest (on this AMD EPYC: 104 GFLOP/s against ONNX Runtime's 278), and
    a floor from a slow matmul flatters every network measured against it."""
    return max(matmul_rates(threads, n, repeats).values())


def matmul_note() -> str:
    """'torch 104, onnxruntime 278, openvino 267': each library's median rate over the probes of this process."""
    return ", ".join(f"{lib} {statistics.median(v):.0f}" for lib, v in MATMUL_LOG.items())


def gflop_at(net, shape: tuple[int, int]) -> float:
    """GFLOP of ``net`` on one (3, H, W) input of ``shape`` (``FlopCounterMode``: 2 x multiply-adds of convolutions and
    matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, 3, *shape))
    return fc.get_total_flops() / 1e9


def network_gflop(model: Path, files: list[Path]) -> tuple[float, float]:
    """(mean GFLOP per test image at its input shape, GFLOP at a 224 x 224 input) of the exported network."""
    from vlm_ad.data import load_image
    from vlm_ad.detectors import load_detector
    from vlm_ad.export import EmbedNet

    det = load_detector(model)
    net, emb = EmbedNet(det.embedder).eval(), det.embedder
    count = functools.lru_cache(maxsize=None)(lambda shape: gflop_at(net, shape))
    per_image = [count(tuple(emb.input_shape(load_image(f)))) for f in files]
    return float(np.mean(per_image)), count((224, 224))


# -------------------------------------------------------------------------------------------------------- anomalib
def anomalib_ms(shots: list, files: list[Path], work: Path, threads: int, repeats: int = 1
                ) -> tuple[float | None, str]:
    """ms per image of anomalib's TorchInferencer.predict(file) on its PatchCore with our efficientnet-lite0
    weights (eval/peer_anomalib.py), the median of ``repeats`` passes over the files; (None, reason) when it does not
    run here."""
    try:
        from anomalib.deploy import TorchInferencer
        from anomalib.models import Patchcore
        from peer_anomalib import TIMM_BACKBONE, TIMM_LAYERS, load_lite0_weights, preprocess

        torch.set_num_threads(threads)
        module = Patchcore(backbone=TIMM_BACKBONE, layers=list(TIMM_LAYERS), pre_trained=False,
                           coreset_sampling_ratio=0.1)
        load_lite0_weights(module.model.feature_extractor.feature_extractor)
        module.model.train()
        module.model.feature_extractor.eval()
        with torch.no_grad():
            module.model(preprocess([s.image for s in shots], 224))
            module.model.subsample_embedding(0.1)
        module.eval()
        path = work / "anomalib_patchcore.pt"
        torch.save({"model": module}, path)  # what anomalib's export_to_torch writes: a pickled module
        os.environ["TRUST_REMOTE_CODE"] = "1"  # the pickle is the one written just above
        inferencer = TorchInferencer(path, device="cpu")
        inferencer.predict(str(files[0]))  # warm-up
        passes = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for f in files:
                inferencer.predict(str(f))
            passes.append(1e3 * (time.perf_counter() - t0) / len(files))
        return statistics.median(passes), (f"TorchInferencer.predict(path), one image per call, median of {repeats} "
                                           "passes over the files")
    except Exception as exc:  # noqa: BLE001 - reported in the table, with the error
        traceback.print_exc()
        return None, f"did not run here: {type(exc).__name__}: {str(exc)[:200]}"


# ------------------------------------------------------------------------------------------------------------ main
def auroc(labels: list[int], scores: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--data", default="magnetic", choices=("magnetic", *SUITE_SETS),
                    help="magnetic_tile (real) or a set of the dev suite (eval/bench_generalization.py) at the "
                         "shapes issue 18 measured: coins (600 x 800 RGB), gray-elongated (500 x 1250 grey)")
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS),
                    help="the batched runtime rows (the old path and torch batch 1 always run)")
    ap.add_argument("--no-knobs", action="store_true", help="skip the runtime-settings rounds")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--write-set", type=Path, metavar="DIR",
                    help="only write the --data set as an MVTec-layout folder DIR/<set> and exit (to run 'vlm-ad eval' "
                         "on the same files)")
    args = ap.parse_args(argv)
    if args.write_set:
        if args.data == "magnetic":
            ap.error("--write-set needs a dev-suite set: --data coins|gray-elongated|...")
        print(_write_suite_set(args.data, args.write_set))
        return
    args.command = "PYTHONPATH=. nice python eval/bench_speed.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    what, shots, files, labels = load_data(args.images, work, args.data)
    gflops = matmul_gflops(args.threads)
    print(f"data: {what}; {len(files)} test images; fp32 matmul {gflops:.0f} GFLOP/s on {args.threads} threads")
    from vlm_ad.data import load_image

    rows, e2e, floors, notes, knobs, rates, inputs = [], [], {}, [], {}, [gflops], {}
    for backbone in args.backbones.split(","):
        model, export = fit_and_export(backbone, shots, work)
        floors[backbone] = network_gflop(model, files)
        runs = ["torch", *(r for r in args.runs if r != "torch")]
        dets = {run: load(model, export, run, args.threads) for run in runs}
        inputs[backbone] = dets["torch"].embedder.geometry.describe()  # the input the rows below ran at
        settings = [("torch", 1, "old", 0), ("torch", 1, "now", 0)] + [(rt, BATCH, "now", 0) for rt in runs] + \
            [(rt, BATCH, "now", 2) for rt in runs]  # last: files written by 2 threads behind the compute
        for s in settings[2:]:  # warm-up: a runtime plans (and OpenVINO compiles) per input shape on first sight
            end_to_end(dets[s[0]], files, s[1], work / f"warm-{backbone}-{s[0]}-{s[3]}", s[3])
        st: dict = {s: [] for s in settings}
        ee: dict = {s: [] for s in settings}
        scores: dict = {}
        loads: dict = {s: [] for s in settings}
        for r in range(args.repeats):
            rates.append(matmul_gflops(args.threads, repeats=3))
            for s in settings:
                rt, batch, level, wt = s
                tag = f"{backbone}-{rt}-{batch}-{level}-{wt}-{r}"
                loads[s].append(os.getloadavg()[0])
                with overlay_path(level):
                    if wt == 0:  # the stage split (the same with writes behind: they are timed alone here)
                        (work / f"out-{tag}").mkdir()
                        st[s].append(stages(dets[rt], rt, files, batch, work / f"out-{tag}"))
                    ips, sc = end_to_end(dets[rt], files, batch, work / f"e2e-{tag}", wt)
                ee[s].append(ips)
                scores[s] = sc
                print(f"{backbone} {rt} batch {batch} overlay {level} write threads {wt} round {r}: {ips:.2f} images/s",
                      flush=True)
        for s in settings:
            if st[s]:
                med = {k: statistics.median(x[k] for x in st[s]) for k in STAGES}
                rows.append((backbone, *s[:3], med, statistics.median(loads[s])))
            e2e.append((backbone, *s, statistics.median(ee[s]), auroc(labels, scores[s]),
                        statistics.median(loads[s])))
        if args.no_knobs:
            continue
        arrays = [load_image(f) for f in files]
        knobs[backbone] = knob_rounds(export, dets["torch"], arrays, args.threads, args.repeats)
        for name, ms, par, ld, rate in knobs[backbone]:
            print(f"{backbone} {name}: backbone {ms:.1f} ms/image, parity {par:.1e}, load {ld:.1f}, matmul {rate:.0f} "
                  "GFLOP/s", flush=True)
    ano_ms, ano_note = (anomalib_ms(shots, files, work, args.threads, args.repeats)
                        if "efficientnet-lite0" in args.backbones else (None, "not run"))
    gflops = statistics.median(rates)  # the floor of the stage rows: the matmul rate over all their rounds
    write(what, files, args, gflops, rows, e2e, floors, ano_ms, ano_note, notes, knobs, inputs)


def cpu_bf16() -> str:
    """Which bf16 units this CPU has, from /proc/cpuinfo's flags (Linux)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "flags unknown"
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX-512 BF16, no AMX" if "avx512_bf16" in flags else "no bf16 units: emulated"


def _knob(results: list, name: str):
    return next((r for r in results if r[0] == name), None)


def bf16_gain(knobs: dict) -> str:
    """'1.5-1.7x': backbone ms of OpenVINO's defaults over bf16's, the range over the backbones."""
    ratios = [d[1] / b[1] for res in knobs.values()
              if (d := _knob(res, "openvino defaults")) and (b := _knob(res, "openvino precision=bf16"))]
    return f"{min(ratios):.1f}-{max(ratios):.1f}x" if ratios else "not measured"


def bf16_parity(knobs: dict) -> str:
    vals = [b[2] for res in knobs.values() if (b := _knob(res, "openvino precision=bf16"))]
    return f"{min(vals):.1e}-{max(vals):.1e}" if vals else "not measured"


def knob_lines(args, knobs: dict, floors: dict) -> list[str]:
    """The runtime-settings section of speed.md."""
    lines = ["", "## Runtime settings (backbone only)", "",
              f"The exported network alone (batches of equal input shape, at most {BATCH} images), {args.threads} "
              "threads, one knob changed at a time from the defaults (`vlm_ad.runtime.RUNTIME_SETTINGS`); "
              "parity = max |runtime - torch| of the patch embeddings on the same inputs over their largest value "
              "(the export check allows 1e-3 absolute; maps are tested within 1e-4 of their range); floor ratio "
              "against the matmul rate measured in the same rounds.", "",
              "| backbone | setting | backbone ms per image | / FLOP floor | parity | matmul GFLOP/s | load |",
              "|" + " --- |" * 7]
    for backbone, results in knobs.items():
        for name, ms, par, ld, rate in results:
            floor_ms = floors[backbone][0] / rate * 1e3
            lines.append(f"| {backbone} | {name} | {ms:.1f} | {ms / floor_ms:.2f}x | {par:.1e} | {rate:.0f} | "
                         f"{ld:.1f} |")
    lines += ["", "Defaults: ONNX Runtime optimisation `all`, no thread spinning; OpenVINO LATENCY hint, f32, static "
              "shapes `auto` (a network compiled for the one input shape of square/fixed-shape geometry: dinov2-s14 "
              "here; dynamic shapes for aspect-keeping geometry, whose many input shapes would each cost a compile). "
              f"bf16 (this CPU: {cpu_bf16()}) is {bf16_gain(knobs)} faster than OpenVINO's defaults here, but its "
              f"embeddings are {bf16_parity(knobs)} off torch's (relative to their largest value), far outside the "
              "parity tolerance, so it is never a default: eval/results/precision.md measures what it does to the "
              "maps (AUROCs, verdicts) on several sets. The defaults row repeats a configuration of another row "
              "(OpenVINO static=True for dinov2-s14, static=False for efficientnet-lite0): how far those two differ "
              "shows the noise of the shared cores."]
    if args.threads == 1:
        lines += ["", "At 1 thread ONNX Runtime has no intra-op pool, so `spinning` cannot act: its row differs from "
                  "the defaults' by the noise of these shared cores alone, a measure of how far apart two rows must "
                  "be to mean anything. Spinning is off by default because spinning workers take CPU from the "
                  "decode/overlay/write threads of a pipelined run (a 2-thread probe under a load average of 9: "
                  "efficientnet-lite0 backbone 20 ms per image without spinning, 40 with; not in this table)."]
    return lines


def write(what, files, args, gflops, rows, e2e, floors, ano_ms, ano_note, notes, knobs, inputs) -> None:
    lines = ["# Speed of detect: stages, runtimes, FLOP floor", "",
             f"Command: `{args.command}`. Data: {what}; PatchCore, 8 normal shots (seed 0), coreset 0.1, each "
             f"backbone's default input ({'; '.join(f'{b}: {i}' for b, i in inputs.items())}); "
             f"{len(files)} test images (half good, half defective). {args.threads} threads for torch, ONNX Runtime "
             f"and OpenVINO (fp32). Medians of {args.repeats} rounds, settings interleaved. The machine has 2 cores "
             "shared with other jobs: `load` is the 1-minute load average when the row was measured (2 = both cores "
             "busy before this job).", "",
             f"fp32 matmul here: **{gflops:.0f} GFLOP/s** (2048 x 2048, {args.threads} threads; median over a "
             "probe before the rounds and one in each round of the fastest library in that probe; each library's "
             f"median: {matmul_note()} GFLOP/s). The floor's rate is the fastest matmul any runtime here reaches, "
             "not torch.mm's alone (its BLAS can be the slowest of the three).", "",
             "## ms per image, by stage", "",
             "| backbone | runtime | batch | overlay | decode | resize | backbone | search | map | write | total | "
             "backbone / FLOP floor | load |", "|" + " --- |" * 13]
    for backbone, rt, batch, level, med, load in rows:
        floor_ms = floors[backbone][0] / gflops * 1e3
        lines.append(f"| {backbone} | {rt} | {batch} | {level} | " + " | ".join(f"{med[k]:.1f}" for k in STAGES) +
                     f" | {sum(med.values()):.1f} | {med['backbone'] / floor_ms:.1f}x | {load:.1f} |")
    lines += ["", "torch, batch 1, overlay old is the old `detect` (one image at a time; overlays as it made them: "
              "colours interpolated per pixel, a float blend, Pillow's PNG encoder at its default zlib level 6); "
              "overlay now: the product's overlay code (colour lookup table, integer blend, zlib level 1, OpenCV's "
              "Huffman-only PNG encoder where installed); batched rows group images of equal input "
              "shape" + (" (magnetic_tile images come in many sizes, so with aspect-keeping geometry many groups "
                         "hold one image: batching gains little there, the runtime gains the rest)"
                         if args.data == "magnetic" else "") + ".", "",
              "## FLOP floor", "",
              "| backbone | GFLOP per test image (mean) | GFLOP at 224 x 224 | floor ms per image |",
              "| --- | --- | --- | --- |"]
    for backbone, (per_image, at224) in floors.items():
        lines.append(f"| {backbone} | {per_image:.2f} | {at224:.2f} | {per_image / gflops * 1e3:.1f} |")
    lines += ["", "FLOPs: `torch.utils.flop_counter.FlopCounterMode` on the exported network (backbone to its deepest "
              "layer + patch aggregation) at each image's input shape; 2 x multiply-adds of convolutions and matmuls, "
              "pooling/activations/norms not counted. Floor = FLOPs / the matmul rate above. Depthwise convolutions "
              "(EfficientNet) cannot reach matmul speed.", "",
              "## End to end (`detect_images`: decode, detect, regions, overlay, files written)", "",
              "| backbone | runtime | batch | overlay | write threads | images/s | vs old path | image AUROC | "
              "load |",
              "|" + " --- |" * 9]
    base = {r[0]: r[5] for r in e2e if r[1:5] == ("torch", 1, "old", 0)}
    for backbone, rt, batch, level, wt, ips, auc, load in e2e:
        lines.append(f"| {backbone} | {rt} | {batch} | {level} | {wt} | {ips:.2f} | {ips / base[backbone]:.2f}x | "
                     f"{auc:.4f} | {load:.1f} |")
    if "openvino bf16" in args.runs:
        lines += ["", "`openvino bf16`: OpenVINO with `--runtime-setting precision=bf16`, opt-in: its maps are not "
                  "torch's to the parity tolerance (scores about 0.5% of their spread off for dinov2-s14); "
                  "eval/results/precision.md measures its AUROCs and verdicts against torch's on five sets."]
    lines += ["", "Write threads 0: each image's two files written in the loop that computes (the path before "
              "`vlm_ad._writer.BackgroundWriter`); 2: written by two threads behind the compute (now the default). "
              "The overlay itself (regions, colours, PNG) is made in the batch engine's thread pool either way."]
    if knobs:
        lines += knob_lines(args, knobs, floors)
    lines += ["", "## anomalib", ""]
    eff = next((r for r in e2e if r[0] == "efficientnet-lite0" and r[1] != "torch"), None)
    if ano_ms is None:
        lines.append(f"anomalib 2.7 inferencer: {ano_note}.")
    else:
        best = max((r for r in e2e if r[0] == "efficientnet-lite0" and r[1] not in NOT_EQUAL), key=lambda r: r[5]) \
            if eff else None  # at equal maps: the bf16 rows are not compared
        predict = {(b, rt, batch): sum(med[k] for k in STAGES if k != "write") for b, rt, batch, _, med, _ in rows}
        fast = min((v, k) for k, v in predict.items() if k[0] == "efficientnet-lite0" and k[1] not in NOT_EQUAL)
        lines.append(f"anomalib 2.7 PatchCore (timm tf_efficientnet_lite0 with the same weights, layers blocks.2 + "
                     f"blocks.4, 224 px, coreset 0.1), {ano_note}: **{ano_ms:.1f} ms per image** "
                     f"({1e3 / ano_ms:.2f} images/s; no overlay or files written)." +
                     (f" vlm-ad's fastest efficientnet-lite0 row at equal maps ({best[1]}, batch {best[2]}, write "
                      f"threads {best[4]}, files written): {best[5]:.2f} images/s = **{best[5] * ano_ms / 1e3:.2f}x** "
                      "anomalib's rate." if best else "") +
                     f" Like for like (decode to map, no files): vlm-ad {fast[1][1]} batch {fast[1][2]} "
                     f"{fast[0]:.1f} ms per image = **{ano_ms / fast[0]:.1f}x** faster than anomalib's inferencer; "
                     f"the old torch path {predict[('efficientnet-lite0', 'torch', 1)]:.1f} ms. anomalib's inferencer "
                     "uses its default pre-processing (resize 256, centre crop 224, ImageNet normalisation): the "
                     "same network at the same 224 x 224 cost, not the same scores.")
    if args.threads == 1:
        lines += ["", "Why 1 thread: on these shared cores (see the load column) torch's two OpenMP workers stall "
                  "each other; a probe in the same hour (efficientnet-lite0 forward at 224 px, 7 calls) took 370-3,500 "
                  "ms per call with 2 threads and 43-88 ms with 1, so every runtime here runs on 1 thread and the "
                  "matmul rate (the floor) is measured on 1 thread too."]
    lines += notes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
