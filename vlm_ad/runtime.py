"""Run an exported model (``vlm-ad export``) with ONNX Runtime or OpenVINO, without importing PyTorch.

::

    from vlm_ad.runtime import load_runtime_detector

    det = load_runtime_detector("exports/tile", "onnx")     # or "openvino"; "torch" loads the model with PyTorch
    [amap] = det.predict([image])                           # AnomalyMap: score, map, hits, threshold

Every step of the hot path is torch-free: resize and normalise (Pillow, float32, the same antialiased bilinear
filter as the torch path), the backbone + aggregation (the exported network), the nearest-neighbour search (faiss
over the exported memory bank), the map smoothing and resize (OpenCV bilinear + separable Gaussian, reflect-101
borders, as the torch path). Parity with the torch detector is tested (``tests/test_export.py``): maps within 1e-4
of the map's range and the same verdicts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vlm_ad import _shapes
from vlm_ad.artifacts import read_meta
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.types import AnomalyMap, ExemplarHit, Sample

__all__ = ["RUNTIMES", "RUNTIME_SETTINGS", "RuntimeDetector", "load_runtime_detector", "parse_runtime_settings",
           "runtime_settings"]

RUNTIMES = ("torch", "onnx", "openvino")
EXPORT_KIND, EXPORT_FORMAT = "export", 1  # of export.json, written by vlm_ad.export (which imports these)
_REMEDY = "make one with 'vlm-ad export --model MODEL_DIR --format onnx --out DIR'"


# Settings of each runtime (``load_runtime_detector(settings=...)``) and their defaults, chosen in
# eval/results/speed.md ("runtime settings"): measured on 2 shared cores, maps equal to torch within the parity
# tolerance for every value offered here except precision "bf16" (maps ~1% off: offered, never a default).
RUNTIME_SETTINGS: dict[str, dict[str, tuple[Any, tuple[Any, ...]]]] = {  # name -> (default, allowed values)
    "onnx": {
        "optimization": ("all", ("basic", "extended", "all")),  # graph optimisation level ("all": NCHWc conv layout)
        "spinning": (False, (True, False)),  # busy-waiting intra-op threads: they take CPU from decode/write threads
    },
    "openvino": {
        "hint": ("LATENCY", ("LATENCY", "THROUGHPUT")),  # PERFORMANCE_HINT
        "streams": (None, (None, 1, 2)),  # NUM_STREAMS (None: the hint's)
        "precision": ("f32", ("f32", "bf16")),  # INFERENCE_PRECISION_HINT; bf16 breaks parity (maps ~1% off)
        # a network compiled per input shape, batch size included (the first 8 shapes; others run the dynamic one);
        # "auto": when every image has one input shape (square or fixed geometry), where it measured fastest
        "static": ("auto", ("auto", True, False)),
    },
}


def runtime_settings(runtime: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The defaults of ``runtime`` updated with ``settings``, each checked against the values offered."""
    offered = RUNTIME_SETTINGS.get(runtime, {})
    out = {k: default for k, (default, _) in offered.items()}
    for key, value in (settings or {}).items():
        if key not in offered:
            raise ConfigError(f"unknown {runtime} setting {key!r}; {runtime} takes "
                              f"{', '.join(offered) if offered else 'no settings'}")
        if value not in offered[key][1]:
            raise ConfigError(f"{runtime} setting {key}={value!r} is not offered; choose one of "
                              f"{', '.join(map(repr, offered[key][1]))}")
        out[key] = value
    return out


def parse_runtime_settings(runtime: str, pairs: Sequence[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings (the CLI's ``--runtime-setting``) as settings of ``runtime``: each value is matched,
    case-insensitively, against the values :data:`RUNTIME_SETTINGS` offers (``spinning=true``, ``streams=none``).

    Raises:
        ConfigError: a pair without ``=``, an unknown key or a value not offered (naming what is).
    """
    offered = RUNTIME_SETTINGS.get(runtime, {})
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ConfigError(f"--runtime-setting takes KEY=VALUE, got {pair!r}")
        if key not in offered:
            raise ConfigError(f"unknown {runtime} setting {key!r}; {runtime} takes "
                              + (", ".join(f"{k} ({'|'.join(str(v).lower() for v in vals)})"
                                           for k, (_, vals) in offered.items()) if offered else "no settings"))
        values = [v for v in offered[key][1] if str(v).lower() == text.lower()]
        if not values:
            raise ConfigError(f"{runtime} setting {key}={text!r} is not offered; choose one of "
                              f"{'|'.join(str(v).lower() for v in offered[key][1])}")
        out[key] = values[0]
    return out


def load_runtime_detector(path: str | Path, runtime: str = "onnx", *, threads: int | None = None,
                          settings: dict[str, Any] | None = None) -> Any:
    """A fitted detector that runs on ``runtime``: ``"onnx"`` or ``"openvino"`` (an export folder, no torch) or
    ``"torch"`` (a model folder or an export folder, loaded with :func:`vlm_ad.detectors.load_detector`).

    Args:
        path: the export folder (``vlm-ad export --out``), or a model folder with ``runtime="torch"``.
        runtime: one of :data:`RUNTIMES`.
        threads: intra-op threads of the runtime (None: its default, every core).
        settings: runtime knobs (:data:`RUNTIME_SETTINGS`: names, defaults and the values offered).

    Raises:
        ConfigError: unknown runtime or setting, or a folder that is not an export (with the command that makes one).
        MissingDependencyError: the runtime is not installed (``pip install 'vlm-ad[export]'``).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    chosen = runtime_settings(runtime, settings)
    if runtime == "torch":
        from vlm_ad.detectors import load_detector

        return load_detector(path)
    path = Path(path)
    if not (path / "export.json").is_file() and (path / "detector.json").is_file():
        raise ConfigError(f"{path} is a model folder, not an export: --runtime {runtime} runs an export; {_REMEDY} "
                          f"(with --model {path}), or use --runtime torch")
    meta = read_meta(path / "export.json", kind=EXPORT_KIND, version=EXPORT_FORMAT, remedy=_REMEDY,
                     what="vlm-ad export folder")
    net = (_OnnxNet if runtime == "onnx" else _OpenVinoNet)(path, meta, threads, chosen)
    return RuntimeDetector(meta, net, _Bank.load(path), runtime=runtime)


# ----------------------------------------------------------------------------------------------------------- nets
class _OnnxNet:
    def __init__(self, path: Path, meta: dict[str, Any], threads: int | None, settings: dict[str, Any]) -> None:
        from vlm_ad._deps import require

        ort = require("onnxruntime", "--runtime onnx")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                         "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                         "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[settings["optimization"]]
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings["spinning"] else "0")
        self.session = ort.InferenceSession(str(path / meta["files"]["onnx"]), opts,
                                            providers=["CPUExecutionProvider"])
        self.input = meta["input"]["name"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]  # (B, h, w, C)


class _OpenVinoNet:
    MAX_STATIC = 8  # input shapes kept compiled with static=True

    def __init__(self, path: Path, meta: dict[str, Any], threads: int | None, settings: dict[str, Any]) -> None:
        from vlm_ad._deps import require

        ov = require("openvino", "--runtime openvino")
        one_shape = meta["input"]["shape"] is not None or meta["input"]["geometry"] == "square"
        self.ov, self.core = ov, ov.Core()
        self.static = one_shape if settings["static"] == "auto" else bool(settings["static"])
        self.model = path / (meta["files"].get("openvino") or meta["files"]["onnx"])  # OpenVINO reads ONNX too
        # fp32 unless asked: on CPUs with bf16 units OpenVINO otherwise computes in bf16 (maps 1% off the torch path)
        self.config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": settings["precision"],
                                       "PERFORMANCE_HINT": settings["hint"]}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        if settings["streams"]:
            self.config["NUM_STREAMS"] = settings["streams"]
        # THROUGHPUT runs several streams at once: a batch is split into parts (one per stream; 2 unless streams is
        # set) that run side by side, each on its share of the threads
        self.parallel, self.parts = settings["hint"] == "THROUGHPUT", int(settings["streams"] or 2)
        self.requests: dict[tuple[int, ...] | None, Any] = {}  # input shape (None: dynamic) -> request or queue

    def _compiled(self, shape: tuple[int, ...] | None) -> Any:
        if shape is None:
            return self.core.compile_model(str(self.model), "CPU", self.config)
        model = self.core.read_model(str(self.model))
        model.reshape({0: list(shape)})
        return self.core.compile_model(model, "CPU", self.config)

    def _key(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """``shape`` when it has (or may get) a static network, else None: the dynamic one (and, once
        :attr:`MAX_STATIC` shapes are compiled, any other shape)."""
        if self.static and (shape in self.requests or len(self.requests.keys() - {None}) < self.MAX_STATIC):
            return shape
        return None

    def _request(self, key: tuple[int, ...] | None) -> Any:
        """The infer request (THROUGHPUT: the async queue) of the network compiled for ``key``."""
        if key not in self.requests:
            compiled = self._compiled(key)
            self.requests[key] = (self.ov.AsyncInferQueue(compiled, compiled.get_property(
                "OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if self.parallel else compiled.create_infer_request())
        return self.requests[key]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.parallel:
            request = self._request(self._key(x.shape))
            return np.array(request.infer({0: x})[0])  # copied: the request reuses its output buffer
        parts = np.array_split(x, min(len(x), self.parts))
        keys = [self._key(p.shape) for p in parts]
        if len(set(keys)) > 1:  # an odd batch on static networks: each part on its own network, in turn
            return np.concatenate([self._run(self._request(k), [p]) for k, p in zip(keys, parts)])
        return self._run(self._request(keys[0]), parts)

    @staticmethod
    def _run(queue: Any, parts: list[np.ndarray]) -> np.ndarray:
        """The parts run side by side on ``queue``'s requests; outputs in order."""
        out: list[Any] = [None] * len(parts)

        def done(request: Any, i: int) -> None:
            out[i] = np.array(request.get_output_tensor(0).data)  # copied before the request is reused

        queue.set_callback(done)
        for i, part in enumerate(parts):
            queue.start_async({0: part}, i)
        queue.wait_all()
        return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------- bank
class _Bank:
    """The exported memory bank (``store.safetensors``/``store.json``) in a faiss index, as numpy."""

    def __init__(self, bank: np.ndarray, tags: np.ndarray, image_ids: list[str], index: Any) -> None:
        self.bank, self.tags, self.image_ids, self.index = bank, tags, image_ids, index

    @classmethod
    def load(cls, path: Path) -> _Bank:
        from vlm_ad._index import faiss_index, read_bank

        meta, bank, tags = read_bank(path, remedy=f"export the model again ({_REMEDY})")
        index = faiss_index(bank, meta["index"], ef_search=meta.get("ef_search", 32), what="--runtime onnx|openvino")
        return cls(np.ascontiguousarray(bank, np.float32), tags, meta["image_ids"], index)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest bank row of (M, C) queries: (M,) L2 distances and (M,) rows."""
        dist, rows = self.index.search(np.ascontiguousarray(queries, np.float32), 1)
        return np.sqrt(np.maximum(dist[:, 0], 0)), rows[:, 0]

    def hit(self, row: int, distance: float) -> ExemplarHit:
        img, r, c = (int(v) for v in self.tags[row])
        return ExemplarHit(self.image_ids[img], r, c, float(distance))


# ------------------------------------------------------------------------------------------------------------ maps
def input_shape(meta: dict[str, Any], height: int, width: int) -> tuple[int, int]:
    """The (H, W) backbone input of an image under the export's geometry (:func:`vlm_ad._shapes.input_shape`)."""
    g = meta["input"]
    return _shapes.input_shape(g["geometry"], int(g["size"]), int(g["multiple"]), height, width, shape=g["shape"],
                               min_side=g.get("min_side"),  # exports before these keys: none
                               max_downscale=g.get("max_downscale"))


def _resize(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float32 (h, w) array, half-pixel centres, no antialias (torch's ``F.interpolate``)."""
    import cv2

    return a if a.shape == tuple(hw) else cv2.resize(a, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_LINEAR)


def smooth(grid: np.ndarray, sigma: float) -> np.ndarray:
    """:func:`vlm_ad.detectors.base.smooth_grid` of one (h, w) grid (untiled view), torch-free: the work map."""
    import cv2

    size = _shapes.work_shape(grid.shape)
    g = _resize(grid.astype(np.float32), size)
    s = sigma * max(size) / 256
    if s <= 0:
        return g
    radius = int(4 * s + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-(x**2) / np.float32(2 * s**2))
    k = (k / k.sum()).astype(np.float32)
    return cv2.sepFilter2D(g, -1, k, k, borderType=cv2.BORDER_REFLECT_101)  # torch's "reflect" padding


# ------------------------------------------------------------------------------------------------------- detector
class RuntimeDetector:
    """PatchCore from an export folder: the same ``predict``/``grid_shape``/``set_threshold`` as a torch detector.

    ``timings_`` accumulates seconds per step: ``resize``, ``backbone``, ``search``, ``map``.
    """

    name = "patchcore"

    def __init__(self, meta: dict[str, Any], net: Callable[[np.ndarray], np.ndarray], bank: _Bank, *,
                 runtime: str) -> None:
        self.meta, self.net, self.bank, self.runtime = meta, net, bank, runtime
        self.backbone = meta["backbone"]
        self.threshold_: float | None = meta.get("threshold")
        self.hyper = {"sigma": float(meta["sigma"]), "n_hits": int(meta["n_hits"])}
        mean, std = np.array(meta["input"]["mean"], np.float32), np.array(meta["input"]["std"], np.float32)
        self._mean, self._std = mean[:, None, None], std[:, None, None]
        self._grids: dict[tuple[int, int], tuple[int, int]] = {}
        self.timings_ = {"resize": 0.0, "backbone": 0.0, "search": 0.0, "map": 0.0}

    def __repr__(self) -> str:
        return f"RuntimeDetector({self.name}, {self.backbone}, runtime={self.runtime})"

    def summary(self) -> str:
        """One line saying how this export makes its maps (printed by ``vlm-ad detect``, as a torch detector's)."""
        g = self.meta["input"]
        geometry = _shapes.describe_input(g["geometry"], g["size"], min_side=g.get("min_side"),
                                          max_downscale=g.get("max_downscale"))
        bf16 = getattr(self.net, "config", {}).get("INFERENCE_PRECISION_HINT") == "bf16"
        return (f"{self.name} on {self.backbone} (exported, {self.runtime}), input {geometry}"
                + _shapes.describe_pool(self.meta["pool"])
                + (", network in bf16 (opt-in: maps near the torch path's, not equal to it)" if bf16 else ""))

    def set_threshold(self, value: float | None) -> RuntimeDetector:
        self.threshold_ = None if value is None else float(value)
        return self

    def input_shape(self, image: np.ndarray) -> tuple[int, int]:
        return input_shape(self.meta, *np.asarray(image).shape[:2])

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Resize and normalise one uint8 RGB image to its (3, H, W) float32 network input (thread-safe, so a
        batch engine can run it in a thread pool while the network runs)."""
        from PIL import Image

        img = np.asarray(image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DataError(f"expected a uint8 RGB image of shape (H, W, 3), got {img.dtype} {img.shape}; load "
                            "files with vlm_ad.data.load_image")
        h, w = input_shape(self.meta, *img.shape[:2])
        f = img.astype(np.float32) / np.float32(255.0)
        if (h, w) != img.shape[:2]:  # Pillow's float bilinear resize is torch's antialiased one
            f = np.stack([np.asarray(Image.fromarray(f[..., c]).resize((w, h), Image.BILINEAR)) for c in range(3)],
                         axis=-1)
        x = np.clip(f, 0, 1).transpose(2, 0, 1)  # (3, H, W)
        return np.ascontiguousarray((x - self._mean) / self._std, dtype=np.float32)

    def embed(self, inputs: Sequence[np.ndarray], *, batch_size: int = 8) -> np.ndarray:
        """Patch grids (B, h, w, C) of prepared inputs of one shape."""
        t0 = time.perf_counter()
        out = [self.net(np.stack(inputs[i : i + batch_size])) for i in range(0, len(inputs), batch_size)]
        self.timings_["backbone"] += time.perf_counter() - t0
        return np.concatenate(out)

    def grid_shape(self, image_shape: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the patch grid of an image of ``image_shape`` (H, W): one forward pass per input shape."""
        key = input_shape(self.meta, *image_shape[:2])
        if key not in self._grids:
            grid = self.net(np.zeros((1, 3, *key), np.float32))
            self._grids[key] = (int(grid.shape[1]), int(grid.shape[2]))
        return self._grids[key]

    def point_spread(self, image_shape: tuple[int, int]) -> np.ndarray:
        """The map of one anomalous patch at an image shape (H, W), as the torch detector's ``point_spread``."""
        shape = (int(image_shape[0]), int(image_shape[1]))
        cache = self.__dict__.setdefault("_spreads", {})
        if shape not in cache:
            reach = int(np.max(self.meta["pool"]))  # one window, or one per layer: the widest reaches furthest
            work = smooth(_shapes.point_grid(self.grid_shape(shape), reach), self.hyper["sigma"])
            cache[shape] = _resize(work, shape).astype(np.float32)
        return cache[shape]

    def predict(self, images: Sequence[np.ndarray | Sample], *, inputs: Sequence[np.ndarray] | None = None,
                progress: Callable[[int], None] | None = None) -> list[AnomalyMap]:
        """One :class:`AnomalyMap` per image (``inputs``: their :meth:`prepare` outputs, when already made); images
        of one input shape share each network call and one search."""
        if not len(images):
            raise DataError("predict() got no images")
        arrays = [im.image if isinstance(im, Sample) else np.asarray(im) for im in images]
        ids = [im.image_id if isinstance(im, Sample) else str(i) for i, im in enumerate(images)]
        if inputs is None:
            t0 = time.perf_counter()
            inputs = [self.prepare(a) for a in arrays]
            self.timings_["resize"] += time.perf_counter() - t0
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(x.shape, []).append(i)
        out: list[AnomalyMap | None] = [None] * len(arrays)
        for idx in groups.values():
            for i, amap in zip(idx, self._score([inputs[i] for i in idx], [arrays[i].shape[:2] for i in idx],
                                                [ids[i] for i in idx])):
                out[i] = amap
            if progress:
                progress(len(idx))
        return out

    def _score(self, inputs: list[np.ndarray], sizes: list[tuple[int, int]], ids: list[str]) -> list[AnomalyMap]:
        emb = self.embed(inputs)  # (B, h, w, C)
        b, gh, gw, c = emb.shape
        t0 = time.perf_counter()
        dist, rows = self.bank.search(emb.reshape(-1, c))  # one search for the whole group
        grids, rows = dist.reshape(b, gh, gw).astype(np.float32), rows.reshape(b, -1)
        factors = self.meta.get("ring_factors")  # PatchCore's border rings (None: off, or an older export)
        if factors:
            grids = grids * np.asarray(factors, np.float32)[_shapes.ring_index((gh, gw), int(self.meta["rings"]))]
        t1 = time.perf_counter()
        out = []
        for i in range(b):
            flat = grids[i].reshape(-1)
            top = np.argsort(-flat, kind="stable")[: min(self.hyper["n_hits"], flat.size)]
            hits = [self.bank.hit(int(rows[i, j]), float(flat[j])) for j in top]
            work = smooth(grids[i], self.hyper["sigma"])
            out.append(AnomalyMap(ids[i], float(work.max()), _resize(work, sizes[i]).astype(np.float32), hits=hits,
                                  threshold=self.threshold_))
        self.timings_["search"] += t1 - t0
        self.timings_["map"] += time.perf_counter() - t1
        return out
