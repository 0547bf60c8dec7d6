"""``vlm-ad export``: a fitted model as a folder that ONNX Runtime or OpenVINO runs without PyTorch.

An export folder holds:

* ``embedder.onnx`` - the patch embedder as one network: backbone up to its deepest layer, then PatchCore's local
  aggregation (average pooling, resize to the finest grid, concatenation, optional L2 norm). Input ``pixels``
  (B, 3, H, W) float32, normalised; output ``patches`` (B, h, w, C). Batch, height and width are dynamic.
* ``embedder.xml`` + ``embedder.bin`` - the same network as OpenVINO IR (``--format openvino`` only).
* the model itself (``detector.json``, ``detector.safetensors``, ``store.json``, ``store.safetensors``: the memory
  bank, its tags and the exemplar ids), so ``--runtime torch`` runs the very same folder.
* ``export.json`` (kind ``export``): what the runtime needs besides the network - input geometry, mean/std, map
  smoothing, threshold, hits per image - and the parity measured at export time (max |onnx - torch| on one input).

Which detectors export: ``patchcore`` (the default detector), whose map head is a nearest-neighbour search over the
memory bank, not a network. Others are refused with a clear error; run them with ``--runtime torch``. Tiled models
(``tile=...``) are refused too (their stitching is not in the graph).

The runtime side is :func:`vlm_ad.runtime.load_runtime_detector`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlm_ad._cache import atomic_write_bytes
from vlm_ad.artifacts import fingerprint, write_meta
from vlm_ad.errors import ConfigError
from vlm_ad.runtime import EXPORT_FORMAT, EXPORT_KIND  # of export.json (runtime reads it without torch)

__all__ = ["EXPORTABLE", "EXPORT_FORMAT", "FORMATS", "export_model"]

FORMATS = ("onnx", "openvino")
EXPORTABLE = ("patchcore",)
ONNX_FILE, OPENVINO_FILE = "embedder.onnx", "embedder.xml"
INPUT, OUTPUT = "pixels", "patches"
OPSET = 17


class EmbedNet(nn.Module):
    """Backbone + aggregation of a :class:`~vlm_ad.detectors.base.PatchEmbedder`: (B, 3, H, W) -> (B, h, w, C)."""

    def __init__(self, embedder: Any) -> None:
        super().__init__()
        self.embedder, self.net = embedder, embedder.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedder.aggregate(self.net(x))  # (B, h, w, C)


def export_model(model_dir: str | Path, out: str | Path, *, fmt: str = "onnx") -> Path:
    """Export a model folder written by ``vlm-ad fit`` into ``out`` (see the module docstring); returns ``out``.

    Raises:
        ConfigError: unknown format, a detector or setting that does not export, or an export whose network does
            not reproduce the torch embedding (max abs difference over 1e-3).
    """
    from vlm_ad.detectors import load_detector

    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    det = load_detector(model_dir)
    if det.name not in EXPORTABLE:
        raise ConfigError(f"{det.name} models cannot be exported: only {', '.join(EXPORTABLE)} runs from an export "
                          f"(its map head is a search over the saved memory bank). Run {det.name} with --runtime "
                          "torch and the model folder")
    emb = det.embedder
    if emb.geometry.tile:
        raise ConfigError(f"{model_dir} embeds large images as {emb.geometry.tile}-px tiles, which the exported "
                          "network does not stitch; run it with --runtime torch, or refit without tile=")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    det.save(out)  # the model itself: --runtime torch runs the same folder
    net = EmbedNet(emb).eval()
    shape = emb.input_shape(np.zeros((600, 800, 3), np.uint8))  # a typical non-square input; the axes stay dynamic
    parity = _export_onnx(net, out / ONNX_FILE, shape)
    if fmt == "openvino":
        _to_openvino(out / ONNX_FILE, out / OPENVINO_FILE)
    g = emb.geometry
    meta = {
        "detector": det.name, "backbone": emb.backbone_name, "format": fmt, "source_model": str(model_dir),
        "source_sha256": fingerprint(model_dir), "files": {"onnx": ONNX_FILE,
                                                           "openvino": OPENVINO_FILE if fmt == "openvino" else None},
        "input": {"name": INPUT, "mean": list(emb.net.mean), "std": list(emb.net.std), "geometry": g.mode,
                  "size": g.size, "multiple": g.multiple, "shape": list(g.shape) if g.shape else None,
                  "min_side": g.min_side, "max_downscale": g.max_downscale},
        "output": OUTPUT, "layers": list(emb.layers), "pool": emb.pool, "pool_pad": emb.pool_pad,
        "normalize": emb.normalize,
        "sigma": float(det.hyper.get("sigma", 4.0)), "n_hits": int(det.hyper["n_hits"]), "threshold": det.threshold_,
        "rings": int(det.hyper.get("rings", 0)),
        "ring_factors": None if det.ring_factors_ is None else [float(v) for v in det.ring_factors_],
        "parity": parity, "opset": OPSET,
    }
    write_meta(out / "export.json", kind=EXPORT_KIND, version=EXPORT_FORMAT, meta=meta)
    return out


def _export_onnx(net: EmbedNet, path: Path, shape: tuple[int, int]) -> dict[str, Any]:
    """Trace ``net`` to ONNX with dynamic batch/height/width (written atomically), then check onnxruntime against
    torch on a second input shape; returns the measured parity."""
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic (the axes are dynamic anyway)
        torch.onnx.export(net, (x,), buf, input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                          dynamic_axes={INPUT: {0: "batch", 2: "height", 3: "width"},
                                        OUTPUT: {0: "batch", 1: "rows", 2: "cols"}}, dynamo=False)
    atomic_write_bytes(path, buf.getvalue())
    return _check_parity(net, path, (shape[1], shape[0]))  # the transposed shape: dynamic axes really are


def _check_parity(net: EmbedNet, path: Path, shape: tuple[int, int], tol: float = 1e-3) -> dict[str, Any]:
    from vlm_ad._deps import require

    ort = require("onnxruntime", "vlm-ad export's parity check")
    x = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT: x.numpy()})[0]
    diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
    if not diff <= tol:
        raise ConfigError(f"the exported network does not reproduce the torch embedding (max abs difference {diff:.3g}"
                          f" > {tol} on a {shape} input, shapes {got.shape} vs {ref.shape}); please report this model")
    return {"max_abs_diff": diff, "input_shape": list(shape), "scale": float(np.abs(ref).max())}


def _to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """Convert the ONNX file to OpenVINO IR (``.xml`` + ``.bin``), each file moved into place atomically."""
    from vlm_ad._deps import require

    ov = require("openvino", "--format openvino")
    tmp = xml_path.with_name(f".{xml_path.stem}.{os.getpid()}.tmp.xml")
    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(tmp, xml_path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".bin").unlink(missing_ok=True)
