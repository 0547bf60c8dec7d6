"""The FLOP floor of eval/bench_speed.py and eval/bench_floor.py (issue 18) is measured against the fastest fp32
matmul that any installed library reaches, not torch.mm's alone: on CPUs where torch's BLAS takes a slow path (MKL
on AMD) a torch-only rate gives a floor that the runtimes run under."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
import bench_speed  # noqa: E402


def test_the_floor_rate_is_the_fastest_library_probed(monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    monkeypatch.setattr(bench_speed, "MATMUL_LOG", {})
    rates = bench_speed.matmul_rates(1, n=128, repeats=2)
    assert set(rates) == {"torch", "onnxruntime", "openvino"} and all(r > 0 for r in rates.values())
    # the floor takes the max over one fresh probe: every library probed again and logged twice now
    floor = bench_speed.matmul_gflops(1, n=128, repeats=2)
    assert floor == max(v[-1] for v in bench_speed.MATMUL_LOG.values())
    assert all(len(v) == 2 for v in bench_speed.MATMUL_LOG.values())
    note = bench_speed.matmul_note()
    assert note.startswith("torch ") and "onnxruntime " in note and "openvino " in note


def test_bf16_summaries_come_from_the_knob_rows():
    knobs = {"dinov2-s14": [("openvino defaults", 48.0, 1e-6, 1.0, 300), ("openvino precision=bf16", 30.0, 5e-3, 1.0,
                                                                          300)],
             "efficientnet-lite0": [("openvino defaults", 4.0, 2e-6, 1.0, 300),
                                    ("openvino precision=bf16", 2.0, 1e-1, 1.0, 300)]}
    assert bench_speed.bf16_gain(knobs) == "1.6-2.0x"
    assert bench_speed.bf16_parity(knobs) == "5.0e-03-1.0e-01"
    assert bench_speed.bf16_gain({"x": [("onnx defaults", 1.0, 0, 0, 0)]}) == "not measured"


def test_speed_at_the_issue_shapes_times_real_files_of_a_suite_set(tmp_path):
    """``--data gray-elongated`` (the issue's 500 x 1250 grey shape) times files as a grayscale camera writes them:
    one-channel PNGs, decoded to RGB by the product; the picked test images are half good, half defective."""
    from PIL import Image

    from vlm_ad.data import load_image

    what, shots, files, labels = bench_speed.load_data(8, tmp_path, "gray-elongated")
    assert "500 x 1250 grey" in what and len(shots) == 8
    assert len(files) == 8 and labels.count(0) == labels.count(1) == 4
    assert Image.open(files[0]).mode == "L" and load_image(files[0]).shape == (500, 1250, 3)
    masks = list((tmp_path / "suite" / "gray-elongated" / "ground_truth").rglob("*_mask.png"))
    assert masks and all(np.asarray(Image.open(m)).max() == 255 for m in masks[:3])
