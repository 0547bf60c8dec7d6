"""The FLOP floor of eval/bench_speed.py and eval/bench_floor.py (issue 18) is measured against the fastest fp32
matmul that any installed library reaches, not torch.mm's alone: on CPUs where torch's BLAS takes a slow path (MKL
on AMD) a torch-only rate gives a floor that the runtimes run under."""

import sys
from pathlib import Path

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
