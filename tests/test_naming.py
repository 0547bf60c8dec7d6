"""Defect naming from a labelled-defect library: descriptors, add / name, save / load, evaluation, CLI."""

import json

import numpy as np
import pytest

from vlm_ad.data import make_defect
from vlm_ad.errors import ConfigError, DataError, MaskError
from vlm_ad.evaluation.naming import collect_regions, evaluate_naming
from vlm_ad.naming import DESCRIPTORS, DefectLibrary, DefectName, region_descriptors
from vlm_ad.testing import texture_crops
from vlm_ad.types import Sample


def _disc(h=64, r=6, cy=30, cx=30):
    yy, xx = np.mgrid[:h, :h]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _line(h=64):
    m = np.zeros((h, h), bool)
    m[30:32, 8:56] = True
    return m


def _paint(mask, value, seed=0):
    noise = np.random.default_rng(seed).integers(0, 8, (64, 64, 3), dtype=np.uint8)
    img = np.full((64, 64, 3), 128, np.uint8) + noise
    img[mask] = value
    return img


def test_descriptors_measure_shape_and_contrast():
    d = region_descriptors(_paint(_disc(), 40), _disc())
    assert set(d) == set(DESCRIPTORS)
    assert d["elongation"] < 1.3 and d["compactness"] > 0.6 and d["components"] == 1
    assert -0.45 < d["intensity_contrast"] < -0.3  # about (40 - 132) / 255 darker
    line = region_descriptors(_paint(_line(), 220), _line())
    assert line["elongation"] > 8 and line["intensity_contrast"] > 0.2
    with pytest.raises(MaskError, match="empty"):
        region_descriptors(_paint(_disc(), 40), np.zeros((64, 64), bool))
    with pytest.raises(MaskError, match="does not match"):
        region_descriptors(_paint(_disc(), 40), np.ones((8, 8), bool))


def _library():
    lib = DefectLibrary(features="descriptors", k=3)
    for i in range(3):
        disc = _disc(r=5 + i, cy=20 + 5 * i)
        lib.add(_paint(disc, 30, i), disc, "hole", f"test/hole/{i:03d}")
        m = np.roll(_line(), 6 * i, axis=0)
        lib.add(_paint(m, 230, i), m, "scratch", f"test/scratch/{i:03d}")
    return lib


def test_library_names_regions_and_explains():
    lib = _library()
    assert lib.summary() == {"hole": 3, "scratch": 3}
    res = lib.name(_paint(_disc(r=7, cy=40), 35, 9), _disc(r=7, cy=40))
    assert isinstance(res, DefectName) and res.name == "hole" and 0.5 < res.confidence <= 1
    assert res.example_id.startswith("test/hole/") and res.distance >= 0
    assert res.explanation.startswith("named hole: round") and "darker than its surroundings" in res.explanation
    assert f"like {res.example_id}" in res.explanation and set(res.descriptors) == set(DESCRIPTORS)
    m = np.roll(_line(), 3, axis=0)
    assert lib.name(_paint(m, 235, 7), m).name == "scratch"


def test_library_save_load_round_trip(tmp_path):
    lib = _library()
    lib.save(tmp_path / "lib")
    again = DefectLibrary.load(tmp_path / "lib")
    assert again.labels == lib.labels and again.example_ids == lib.example_ids and again.k == lib.k
    np.testing.assert_allclose(again.desc, lib.desc)
    np.testing.assert_allclose(again.desc_lens, lib.desc_lens)
    assert again.lens == lib.lens and not np.allclose(lib.desc_lens, lib.desc)
    q = _paint(_disc(r=7), 35, 9)
    assert again.name(q, _disc(r=7)) == lib.name(q, _disc(r=7))
    meta = json.loads((tmp_path / "lib" / "library.json").read_text())
    assert meta["features"] == "descriptors" and len(meta["labels"]) == 6
    with pytest.raises(DataError, match="is not a defect library"):
        DefectLibrary.load(tmp_path)


def test_a_library_saved_before_the_map_lens_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    _library().save(tmp_path / "lib")
    tensors = load_file(tmp_path / "lib" / "library.safetensors")
    save_file({"descriptors": tensors["descriptors"]}, tmp_path / "lib" / "library.safetensors")
    meta = json.loads((tmp_path / "lib" / "library.json").read_text())
    del meta["lens"]
    (tmp_path / "lib" / "library.json").write_text(json.dumps(meta))
    old = DefectLibrary.load(tmp_path / "lib")
    np.testing.assert_allclose(old.desc_lens, old.desc)  # its examples as they are
    assert old.lens == 0.0
    m = np.roll(_line(), 3, axis=0)
    assert old.name(_paint(m, 235, 7), m, from_map=True).name == "scratch"


def test_map_lens_names_a_region_cut_from_a_map_like_its_examples_seen_that_way():
    """A detector's map spreads a thin scratch into a blob; its core, compared with the examples seen through the
    map lens (blurred, cut at the core level), is named scratch and lies closer to them than to the raw masks."""
    from scipy import ndimage

    from vlm_ad.evidence.build import region_core
    from vlm_ad.naming import map_lens

    line = _line()
    assert (map_lens(line, 0.0) == line).all()
    seen = map_lens(line, 0.025)
    assert seen[30, 30] and not (seen & ~ndimage.binary_dilation(line, iterations=3)).any()
    lib = _library()
    m = np.roll(_line(), 3, axis=0)
    amap = ndimage.gaussian_filter(m.astype(np.float32), 3.0)  # how a map shows the scratch
    core = region_core(amap, amap > 0.05 * amap.max(), 0.7, median=0.0)
    img = _paint(m, 235, 7)
    through = lib.name(img, core, from_map=True)
    assert through.name == "scratch" and through.distance < lib.name(img, core).distance
    with pytest.raises(ConfigError, match="lens in"):
        DefectLibrary(lens=0.7)


def test_patches_mode_names_a_blurred_map_core_by_its_patches_and_round_trips(tmp_path):
    """'patches': the DINOv2 patches a region covers vote for their nearest labelled patches. A map core is a blob
    wider than the defect (here a thin dark crack seen as a dilated band): named by what its patches show, not by
    its outline, and the same after save / load. Leave-one-out excludes an example's own patches."""
    from scipy import ndimage

    crops = texture_crops(6, 112, seed=0)
    lib = DefectLibrary(features="patches", k=3)
    for i in range(3):
        img, line = crops[i].copy(), np.zeros((112, 112), bool)
        line[40 + 10 * i : 43 + 10 * i, 10:100] = True
        img[line] = 20
        lib.add(img, line, "crack", f"test/crack/{i:03d}")
        img, disc = crops[3 + i].copy(), np.zeros((112, 112), bool)
        yy, xx = np.mgrid[:112, :112]
        disc = (yy - 56) ** 2 + (xx - 30 - 20 * i) ** 2 <= 14 ** 2
        img[disc] = (220, 40, 40)
        lib.add(img, disc, "stain", f"test/stain/{i:03d}")
    assert lib.patches.shape[1] == 768 and set(lib.patch_owner.tolist()) == set(range(6))
    q = texture_crops(1, 112, seed=5)[0].copy()
    crack = np.zeros((112, 112), bool)
    crack[70:73, 15:95] = True
    q[crack] = 20
    blob = ndimage.binary_dilation(crack, iterations=8)  # a core cut from a blurred map: far wider than the crack
    res = lib.name(q, blob, from_map=True)
    assert res.name == "crack" and res.example_id.startswith("test/crack/") and res.votes["crack"] > 0.5
    assert f"like {res.example_id}" in res.explanation
    lib.save(tmp_path / "lib")
    again = DefectLibrary.load(tmp_path / "lib")
    np.testing.assert_allclose(again.patches, lib.patches)
    assert again.name(q, blob, from_map=True) == res
    d, _ = lib.describe(q, blob)
    patches, cover = lib._region_patches(q, blob)
    alone = lib.name_patches(d, patches, cover, exclude=[lab != "stain" for lab in lib.labels])
    assert alone.name == "stain"  # only the stain examples were left to vote
    with pytest.raises(ConfigError, match="name_patches"):
        lib.name_described(d, None)


def test_patches_cells_mode_adds_the_votes_of_the_maps_strongest_cells_and_round_trips(tmp_path):
    """'patches+cells' (the default): the DINOv2 patch votes plus the votes of the region's strongest map cells in
    efficientnet-lite0 features. Where the map is strongest decides what the cells vote for; saved and loaded, the
    library names the same; the evidence gives the namer the map over the region."""
    from scipy import ndimage

    from vlm_ad.naming import TOP_CELLS

    crops = texture_crops(7, 112, seed=0)
    lib = DefectLibrary()
    assert lib.features == "patches+cells"
    yy, xx = np.mgrid[:112, :112]
    for i in range(3):
        img, line = crops[i].copy(), np.zeros((112, 112), bool)
        line[40 + 10 * i : 43 + 10 * i, 10:100] = True
        img[line] = 20
        lib.add(img, line, "crack", f"test/crack/{i:03d}")
        img = crops[3 + i].copy()
        disc = (yy - 56) ** 2 + (xx - 30 - 20 * i) ** 2 <= 14 ** 2
        img[disc] = (220, 40, 40)
        lib.add(img, disc, "stain", f"test/stain/{i:03d}")
    assert lib.cells.shape[0] == len(lib.cell_owner) > 0 and set(lib.cell_owner.tolist()) == set(range(6))
    q = crops[6].copy()  # a crack at the top and a stain at the bottom, in one wide region
    crack = np.zeros((112, 112), bool)
    crack[20:23, 15:95] = True
    stain = (yy - 85) ** 2 + (xx - 56) ** 2 <= 12 ** 2
    q[crack], q[stain] = 20, (220, 40, 40)
    region = ndimage.binary_dilation(crack | stain, iterations=6)
    for where, label in ((stain, "stain"), (crack, "crack")):
        heat = np.where(region, ndimage.gaussian_filter(where.astype(float), 3), 0.0)
        feats, weights = lib._query_cells(q, region, heat)
        assert len(feats) == TOP_CELLS and np.all(weights > 0)
        votes, _ = lib._votes(feats, weights, lib.cells, lib.cell_owner, None)
        assert max(votes, key=votes.get) == label  # the cells where the map is strongest vote for what is there
    heat = np.where(region, ndimage.gaussian_filter(crack.astype(float), 3), 0.0)
    res = lib.name(q, ndimage.binary_dilation(crack, iterations=6), from_map=True, heat=heat)
    assert res.name == "crack" and res.example_id.startswith("test/crack/")
    assert sum(res.votes.values()) == pytest.approx(1.0)
    lib.save(tmp_path / "lib")
    again = DefectLibrary.load(tmp_path / "lib")
    assert again.features == "patches+cells" and again.cell_backbone == "efficientnet-lite0"
    np.testing.assert_allclose(again.cells, lib.cells)
    assert again.name(q, ndimage.binary_dilation(crack, iterations=6), from_map=True, heat=heat) == res

    from vlm_ad.evidence import build_evidence
    from vlm_ad.types import AnomalyMap

    seen = {}

    class Spy:  # records what the evidence gives a namer that reads the map
        names_map_regions = names_with_heat = True

        def name(self, image, mask, from_map=False, heat=None):
            seen["heat"], seen["mask"] = heat, mask
            return lib.name(image, mask, from_map=from_map, heat=heat)

    amap_arr = (ndimage.gaussian_filter(crack.astype(np.float32), 4) * 10).astype(np.float32)
    ev = build_evidence(AnomalyMap("q", float(amap_arr.max()), amap_arr, threshold=0.5 * float(amap_arr.max())),
                        q, namer=Spy())
    assert ev.regions and ev.regions[0].defect is not None
    inside = amap_arr > 0.5 * amap_arr.max()
    assert seen["heat"].shape == q.shape[:2] and (seen["heat"][~inside] == 0).all() and seen["heat"].max() > 0


def test_library_errors():
    with pytest.raises(DataError, match="library is empty"):
        DefectLibrary(features="descriptors").name(_paint(_disc(), 40), _disc())
    with pytest.raises(ConfigError, match="features must be one of"):
        DefectLibrary(features="clip")
    with pytest.raises(ConfigError, match="non-empty label"):
        DefectLibrary(features="descriptors").add(_paint(_disc(), 40), _disc(), " ", "x")


def test_evaluate_naming_on_generated_defects():
    rng = np.random.default_rng(0)
    samples = []
    for n, t in enumerate(("scratch", "hole", "stain")):
        for j, img in enumerate(texture_crops(5, 96, seed=10 + n)):
            out, mask, _ = make_defect(img, t, rng)
            samples.append(Sample(out, f"{t}/{j}", 1, t, mask))
    regions = collect_regions(samples)
    res = evaluate_naming(regions, shots_per_type=2, repeats=1)
    assert res["types"] == ["hole", "scratch", "stain"] and np.sum(res["confusion"]) == 15
    assert res["chance_uniform"] == pytest.approx(1 / 3)
    assert res["type_accuracy"] > res["chance_uniform"]


@pytest.mark.slow
def test_cli_library_add_and_eval_naming(tmp_path):
    from typer.testing import CliRunner

    from tests.conftest import build_mvtec
    from vlm_ad.cli import app

    root = build_mvtec(tmp_path / "cat")
    runner = CliRunner()
    r = runner.invoke(app, ["library", "add", str(tmp_path / "lib"), "--from", str(root)])
    assert r.exit_code == 0, r.output
    lib = DefectLibrary.load(tmp_path / "lib")
    assert lib.summary() == {"hole": 1, "scratch": 2} and lib.features == "patches+cells"
    assert lib.patches.shape[1] == 768 and set(lib.patch_owner.tolist()) == set(lib.cell_owner.tolist()) == {0, 1, 2}
    r = runner.invoke(app, ["library", "show", str(tmp_path / "lib")])
    shown = " ".join(r.output.split())
    assert r.exit_code == 0 and f"{len(lib.patch_owner)} patches vote, {len(lib.cell_owner)} cells vote" in shown, \
        r.output
    r = runner.invoke(app, ["library", "name", str(tmp_path / "lib"), "--image", str(root / "test/hole/000.png"),
                            "--mask", str(root / "ground_truth/hole/000.png")])
    assert r.exit_code == 0 and "named " in r.output, r.output
    r = runner.invoke(app, ["eval", str(root), "--naming", "--shots-per-type", "1", "--json", str(tmp_path / "n.json")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "n.json").read_text())
    assert "type_accuracy" in rec and len(rec["confusion"]) == 2
