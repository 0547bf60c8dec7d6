"""Image/mask reading, the MVTec-layout dataset, ImageFolder and the textile benchmark."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, build_mvtec
from PIL import Image, ImageOps

from vlm_ad.data import (
    ImageFolder,
    MVTecDataset,
    TextileDataset,
    load_image,
    load_mask,
    save_png,
)
from vlm_ad.errors import (
    ConfigError,
    EmptyDatasetError,
    ImageReadError,
    MaskError,
    MissingDependencyError,
)


def _noise(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------ load_image
def test_load_image_rgb_roundtrip(tmp_path, write_image):
    a = _noise(20, 30)
    out = load_image(write_image(tmp_path / "a.png", a))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, a)


def test_load_image_grayscale_becomes_three_equal_channels(tmp_path, write_image):
    g = _noise(16, 24)[..., 0]
    out = load_image(write_image(tmp_path / "g.png", g))
    assert out.shape == (16, 24, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_load_image_rgba_composited_on_black(tmp_path, write_image):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:4, :, 3] = 255  # opaque top half
    rgba[4:, :, 3] = 0  # transparent bottom half
    out = load_image(write_image(tmp_path / "a.png", rgba))
    assert out.shape == (8, 8, 3)
    assert (out[:4] == 200).all() and (out[4:] == 0).all()


def test_load_image_la_and_one_bit(tmp_path, write_image):
    la = np.stack([np.full((6, 6), 100, np.uint8), np.full((6, 6), 255, np.uint8)], axis=2)
    assert (load_image(write_image(tmp_path / "la.png", la)) == 100).all()
    bits = np.zeros((6, 6), np.uint8)
    bits[:3] = 255
    out = load_image(write_image(tmp_path / "b.png", bits, mode="1"))
    assert (out[:3] == 255).all() and (out[3:] == 0).all()


def test_load_image_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (5, 4))
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 5, 2))
    im.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.shape == (4, 5, 3)
    assert (out[:2] == [255, 0, 0]).all() and (out[2:] == 0).all()
    im.save(tmp_path / "pt.png", transparency=1)  # index 1 (red) transparent -> black
    assert (load_image(tmp_path / "pt.png") == 0).all()


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_load_image_16_bit_scaled_from_full_range(tmp_path, ext):
    a = np.array([[0, 257, 257 * 128], [65535, 257 * 200, 1000]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / f"d{ext}")
    out = load_image(tmp_path / f"d{ext}")
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 128], [255, 200, 4]])


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_load_image_reads_a_12_bit_frame_in_16_bits_by_its_bit_depth(tmp_path, ext, monkeypatch):
    # a Mono12 camera frame stored unshifted: 0-4095; read as 16-bit it would be 0-16, 17 grey levels
    a = np.array([[0, 4095, 2048], [1000, 16, 4094]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / f"d{ext}")
    out = load_image(tmp_path / f"d{ext}")[..., 0]
    np.testing.assert_array_equal(out, np.rint(a.astype(float) * 255 / 4095))
    assert out.max() == 255 and len(np.unique(out)) == 5  # 4094 and 4095 both 255
    Image.fromarray(np.array([[0, 200], [255, 17]], dtype=np.uint16)).save(tmp_path / f"e{ext}")  # 8 bits in 16
    np.testing.assert_array_equal(load_image(tmp_path / f"e{ext}")[..., 0], [[0, 200], [255, 17]])
    monkeypatch.setenv("VLM_AD_BIT_DEPTH", "16")  # the override: every file read from the full 16-bit range
    np.testing.assert_array_equal(load_image(tmp_path / f"d{ext}")[..., 0], np.rint(a.astype(float) / 257))
    monkeypatch.setenv("VLM_AD_BIT_DEPTH", "10")  # values above the stated depth saturate
    np.testing.assert_array_equal(load_image(tmp_path / f"d{ext}")[..., 0],
                                  np.rint(np.minimum(a, 1023).astype(float) * 255 / 1023))
    monkeypatch.setenv("VLM_AD_BIT_DEPTH", "twelve")
    with pytest.raises(ConfigError, match="VLM_AD_BIT_DEPTH must be a whole number of bits"):
        load_image(tmp_path / f"d{ext}")


def _png16_rgb(path, a, orientation=None):
    """A 16-bit RGB PNG written by hand (Pillow writes none): filter 0 rows of big-endian samples; an eXIf chunk
    with the orientation tag when given."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = a.shape
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    exif = b""
    if orientation is not None:
        tags = Image.Exif()
        tags[0x0112] = orientation
        exif = chunk(b"eXIf", tags.tobytes()[6:])  # the TIFF block, without the JPEG "Exif\0\0" prefix
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + exif + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_load_image_16_bit_colour_tiff_and_png_at_full_depth(tmp_path, monkeypatch):
    import cv2
    import tifffile

    a = np.random.default_rng(0).integers(0, 4096, (6, 7, 3)).astype(np.uint16)
    a[0, 0] = 4095
    want = np.rint(a.astype(float) * 255 / 4095)
    tifffile.imwrite(tmp_path / "c.tif", a, photometric="rgb")
    np.testing.assert_array_equal(load_image(tmp_path / "c.tif"), want)
    rgba = np.concatenate([a, np.full((6, 7, 1), 4095, np.uint16)], axis=2)
    rgba[1, 1, 3] = 0  # transparent: black, as for 8-bit RGBA
    tifffile.imwrite(tmp_path / "ca.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    out = load_image(tmp_path / "ca.tif")
    assert (out[1, 1] == 0).all() and (out[2, 2] == want[2, 2]).all()
    # a 12-bit frame in a 16-bit colour PNG: every bit read (Pillow alone gives 0-15 of it, a black image)
    np.testing.assert_array_equal(load_image(_png16_rgb(tmp_path / "c.png", a)), want)
    cv2.imwrite(str(tmp_path / "ca.png"), rgba[..., [2, 1, 0, 3]])  # 16-bit RGBA PNG (OpenCV writes BGRA)
    out = load_image(tmp_path / "ca.png")
    assert (out[1, 1] == 0).all() and (out[2, 2] == want[2, 2]).all()
    full = a * 16  # the same frame shifted into 16 bits: read from the 16-bit range, within one grey level
    np.testing.assert_allclose(load_image(_png16_rgb(tmp_path / "f.png", full)), want, atol=1)
    monkeypatch.setenv("VLM_AD_BIT_DEPTH", "16")  # asked for: the 12-bit values read from the 16-bit range
    np.testing.assert_array_equal(load_image(tmp_path / "c.png"), np.rint(a.astype(float) / 257))


def test_load_image_16_bit_colour_png_without_opencv_falls_back_to_the_high_bytes(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cv2(name, *args, **kwargs):
        if name == "cv2":
            raise ImportError("no cv2 here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    a = np.random.default_rng(1).integers(0, 4096, (5, 4, 3)).astype(np.uint16)
    with pytest.raises(ImageReadError, match="16-bit colour PNG whose values fit in 12 bits"):
        load_image(_png16_rgb(tmp_path / "c.png", a))
    full = a * 16
    np.testing.assert_array_equal(load_image(_png16_rgb(tmp_path / "f.png", full)), full >> 8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_arrays_matches_pillow(orientation):
    from vlm_ad.data.images import oriented

    a = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3)).astype(np.uint8)
    buf = io.BytesIO()
    exif = Image.Image.getexif(Image.new("RGB", (1, 1)))
    exif[0x0112] = orientation
    Image.fromarray(a).save(buf, "PNG", exif=exif.tobytes())
    with Image.open(buf) as im:
        im.load()
        np.testing.assert_array_equal(oriented(np.asarray(im), orientation), np.asarray(ImageOps.exif_transpose(im)))


def test_load_image_16_bit_colour_tiff_and_png_apply_their_orientation(tmp_path):
    import tifffile

    a = np.random.default_rng(2).integers(0, 65536, (4, 6, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "r.tif", a, photometric="rgb", extratags=[(274, "H", 1, 6, True)])  # rotate 90 cw
    out = load_image(tmp_path / "r.tif")
    assert out.shape == (6, 4, 3)
    np.testing.assert_array_equal(out, np.rot90(np.rint(a.astype(float) / 257), -1))
    out = load_image(_png16_rgb(tmp_path / "r.png", a, orientation=8))  # rotate 90 ccw
    assert out.shape == (6, 4, 3)
    np.testing.assert_array_equal(out, np.rot90(np.rint(a.astype(float) / 257), 1))


def test_load_image_float_tiff_and_bmp_and_jpeg(tmp_path, write_image):
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif")[..., 0], [[0, 128], [255, 64]])
    a = _noise(10, 12)
    np.testing.assert_array_equal(load_image(write_image(tmp_path / "a.bmp", a)), a)
    assert load_image(write_image(tmp_path / "a.jpg", a)).shape == (10, 12, 3)


def test_load_image_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="not a file"):
        load_image(tmp_path)


def test_load_image_corrupt_file(tmp_path):
    path = tmp_path / "junk.png"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageReadError, match="junk.png") as err:
        load_image(path)
    assert "not a recognised image format" in str(err.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_load_image_truncated(tmp_path, fmt, keep):
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageReadError, match=f"cut.{fmt.lower()}") as err:
        load_image(path)
    assert "truncated" in str(err.value).lower()


# ------------------------------------------------------------------------------------------ masks, save_png
def test_load_mask_values_and_colour(tmp_path, write_image):
    m = np.zeros((5, 7), np.uint8)
    m[1, 2] = 1  # any value > 0 is defect
    m[3, 4] = 255
    out = load_mask(write_image(tmp_path / "m.png", m), (5, 7))
    assert out.dtype == bool and out.sum() == 2 and out[1, 2] and out[3, 4]
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[2, 2, 0] = 255  # a red mask pixel
    assert load_mask(write_image(tmp_path / "c.png", rgb)).sum() == 1


def test_load_mask_size_mismatch_names_file_and_sizes(tmp_path, write_image):
    path = write_image(tmp_path / "000_mask.png", np.zeros((40, 56), np.uint8))
    with pytest.raises(MaskError) as err:
        load_mask(path, (48, 48))
    msg = str(err.value)
    assert "000_mask.png" in msg and "56x40" in msg and "48x48" in msg


def test_load_mask_missing_and_corrupt(tmp_path):
    with pytest.raises(MaskError, match="gone_mask.png"):
        load_mask(tmp_path / "gone_mask.png", (4, 4))
    bad = tmp_path / "bad_mask.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(MaskError, match="bad_mask.png"):
        load_mask(bad)


def test_save_png_roundtrip_atomic(tmp_path):
    a = _noise(9, 11)
    save_png(tmp_path / "sub" / "a.png", a)
    np.testing.assert_array_equal(load_image(tmp_path / "sub" / "a.png"), a)
    m = np.zeros((4, 4), bool)
    m[1:3, 1:3] = True
    save_png(tmp_path / "m.png", m)
    assert np.asarray(Image.open(tmp_path / "m.png")).max() == 255
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png"), m)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png", "m.png"]  # no temp files
    with pytest.raises(ConfigError):
        save_png(tmp_path / "f.png", a.astype(np.float32))


# ------------------------------------------------------------------------------------------ MVTecDataset
def test_train_split_lists_sorted_and_loads_lazily(mvtec_root):
    ds = MVTecDataset(mvtec_root, "train")
    assert len(ds) == 4
    assert ds.image_ids == ["train/good/000.png", "train/good/001.png", "train/good/002.png", "train/good/003.jpg"]
    assert ds.labels == [0, 0, 0, 0] and ds.defect_types == ["good"]
    gray = ds[1]
    assert gray.image.shape == (48, 48, 3) and (gray.image[..., 0] == gray.image[..., 2]).all()
    other = ds[2]
    assert other.image.shape == (40, 56, 3)  # sizes may differ within a folder
    assert other.mask is not None and other.mask.shape == (40, 56) and not other.mask.any()
    assert other.path == mvtec_root / "train/good/002.png" and other.label == 0 and other.defect_type == "good"
    assert ds[-1].image_id == "train/good/003.jpg"
    with pytest.raises(IndexError):
        ds[4]
    assert [s.image_id for s in ds] == ds.image_ids


def test_test_split_labels_and_masks(mvtec_root):
    ds = MVTecDataset(mvtec_root, "test")
    assert ds.defect_types == ["good", "hole", "scratch"]
    assert ds.image_ids == [
        "test/good/000.png",
        "test/good/001.png",
        "test/hole/000.png",
        "test/scratch/000.png",
        "test/scratch/001.png",
    ]
    assert ds.labels == [0, 0, 1, 1, 1]
    assert ds.has_masks
    hole = ds[2]
    assert hole.mask is not None and hole.mask.dtype == bool and hole.mask.sum() == 250  # fallback name 000.png
    rgba = ds[4]
    assert rgba.image.shape == (32, 40, 3) and rgba.mask.shape == (32, 40)
    item = ds.items[3]
    assert item.mask_path == mvtec_root / "ground_truth/scratch/000_mask.png" and item.label == 1


def test_defect_without_mask_gets_none(tmp_path):
    root = build_mvtec(tmp_path / "toy", unmasked_defect=True)
    ds = MVTecDataset(root, "test")
    assert not ds.has_masks
    stain = ds[ds.image_ids.index("test/stain/000.png")]
    assert stain.label == 1 and stain.mask is None
    with pytest.raises(MaskError, match="test/stain/000.png"):
        MVTecDataset(root, "test", require_masks=True)


def test_validation_split_and_category(tmp_path):
    root = build_mvtec(tmp_path / "cat")
    with pytest.raises(EmptyDatasetError, match="validation"):
        MVTecDataset(root, "validation")
    shutil.copytree(root / "train/good", root / "validation/good")
    assert len(MVTecDataset(tmp_path, "validation", category="cat")) == 4
    with pytest.raises(ConfigError):
        MVTecDataset(root, "val")


def test_missing_root_and_bad_layout(tmp_path):
    with pytest.raises(EmptyDatasetError, match="nowhere") as err:
        MVTecDataset(tmp_path / "nowhere")
    assert "train/good" in str(err.value)
    (tmp_path / "flat").mkdir()
    with pytest.raises(EmptyDatasetError, match="flat"):
        MVTecDataset(tmp_path / "flat")


def test_empty_folders(tmp_path):
    root = build_mvtec(tmp_path / "toy")
    (root / "test/dent").mkdir()
    (root / "test/dent/notes.txt").write_text("not an image")
    with pytest.raises(EmptyDatasetError, match="dent"):
        MVTecDataset(root, "test")
    for p in (root / "train/good").iterdir():
        p.unlink()
    with pytest.raises(EmptyDatasetError, match="train/good"):
        MVTecDataset(root, "train")
    shutil.rmtree(root / "test")
    (root / "test").mkdir()
    with pytest.raises(EmptyDatasetError, match="test"):
        MVTecDataset(root, "test")


def test_mask_size_mismatch_raises_and_skip_records(tmp_path, write_image):
    root = build_mvtec(tmp_path / "toy")
    write_image(root / "ground_truth/scratch/000_mask.png", np.zeros((30, 30), np.uint8))
    (root / "test/good/001.png").write_bytes(b"garbage")
    ds = MVTecDataset(root, "test")
    with pytest.raises(MaskError, match="000_mask.png"):
        ds[3]
    with pytest.raises(ImageReadError, match="001.png"):
        list(ds.iter_samples())
    got = [s.image_id for s in ds.iter_samples(on_error="skip")]
    assert got == ["test/good/000.png", "test/hole/000.png", "test/scratch/001.png"]
    assert [p.name for p, _ in ds.skipped] == ["001.png", "000.png"]
    assert "000_mask.png" in ds.skipped[1][1] and "30x30" in ds.skipped[1][1]
    with pytest.raises(ConfigError):
        ds.iter_samples(on_error="ignore")


def test_truncated_image_in_dataset(tmp_path):
    root = build_mvtec(tmp_path / "toy")
    jpg = root / "train/good/003.jpg"
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    ds = MVTecDataset(root, "train")
    with pytest.raises(ImageReadError, match="003.jpg"):
        ds[3]
    assert len(list(ds.iter_samples(on_error="skip"))) == 3 and ds.skipped[0][0] == jpg


def test_sample_shots_deterministic_nested_and_bounded(tmp_path, write_image):
    root = build_mvtec(tmp_path / "toy")
    for i in range(4, 20):
        write_image(root / f"train/good/{i:03d}.png", _noise(8, 8, i))
    ds = MVTecDataset(root, "train")
    a = ds.sample_shots(5, seed=3)
    assert a == ds.sample_shots(5, seed=3) and a == sorted(a) and len(set(a)) == 5
    assert set(ds.sample_shots(2, seed=3)) <= set(a)
    assert len({tuple(ds.sample_shots(5, seed=s)) for s in range(6)}) > 1
    with pytest.raises(ConfigError, match="only 20"):
        ds.sample_shots(21, seed=0)
    with pytest.raises(ConfigError):
        ds.sample_shots(0)
    test = MVTecDataset(root, "test")
    assert all(test.labels[i] == 0 for i in test.sample_shots(2, seed=0))


def test_subset(mvtec_root):
    ds = MVTecDataset(mvtec_root, "test")
    sub = ds.subset([4, 0])
    assert isinstance(sub, MVTecDataset) and len(sub) == 2 and len(ds) == 5
    assert sub.image_ids == ["test/scratch/001.png", "test/good/000.png"]
    assert sub[0].mask is not None
    with pytest.raises(IndexError):
        ds.subset([5])


# ------------------------------------------------------------------------------------------ ImageFolder
def test_image_folder(tmp_path, write_image):
    write_image(tmp_path / "b.png", _noise(8, 8))
    write_image(tmp_path / "a.JPG", _noise(8, 10))
    write_image(tmp_path / ".hidden.png", _noise(8, 8))
    (tmp_path / "readme.txt").write_text("x")
    write_image(tmp_path / "sub" / "c.png", _noise(8, 8))
    ds = ImageFolder(tmp_path)
    assert ds.image_ids == ["a.JPG", "b.png"]
    s = ds[0]
    assert s.label is None and s.mask is None and s.defect_type is None and s.image.shape == (8, 10, 3)
    assert ImageFolder(tmp_path, recursive=True).image_ids == ["a.JPG", "b.png", "sub/c.png"]
    single = ImageFolder(tmp_path / "b.png")
    assert len(single) == 1 and single.image_ids == ["b.png"]
    normal = ImageFolder(tmp_path, label=0)
    assert len(normal.sample_shots(2, seed=0)) == 2 and not normal[0].mask.any()
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError, match="empty"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(EmptyDatasetError, match="missing"):
        ImageFolder(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ textile
def _fake_textile(root: Path, write_image, n=(12, 4, 4)) -> Path:
    for name, count in zip(("nominal", "local", "global"), n):
        for i in range(1, count + 1):
            write_image(root / name / f"textile_{i:04d}.jpg", _noise(8, 8, i))
    return root


def test_textile_split_logic_on_a_fake_tree(tmp_path, write_image):
    root = _fake_textile(tmp_path / "sim", write_image)
    train = TextileDataset("train", n_train=5, seed=1, root=root)
    test = TextileDataset("test", n_train=5, seed=1, root=root)
    assert len(train) == 5 and len(test) == 7 + 4 + 4
    assert not set(train.image_ids) & set(test.image_ids)
    assert "local/textile_0001.jpg" in test.image_ids and "nominal/textile_0001.jpg" in train.image_ids + test.image_ids
    assert test.defect_types == ["global", "good", "local"] and not test.has_masks
    assert train.image_ids == TextileDataset("train", n_train=5, seed=1, root=root).image_ids
    assert train.image_ids != TextileDataset("train", n_train=5, seed=2, root=root).image_ids
    s = test[test.image_ids.index("global/textile_0002.jpg")]
    assert s.label == 1 and s.defect_type == "global" and s.mask is None
    assert train[0].mask is None
    small = TextileDataset("test", n_train=5, seed=1, root=root, limit_test=7)
    assert [t for t in (it.defect_type for it in small.items)].count("good") == 3
    assert len(small) == 7 and set(small.image_ids) <= set(test.image_ids)
    with pytest.raises(ConfigError):
        TextileDataset("train", n_train=12, root=root)
    with pytest.raises(ConfigError):
        TextileDataset("validation", root=root)


def test_textile_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "conformal_clip_data", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match="conformal-clip-data"):
        TextileDataset("train")


def test_textile_benchmark_counts():
    pytest.importorskip("conformal_clip_data")
    train = TextileDataset("train")
    test = TextileDataset("test")
    assert len(train) == 200 and len(test) == 800 + 500 + 500
    assert not set(train.image_ids) & set(test.image_ids)
    assert len(set(test.image_ids)) == len(test)
    assert "nominal/textile_0008.jpg" in train.image_ids + test.image_ids
    assert {"local/textile_0008.jpg", "global/textile_0008.jpg"} <= set(test.image_ids)
    assert sum(test.labels) == 1000
    s = test[0]
    assert s.image.shape == (250, 250, 3) and s.mask is None and s.label == 0
    demo = TextileDataset("test", limit_test=18)
    assert [it.defect_type for it in demo.items].count("local") == 6 and len(demo) == 18
    assert all(train.labels[i] == 0 for i in train.sample_shots(16, seed=0))


# ------------------------------------------------------------------------------------------ real data
MAGNETIC_TILE = SHARED_DATA / "magnetic_tile"


@pytest.mark.realdata
@pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason=f"real data not found at {MAGNETIC_TILE}")
def test_magnetic_tile_real_data():
    train = MVTecDataset(MAGNETIC_TILE, "train")
    test = MVTecDataset(MAGNETIC_TILE, "test")
    assert len(train) > 0 and set(train.labels) == {0}
    assert test.has_masks and "good" in test.defect_types and len(test.defect_types) > 2
    assert not set(train.image_ids) & set(test.image_ids)
    first = {}
    for i, it in enumerate(test.items):
        first.setdefault(it.defect_type, i)
    for dtype, i in sorted(first.items()):
        s = test[i]
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        assert s.mask is not None and s.mask.shape == s.image.shape[:2]
        assert s.label == (0 if dtype == "good" else 1)


def test_pixel_cap_refuses_a_decompression_bomb_before_decoding(tmp_path, monkeypatch):
    import resource

    from PIL import Image

    from vlm_ad.errors import ImageTooLargeError

    path = tmp_path / "flat.png"
    Image.new("L", (12000, 9000)).save(path)  # ~100 KB on disk, 108 MP
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageTooLargeError, match=r"12000 x 9000 = 108.0 MP, above the 40 MP limit.*VLM_AD_MAX_PIXELS"):
        load_image(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 50, f"the refusal must not decode the pixels (peak RSS grew {grown_mb:.0f} MB)"
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    monkeypatch.setenv("VLM_AD_MAX_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match="40 x 30"):
        load_image(small)
    monkeypatch.setenv("VLM_AD_MAX_PIXELS", "0")  # no cap
    assert load_image(small).shape == (30, 40, 3)
    monkeypatch.setenv("VLM_AD_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="VLM_AD_MAX_PIXELS must be a whole number"):
        load_image(small)
