"""Deployment command: ``export`` (a fitted model as ONNX or OpenVINO, run with ``--runtime`` on detect and report)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlm_ad.cli._common import console

RUNTIME_HELP = ("Who runs the backbone: torch (a model folder from 'vlm-ad fit'), or onnx / openvino (a folder from "
                "'vlm-ad export'; no PyTorch on the hot path: resize, network, kNN search and map smoothing run in "
                "Pillow, the runtime, faiss and OpenCV). pip install 'vlm-ad[export]'.")
RUNTIME_SETTING_HELP = ("A runtime knob as KEY=VALUE, repeatable. onnx: optimization=basic|extended|all, "
                        "spinning=true|false (busy-waiting threads: the network alone runs faster, a whole run "
                        "slower, as they take the cores from decoding and writing); openvino: "
                        "hint=latency|throughput, streams=none|1|2, precision=f32|bf16 (bf16: faster on CPUs with "
                        "AMX, maps about 1% off), static=auto|true|false. Measured in eval/results/speed.md.")
BATCH_HELP = ("Images per detector call (1: one at a time). Above 1, a thread pool decodes the next images while the "
              "backbone runs, and images of one input shape share one network call and one kNN search.")


def export(
    model: Path = typer.Option(..., "--model", help="A model folder written by 'vlm-ad fit' (detector patchcore)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (ONNX Runtime) or openvino (OpenVINO IR, plus the ONNX "
                            "file)."),
    out: Path = typer.Option(..., "--out", help="Export folder: embedder.onnx (and .xml/.bin), export.json and the "
                             "model with its memory bank (safetensors + JSON)."),
) -> None:
    """Export a fitted model's feature extractor (backbone + patch aggregation, dynamic batch and input size) with
    its memory bank and threshold, then run it without PyTorch:

    vlm-ad export --model models/tile --format openvino --out exports/tile

    vlm-ad detect IMAGES --model exports/tile --runtime openvino --out results/

    Only patchcore models export (the default detector; its map head is a search over the memory bank); other
    detectors are refused and run with --runtime torch. The export checks ONNX Runtime against torch on one input
    and records the difference in export.json."""
    import json

    from vlm_ad.export import export_model

    path = export_model(model, out, fmt=fmt)
    meta = json.loads((path / "export.json").read_text())
    files = ", ".join(f for f in meta["files"].values() if f)
    console.print(f"exported {meta['detector']} ({meta['backbone']}) as {fmt} to {path}/ ({files}); parity with "
                  f"torch: max |difference| {meta['parity']['max_abs_diff']:.2g} on a "
                  f"{tuple(meta['parity']['input_shape'])} input (features up to {meta['parity']['scale']:.3g}). "
                  f"Run it: vlm-ad detect IMAGES --model {path} --runtime {fmt} --out DIR")


def register(app: typer.Typer) -> None:
    app.command()(export)
