"""Input geometry: aspect-preserving shapes, tiling, per-image grids, aligned maps on non-square images, old models."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from vlm_ad.backbones import Backbone
from vlm_ad.backbones.geometry import Geometry, tile_starts
from vlm_ad.detectors import PatchEmbedder, create_detector, load_detector
from vlm_ad.detectors.base import smooth_grid, work_shape
from vlm_ad.errors import ConfigError, DataError

pytest.importorskip("faiss", reason="faiss-cpu (vlm-ad[retrieval]) is needed for the detectors")


# ---------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("hw, size, multiple, expected", [
    ((500, 1250), 256, 16, (96, 256)),  # elongated crack image: aspect kept, short side a multiple of 16
    ((1250, 500), 256, 16, (256, 96)),  # portrait
    ((600, 800), 448, 14, (336, 448)),  # DINOv2: multiples of 14
    ((256, 256), 256, 16, (256, 256)),
    ((10, 4000), 256, 16, (16, 256)),  # never below one multiple
])
def test_aspect_shapes(hw, size, multiple, expected):
    assert Geometry("aspect", size, multiple).input_shape(*hw) == expected
    assert Geometry("square", size, multiple).input_shape(*hw) == (size, size)
    fixed = (2 * multiple, 4 * multiple)
    assert Geometry("aspect", size, multiple, shape=fixed).input_shape(*hw) == fixed


@pytest.mark.parametrize("hw, size, multiple, expected", [
    ((500, 1250), 256, 16, (160, 400)),  # the pixel count of a 256 square, aspect kept
    ((600, 800), 448, 14, (392, 518)),
    ((300, 300), 224, 16, (224, 224)),
    ((10, 4000), 256, 16, (16, 1024)),  # long side capped at 4 x size
])
def test_equal_area_shapes(hw, size, multiple, expected):
    assert Geometry("area", size, multiple).input_shape(*hw) == expected


@pytest.mark.parametrize("mode, size", [("area", 280), ("aspect", 448)])
def test_min_side_widens_elongated_inputs_only(mode, size):
    g, plain = Geometry(mode, size, 14, min_side=224), Geometry(mode, size, 14)
    assert g.input_shape(320, 800) == (224, 560)  # 1:2.5 crack image: 224 across, not 182
    assert g.input_shape(800, 320) == (560, 224)
    assert g.input_shape(600, 800) == plain.input_shape(600, 800)  # 3:4: the short side is already above 224
    assert g.input_shape(300, 300) == plain.input_shape(300, 300)
    assert g.input_shape(10, 4000) == (14, 4 * size)  # the long side never beyond 4 x size


def test_max_downscale_grows_large_inputs_only():
    g, plain = Geometry("area", 280, 14, min_side=224, max_downscale=4), Geometry("area", 280, 14, min_side=224)
    assert plain.input_shape(1536, 2048) == (238, 322)  # 6.4x smaller
    assert g.input_shape(1536, 2048) == (392, 518)  # at most 4x: 2048 / 4 = 512, to a multiple of 14
    assert g.input_shape(4096, 3072) == (1022, 770)
    assert g.input_shape(8192, 6144) == (1120, 840)  # the long side never beyond 4 x size
    for hw in ((600, 800), (320, 800), (256, 256), (632, 403)):  # images up to 4 x their input: unchanged
        assert g.input_shape(*hw) == plain.input_shape(*hw)
    with pytest.raises(ConfigError, match="max_downscale"):
        Geometry("square", 224, 14, max_downscale=4)
    with pytest.raises(ConfigError, match="max_downscale"):
        Geometry("area", 224, 14, max_downscale=0)


def test_max_downscale_is_saved_and_exported(tmp_path):
    from vlm_ad.runtime import input_shape as export_input_shape

    normal = _elongated(2, seed=0)  # 96 x 240
    det = create_detector("patchcore", image_size=32, geometry="area", max_downscale=2, coreset=1.0).fit(normal)
    assert det.embedder.input_shape(normal[0]) == (48, 128)  # not 16 x 48: at most 2x smaller (120, x 16 multiple)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.embedder.geometry.max_downscale == 2 and "shrunk at most 2x" in again.summary()
    g = det.embedder.geometry
    meta = {"input": {"geometry": g.mode, "size": g.size, "multiple": g.multiple, "shape": None, "min_side": None,
                      "max_downscale": 2}}
    assert export_input_shape(meta, 96, 240) == (48, 128)
    with pytest.raises(ConfigError, match="max_downscale"):
        create_detector("patchcore", max_downscale=2.5)


def test_geometry_validates():
    with pytest.raises(ConfigError, match="geometry must be one of"):
        Geometry("letterbox", 256, 16)
    with pytest.raises(ConfigError, match="multiple of 16"):
        Geometry("aspect", 250, 16)
    with pytest.raises(ConfigError, match="tile must be a positive multiple of 14"):
        Geometry("aspect", 448, 14, tile=100)
    with pytest.raises(ConfigError, match="min_side"):
        Geometry("square", 224, 14, min_side=224)
    with pytest.raises(ConfigError, match="min_side"):
        Geometry("area", 224, 14, min_side=0)


@pytest.mark.parametrize("length, tile, multiple", [(1024, 256, 16), (448, 224, 14), (1000, 256, 8), (96, 256, 16)])
def test_tiles_cover_with_overlap(length, tile, multiple):
    starts = tile_starts(length, min(tile, length), multiple, 0.25)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length and all(s % multiple == 0 for s in starts)
    assert all(b - a <= 0.75 * t for a, b in zip(starts, starts[1:]))  # neighbours overlap by >= 25%


def test_work_grid_keeps_the_aspect_and_old_square_smoothing():
    assert work_shape((28, 28)) == (256, 256)  # the old square work grid
    assert work_shape((12, 32)) == (96, 256)
    assert work_shape((128, 48)) == (1024, 384)  # a tiled large image keeps 8 px per patch
    g = torch.rand(2, 12, 32)
    assert smooth_grid(g).shape == (2, 96, 256)


# ---------------------------------------------------------------------------------------------------- tiling
class _LocalNet(Backbone):
    """A strictly local two-layer conv net (stride 8 and 16): tiled and whole-image features must agree."""

    name, patch_multiple, any_shape = "local", 16, True

    def __init__(self):
        super().__init__(image_size=64, layers=("a", "b"))
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 4, 8, stride=8)
        self.b = nn.Conv2d(4, 5, 2, stride=2)

    def available_layers(self):
        return ("a", "b")

    def forward(self, x):
        a = self.a(x)  # (B, 4, H/8, W/8)
        return {"a": a, "b": self.b(a)}  # (B, 5, H/16, W/16)


def test_tiling_stitches_to_the_whole_image_features():
    img = np.random.default_rng(0).integers(0, 255, (300, 700, 3), dtype=np.uint8)
    whole = PatchEmbedder(_LocalNet(), image_size=320, geometry="aspect", pool=1)
    tiled = PatchEmbedder(_LocalNet(), image_size=320, geometry="aspect", tile=64, pool=1)
    assert whole.input_shape(img) == (144, 320) and tiled.geometry.tiles((144, 320))[0] == (64, 64)
    a, b = whole([img]), tiled([img])
    assert a.shape == b.shape == (1, 18, 40, 9)
    torch.testing.assert_close(a, b)  # local features: stitching from nearest tiles is exact


@pytest.mark.slow
def test_tiling_covers_a_large_image_with_a_small_defect():
    from vlm_ad.testing import texture_crops

    big = np.tile(texture_crops(1, 256, seed=0)[0], (3, 6, 1))  # (768, 1536, 3)
    normal = [big, np.ascontiguousarray(big[:, ::-1])]
    test = big.copy()
    test[400:412, 1000:1030] = (255, 0, 0)  # 0.03% of the image
    det = create_detector("patchcore", image_size=1024, geometry="aspect", tile=256, coreset=1.0).fit(normal)
    assert det.embedder([test]).shape[1:3] == (64, 128)  # stride 8 over a 512 x 1024 input
    amap = det.predict([test])[0].map
    assert amap.shape == big.shape[:2]
    y, x = np.unravel_index(amap.argmax(), amap.shape)
    assert 380 <= y <= 432 and 980 <= x <= 1050, (y, x)


# ---------------------------------------------------------------------------------------- detectors, maps
def _elongated(n, seed, h=96, w=240):
    from vlm_ad.testing import texture_crops

    return [np.ascontiguousarray(c[:h, :w]) for c in texture_crops(n, max(h, w), seed=seed)]


def _plant(img, y0=60, x0=190, side=14):
    out, mask = img.copy(), np.zeros(img.shape[:2], bool)
    out[y0 : y0 + side, x0 : x0 + side] = (255, 0, 0)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return out, mask


@pytest.mark.parametrize("name, geometry", [("patchcore", "aspect"), ("padim", "aspect"), ("patchcore", "square"),
                                            ("padim", "square"), ("mutual", "aspect")])
def test_planted_defect_is_found_where_it_is_on_a_non_square_image(name, geometry, tmp_path):
    normal = _elongated(6, seed=0)
    test, mask = _plant(_elongated(1, seed=5)[0])
    extra = {"n_ref": 3} if name == "mutual" else {}
    det = create_detector(name, backbone="efficientnet-lite0", image_size=256, geometry=geometry, **extra).fit(normal)
    amap = det.predict([test])[0].map
    assert amap.shape == (96, 240)
    y, x = np.unravel_index(amap.argmax(), amap.shape)
    assert mask[max(0, y - 6) : y + 7, max(0, x - 6) : x + 7].any(), f"peak at {(y, x)}, defect at (60..74, 190..204)"
    assert amap[mask].mean() > np.quantile(amap[~mask], 0.95)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.embedder.geometry == det.embedder.geometry
    np.testing.assert_allclose(again.predict([test])[0].map, amap, rtol=1e-4, atol=1e-5)


def test_images_of_several_shapes_and_a_new_size():
    landscape, portrait = _elongated(3, seed=0), [np.ascontiguousarray(a.transpose(1, 0, 2)) for a in _elongated(3, 1)]
    det = create_detector("patchcore", image_size=128, geometry="aspect", coreset=1.0).fit(landscape + portrait)
    assert len(det.store_.image_ids) == 6 and det.threshold_ is not None
    odd = np.ascontiguousarray(_elongated(1, seed=3, h=150, w=170)[0])
    maps = det.predict([portrait[0], odd, landscape[0]])  # three input shapes in one call, order kept
    assert [m.map.shape for m in maps] == [(240, 96), (150, 170), (96, 240)]
    assert [m.image_id for m in maps] == ["0", "1", "2"]
    with pytest.raises(DataError, match="different input shapes"):
        det.embedder([portrait[0], landscape[0]])
    one_grid = create_detector("mahalanobis", image_size=128, geometry="aspect").fit(landscape + portrait[:2])
    assert one_grid.embedder.geometry.shape == (48, 128)  # the most common input shape of its training images
    assert one_grid.predict([portrait[0]])[0].map.shape == (240, 96)


def test_images_of_several_shapes_share_one_search_and_score_as_one_by_one():
    landscape, portrait = _elongated(3, seed=0), [np.ascontiguousarray(a.transpose(1, 0, 2)) for a in _elongated(3, 1)]
    det = create_detector("patchcore", image_size=128, geometry="aspect", coreset=1.0).fit(landscape + portrait)
    new = _elongated(3, seed=4)  # images the bank has not seen (a training image's distances are ~0, all rounding)
    images = [np.ascontiguousarray(new[0].transpose(1, 0, 2)), np.ascontiguousarray(_elongated(1, seed=3, h=150,
              w=170)[0]), new[1], np.ascontiguousarray(new[2].transpose(1, 0, 2))]
    search, calls = det.store_.search, []
    det.store_.search = lambda q, k=1: (calls.append(len(q)), search(q, k))[1]
    together = det.predict(images)
    assert len(calls) == 1  # three input shapes, one search
    alone = [det.predict([img])[0] for img in images]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.map, b.map, rtol=1e-5, atol=1e-5)
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert [(h.image_id, h.row, h.col) for h in a.hits] == [(h.image_id, h.row, h.col) for h in b.hits]


def test_padim_fixes_its_grid_from_training_and_scores_other_shapes():
    det = create_detector("padim", image_size=128, geometry="aspect").fit(_elongated(4, seed=0))
    assert det.embedder.geometry.shape == (48, 128)
    amap = det.predict([np.ascontiguousarray(_elongated(1, seed=1, h=200, w=120)[0])])[0].map
    assert amap.shape == (200, 120)


def test_model_saved_before_geometry_loads_square(tmp_path):
    normal, (test, _) = _elongated(4, seed=0), _plant(_elongated(1, seed=5)[0])
    old = create_detector("patchcore", image_size=96, geometry="square", coreset=1.0).fit(normal)
    old.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    for key in ("geometry", "tile", "input_shape"):  # the keys an older vlm-ad did not write
        del meta["embedder"][key]
    (tmp_path / "m" / "detector.json").write_text(json.dumps(meta))
    again = load_detector(tmp_path / "m")
    assert again.embedder.geometry.mode == "square" and again.embedder.image_size == 96
    np.testing.assert_allclose(again.predict([test])[0].map, old.predict([test])[0].map, rtol=1e-5)


def test_square_only_backbones_refuse_aspect():
    class _Square(_LocalNet):
        any_shape = False

    assert PatchEmbedder(_Square()).geometry.mode == "square"
    with pytest.raises(ConfigError, match="square inputs of its own size only"):
        PatchEmbedder(_Square(), geometry="aspect")


def test_mutual_uses_images_of_other_shapes_as_references():
    landscape = _elongated(2, seed=0)
    portrait = [np.ascontiguousarray(a.transpose(1, 0, 2)) for a in _elongated(2, seed=1)]
    det = create_detector("mutual", backbone="efficientnet-lite0", image_size=128, geometry="aspect", n_ref=3,
                          buffer=0)
    maps = det.predict([landscape[0], portrait[0], landscape[1], portrait[1]])
    assert det.last_mode_ == "other images"  # no image fell back to self-similarity
    assert [m.map.shape for m in maps] == [(96, 240), (240, 96), (96, 240), (240, 96)]
    grids = {f"batch:{j}": (6, 16) if j % 2 == 0 else (16, 6) for j in range(4)}  # stride 8 over 48 x 128
    for m in maps:  # each hit is a patch position inside its reference's own grid
        assert all(h.row < grids[h.image_id][0] and h.col < grids[h.image_id][1] for h in m.hits)


@pytest.mark.parametrize("n_ref", [5, 2])  # every other image a reference / a random subset of them
def test_mutual_compares_each_pair_of_batch_images_once_with_the_same_maps(monkeypatch, n_ref):
    from vlm_ad.detectors.mutual import Mutual

    images = _elongated(3, seed=0) + _elongated(3, seed=1)
    kw = {"backbone": "efficientnet-lite0", "image_size": 128, "geometry": "aspect", "n_ref": n_ref, "buffer": 0}
    calls = []
    cdist = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda *a, **k: calls.append(1) or cdist(*a, **k))
    fast = create_detector("mutual", **kw).predict(images)
    once = len(calls)
    real = Mutual._mutual
    monkeypatch.setattr(Mutual, "_mutual", lambda self, q, refs, h, w, **k: real(self, q, refs, h, w))  # no sharing
    calls.clear()
    slow = create_detector("mutual", **kw).predict(images)
    assert len(calls) == len(images) * min(n_ref, len(images) - 1)  # one matrix per (query, reference)
    assert once < len(calls) if n_ref == 5 else once <= len(calls)
    if n_ref == 5:
        assert once == len(images) * (len(images) - 1) // 2  # each pair once
    for a, b in zip(fast, slow):
        assert np.allclose(a.map, b.map, rtol=1e-5, atol=1e-6 * float(np.abs(b.map).max()))
        assert a.score == pytest.approx(b.score, rel=1e-5)
        assert [(h.image_id, h.row, h.col) for h in a.hits] == [(h.image_id, h.row, h.col) for h in b.hits]


def test_default_input_per_backbone():
    assert create_detector("patchcore")._make_embedder().geometry.mode == "area"  # see generalization.md
    assert create_detector("patchcore")._make_embedder().image_size == 224
    dino = create_detector("patchcore", backbone="dinov2-s14")._make_embedder().geometry  # PatchCore's own default
    assert (dino.mode, dino.size, dino.min_side, dino.max_downscale) == ("area", 364, 224, 3)
    assert dino.input_shape(1536, 2048) == (518, 686)  # a large image is shrunk 3x, not 4.9x
    assert dino.input_shape(600, 800) == Geometry("area", 364, 14, min_side=224).input_shape(600, 800) == (308, 420)
    assert dino.input_shape(320, 800) == (224, 574)  # the short side kept at 224
    mutual = create_detector("mutual")._make_embedder().geometry  # dinov2-s14: mutual's own default
    assert (mutual.mode, mutual.size, mutual.min_side, mutual.max_downscale) == ("area", 224, 224, 3)
    assert mutual.input_shape(256, 256) == (224, 224)  # square images as at square 224
    assert mutual.input_shape(600, 800) == (224, 294)  # 3:4 grows to a short side of 224 (x 14 multiple)
    assert mutual.input_shape(1536, 2048) == (518, 686)  # a large image is shrunk 3x, not 9x
    assert create_detector("mutual", backbone="efficientnet-lite0")._make_embedder().geometry.mode == "area"
    given = create_detector("patchcore", backbone="dinov2-s14", geometry="aspect", image_size=448)._make_embedder()
    assert (given.geometry.mode, given.geometry.size, given.geometry.min_side) == ("aspect", 448, None)
    assert create_detector("patchcore", image_size=320)._make_embedder().geometry.mode == "area"


def test_min_side_is_saved_exported_and_defaults_only_with_the_default_geometry(tmp_path, monkeypatch):
    from vlm_ad.detectors import base
    from vlm_ad.runtime import input_shape as export_input_shape

    monkeypatch.setitem(base.DEFAULT_INPUT, "efficientnet-lite0",
                        {"geometry": "area", "image_size": 128, "min_side": 112})
    assert create_detector("patchcore")._make_embedder().geometry.min_side == 112  # default geometry: its min side
    assert create_detector("patchcore", geometry="area")._make_embedder().geometry.min_side is None  # chosen: none
    normal = _elongated(4, seed=0)  # 96 x 240
    det = create_detector("patchcore", image_size=128, geometry="area", min_side=112, coreset=1.0).fit(normal)
    assert det.embedder.input_shape(normal[0]) == (112, 288)  # not 80 x 208: the short side grows to 112
    assert det.embedder(normal[:1]).shape[1:3] == (14, 36)  # stride 8
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.embedder.geometry == det.embedder.geometry
    assert "input area 128 px, short side at least 112 px" in again.summary()  # what fit and detect print
    np.testing.assert_allclose(again.predict(normal[:1])[0].map, det.predict(normal[:1])[0].map, rtol=1e-5)
    g = det.embedder.geometry  # the torch-free runtime computes the same input from export.json's fields
    meta = {"input": {"geometry": g.mode, "size": g.size, "multiple": g.multiple, "shape": None, "min_side": 112}}
    assert export_input_shape(meta, 96, 240) == (112, 288)
    del meta["input"]["min_side"]  # an export written before min_side
    assert export_input_shape(meta, 96, 240) == Geometry("area", 128, 16).input_shape(96, 240)


def test_saved_model_keeps_its_input_when_the_default_changes(tmp_path, monkeypatch):
    """A model fitted at a detector's default input is scored at that input after the default moves on (dinov2-s14's
    PatchCore default went from area 280 to 364): the saved embedder settings win over the new default."""
    from vlm_ad.detectors.patchcore import PatchCore

    normal = _elongated(3, seed=0)  # 96 x 240
    before = {"geometry": "area", "image_size": 128, "min_side": 112, "max_downscale": 3}
    monkeypatch.setattr(PatchCore, "default_input", {"efficientnet-lite0": before})
    det = create_detector("patchcore", coreset=1.0).fit(normal)
    assert det.embedder.input_shape(normal[0]) == (112, 288)
    det.save(tmp_path / "m")
    monkeypatch.setattr(PatchCore, "default_input", {"efficientnet-lite0": before | {"image_size": 160}})
    assert create_detector("patchcore")._make_embedder().geometry.size == 160  # the new default for new models
    again = load_detector(tmp_path / "m")
    assert again.embedder.geometry == det.embedder.geometry  # the saved model's own input
    assert again.embedder.input_shape(normal[0]) == (112, 288)
    np.testing.assert_allclose(again.predict(normal[:1])[0].map, det.predict(normal[:1])[0].map, rtol=1e-5)
