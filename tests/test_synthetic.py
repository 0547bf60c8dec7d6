"""The synthetic defect generator: exact masks, references that agree with them, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlm_ad.data import (
    DEFECT_TYPES,
    MVTecDataset,
    describe_defect,
    generate_dataset,
    load_mask,
    load_source,
    make_defect,
    random_crop,
    read_references,
)
from vlm_ad.errors import ConfigError, DataError
from vlm_ad.vocabulary import LOCATION_WORDS, location_word, size_word

REF_KEYS = {"image_id", "defect_type", "location", "bbox", "area_fraction", "size_words", "appearance", "text"}


def _expected_location(mask: np.ndarray) -> str:
    """Independent 3x3 cell of the mask centroid: thirds of the image in continuous pixel coordinates."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    col = 0 if cx < w / 3 else (1 if cx < 2 * w / 3 else 2)
    row = 0 if cy < h / 3 else (1 if cy < 2 * h / 3 else 2)
    return LOCATION_WORDS[row][col]


def _check_reference(ref: dict, mask: np.ndarray, defect_type: str) -> None:
    assert set(ref) >= REF_KEYS
    ys, xs = np.nonzero(mask)
    assert ref["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert ref["area_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
    assert ref["location"] == _expected_location(mask)
    expected_size = "small" if mask.mean() < 0.01 else ("medium" if mask.mean() < 0.05 else "large")
    assert ref["size_words"] == expected_size
    assert ref["defect_type"] == defect_type
    name = defect_type.replace("_", " ")
    for word in (name, ref["location"], ref["size_words"], ref["appearance"]):
        assert word in ref["text"]
    json.dumps(ref)  # serialisable


@pytest.fixture(scope="module")
def textures():
    return {name: load_source(name) for name in ("brick", "gravel")}


@pytest.mark.parametrize("defect_type", DEFECT_TYPES)
@pytest.mark.parametrize("source", ["brick", "gravel"])
def test_make_defect_mask_is_exactly_the_changed_pixels(textures, defect_type, source):
    for k in range(3):
        rng = np.random.default_rng([7, k])
        normal = random_crop(textures[source], 64, rng)
        before = normal.copy()
        image, mask, ref = make_defect(
            normal, defect_type, rng, image_id=f"x/{k}.png", size=("small", "medium", "large")[k]
        )
        np.testing.assert_array_equal(normal, before)  # input untouched
        assert image.shape == normal.shape and image.dtype == np.uint8
        assert mask.dtype == bool and mask.shape == (64, 64) and mask.sum() >= 12
        np.testing.assert_array_equal((image != normal).any(axis=2), mask)
        np.testing.assert_array_equal(image[~mask], normal[~mask])
        _check_reference(ref, mask, defect_type)
        assert ref["image_id"] == f"x/{k}.png"


@pytest.mark.parametrize("value", [0, 255])
def test_make_defect_on_flat_images_still_changes_every_mask_pixel(value):
    flat = np.full((48, 48), value, np.uint8)  # grayscale input, nothing to darken/brighten in places
    for t in DEFECT_TYPES:
        image, mask, ref = make_defect(flat, t, 0)
        assert image.shape == (48, 48, 3)
        np.testing.assert_array_equal((image != flat[..., None]).any(axis=2), mask)
        assert mask.any()


def test_make_defect_deterministic_and_random_type(textures):
    normal = random_crop(textures["brick"], 64, 1)
    a = make_defect(normal, None, np.random.default_rng(5))
    b = make_defect(normal, None, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2] and a[2]["defect_type"] in DEFECT_TYPES


def test_make_defect_errors():
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match="dent"):
        make_defect(img, "dent", 0)
    with pytest.raises(ConfigError):
        make_defect(img.astype(np.float32), "hole", 0)
    with pytest.raises(ConfigError):
        make_defect(np.zeros((8, 8, 3), np.uint8), "hole", 0)
    with pytest.raises(ConfigError):
        make_defect(img, "hole", 0, size="huge")


def test_words():
    assert location_word(0, 0, 90, 90) == "upper left"
    assert location_word(44, 44, 90, 90) == "centre"
    assert location_word(89, 89, 90, 90) == "lower right"
    assert location_word(45, 5, 90, 90) == "top centre"
    assert location_word(5, 30, 90, 60) == "centre left"
    assert (size_word(0.0099), size_word(0.01), size_word(0.0499), size_word(0.05)) == (
        "small",
        "medium",
        "medium",
        "large",
    )


def test_describe_defect_any_mask():
    mask = np.zeros((30, 60), bool)
    mask[24:27, 5:55] = True
    ref = describe_defect(mask, None, "scratch", image_id="a.png")
    assert ref["bbox"] == [5, 24, 55, 27] and ref["location"] == "bottom centre"
    assert "thin line running horizontally" in ref["appearance"]
    with pytest.raises(DataError):
        describe_defect(np.zeros((4, 4), bool))


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_dataset_layout_references_and_determinism(tmp_path):
    kw = dict(sources=("brick", "gravel"), n_train=2, n_test_good=1, n_test_per_type=1, image_size=64, seed=3)
    cats = generate_dataset(tmp_path / "a", **kw)
    assert sorted(cats) == ["brick", "gravel"]
    generate_dataset(tmp_path / "b", **kw)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert a.keys() == b.keys() and a == b  # byte-identical
    assert not any(".tmp" in k for k in a)
    brick = cats["brick"]
    for t in DEFECT_TYPES:
        assert (brick / f"test/{t}/000.png").is_file() and (brick / f"ground_truth/{t}/000_mask.png").is_file()
    train, test = MVTecDataset(brick, "train"), MVTecDataset(brick, "test")
    assert len(train) == 2 and len(test) == 1 + len(DEFECT_TYPES) and test.has_masks
    refs = {r["image_id"]: r for r in read_references(brick)}
    assert set(refs) == set(test.image_ids)
    assert refs["test/good/000.png"]["defect_type"] == "good" and refs["test/good/000.png"]["bbox"] is None
    for sample in test:
        if sample.label == 1:
            _check_reference(refs[sample.image_id], sample.mask, sample.defect_type)
    # the mask file is exactly where the image differs from... at least non-empty and 0/255
    m = load_mask(brick / "ground_truth/crack/000_mask.png", (64, 64))
    assert m.any()
    other = generate_dataset(tmp_path / "c", **{**kw, "seed": 4})
    assert _tree(other["brick"].parent) != a


def test_generate_dataset_refuses_non_empty_and_overwrites(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    kw = dict(sources=("grass",), n_train=1, n_test_good=0, n_test_per_type=1, types=("hole",), image_size=32)
    with pytest.raises(ConfigError, match="not empty"):
        generate_dataset(out, **kw)
    generate_dataset(out, overwrite=True, **kw)
    (out / "grass/test/hole/999.png").write_bytes(b"stale")
    generate_dataset(out, overwrite=True, **kw)
    assert not (out / "grass/test/hole/999.png").exists() and (out / "keep.txt").read_text() == "mine"
    assert len(MVTecDataset(out / "grass", "test")) == 1


def test_generate_dataset_from_user_images(tmp_path, write_image):
    rng = np.random.default_rng(0)
    src = write_image(tmp_path / "my_part.png", rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    folder = tmp_path / "fabric"
    for i in range(2):
        write_image(folder / f"{i}.png", rng.integers(0, 256, (80, 80, 3), dtype=np.uint8))
    cats = generate_dataset(
        tmp_path / "out",
        sources=[src, folder],
        n_train=2,
        n_test_good=1,
        n_test_per_type=1,
        types=("stain", "contamination"),
        image_size=64,
    )
    assert sorted(cats) == ["fabric", "my_part"]
    s = MVTecDataset(cats["my_part"], "train")[0]
    assert s.image.shape == (64, 64, 3)  # tiled up from 40 x 50
    with pytest.raises(ConfigError, match="stone"):
        generate_dataset(tmp_path / "x", sources=["stone"])
    with pytest.raises(ConfigError, match="dent"):
        generate_dataset(tmp_path / "y", types=("dent",))
